//! Pure helpers of the refresh path: the replayed HTTP/1.1 request, the status line of its
//! answer, the escaped key argument of the lookup subrequests, and the secret check.

/// Headers that describe one hop, not the request: never replayed (the refresh has its own
/// connection, length and framing).
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"expect",
    b"host",
    b"x-stale-cache-restore",
];

/// Headers that carry a client's identity: a refresh replays them only when
/// `stale_cache_refresh_credentials on` says the cache key includes them, so a stale hit of a
/// logged-in user cannot have a personalized page stored for everyone.
const CREDENTIALS: &[&[u8]] = &[b"cookie", b"authorization", b"proxy-authorization"];

/// Whether two header names are the same to nginx's `$http_*` variables: case ignored and
/// `-` and `_` alike (a client may spell `X-Skip-Fetch` as `x_skip_fetch` where
/// `underscores_in_headers` or `ignore_invalid_headers off` lets it through).
pub fn same_header_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// The header asking a refresh-authenticated request to give a key its expiry back.
pub const RESTORE_HEADER: &[u8] = b"X-Stale-Cache-Restore";

/// What the refresh replays of the client's request.
pub struct Replay<'a> {
    pub method: &'a [u8],
    /// The request target as the client sent it, arguments included.
    pub target: &'a [u8],
    /// The host the client asked for (Host header, or HTTP/2's :authority).
    pub host: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub body: Option<&'a [u8]>,
    /// The skip header (`$cache_skip_fetch`), sent as `NAME: TRUE`.
    pub skip_header: &'a [u8],
    /// The header carrying the per-start secret and its value.
    pub secret_header: &'a [u8],
    pub secret: &'a [u8],
    /// Makes the request an expiry restore of this many seconds instead of a refresh.
    pub restore_ttl: Option<u64>,
    /// Replay Cookie and Authorization too (`stale_cache_refresh_credentials on`).
    pub credentials: bool,
}

impl Replay<'_> {
    /// The request bytes: the client's request with its hop-by-hop headers, skip header and
    /// secret header replaced, `Connection: close` so the answer ends when the request
    /// (store included) is finished.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.map_or(0, <[u8]>::len));
        out.extend_from_slice(self.method);
        out.push(b' ');
        out.extend_from_slice(self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host);
        out.extend_from_slice(b"\r\n");
        for (name, value) in self.headers {
            let skip = HOP_BY_HOP.iter().any(|h| same_header_name(name, h))
                || (!self.credentials && CREDENTIALS.iter().any(|h| same_header_name(name, h)))
                || same_header_name(name, self.skip_header)
                || same_header_name(name, self.secret_header)
                || has_line_break(name)
                || has_line_break(value);
            if !skip {
                push_header(&mut out, name, value);
            }
        }
        push_header(&mut out, self.skip_header, b"TRUE");
        push_header(&mut out, self.secret_header, self.secret);
        if let Some(ttl) = self.restore_ttl {
            push_header(&mut out, RESTORE_HEADER, ttl.to_string().as_bytes());
        }
        if let Some(body) = self.body {
            push_header(
                &mut out,
                b"Content-Length",
                body.len().to_string().as_bytes(),
            );
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        if let Some(body) = self.body {
            out.extend_from_slice(body);
        }
        out
    }
}

fn has_line_break(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b == b'\r' || b == b'\n')
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The status code of an `HTTP/1.x NNN ...` status line at the start of `head`.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    if rest.len() < 6 || !rest[0].is_ascii_digit() || rest[1] != b' ' {
        return None;
    }
    let code = &rest[2..5];
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest[5], b' ' | b'\r') {
        return None;
    }
    code.iter()
        .try_fold(0u16, |n, d| Some(n * 10 + u16::from(d - b'0')))
}

/// `key=<key>` with every byte but unreserved ones percent-encoded, so the lookup location's
/// `set_unescape_uri $key $arg_key` gives back the exact key bytes.
pub fn key_argument(key: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(4 + key.len() * 3);
    out.extend_from_slice(b"key=");
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

/// Compares a presented secret with the real one in time independent of where they differ.
pub fn secret_matches(presented: &[u8], secret: &[u8]) -> bool {
    if presented.len() != secret.len() || secret.is_empty() {
        return false;
    }
    presented
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay<'a>(headers: &'a [(&'a [u8], &'a [u8])], body: Option<&'a [u8]>) -> Replay<'a> {
        Replay {
            method: b"GET",
            target: b"/api/x?a=1&b=%20",
            host: b"example.test",
            headers,
            body,
            skip_header: b"X-Skip-Fetch",
            secret_header: b"X-Stale-Cache-Refresh",
            secret: b"s3cr3t",
            restore_ttl: None,
            credentials: false,
        }
    }

    #[test]
    fn header_names_match_with_dash_and_underscore_alike() {
        for spelling in [
            &b"X-Skip-Fetch"[..],
            b"x_skip_fetch",
            b"X_Skip-Fetch",
            b"X-SKIP-FETCH",
        ] {
            assert!(same_header_name(spelling, b"X-Skip-Fetch"), "{spelling:?}");
        }
        assert!(!same_header_name(b"X-Skip-Fetch2", b"X-Skip-Fetch"));
        assert!(!same_header_name(b"X.Skip.Fetch", b"X-Skip-Fetch"));
        assert!(!same_header_name(b"", b"X-Skip-Fetch"));
    }

    #[test]
    fn credentials_are_dropped_unless_asked_for() {
        let headers: &[(&[u8], &[u8])] = &[
            (b"Cookie", b"session=alice"),
            (b"authorization", b"Basic YWxpY2U6eA=="),
            (b"Proxy_Authorization", b"Basic eA=="),
            (b"X_Skip_Fetch", b"TRUE"),
            (b"x-stale-cache_refresh", b"guess"),
            (b"Accept", b"*/*"),
        ];
        let text = String::from_utf8(replay(headers, None).to_bytes()).unwrap();
        assert!(!text.contains("alice") && !text.contains("eA=="), "{text}");
        assert!(
            !text.contains("guess") && !text.contains("X_Skip_Fetch"),
            "{text}"
        );
        assert!(text.contains("Accept: */*\r\n"), "{text}");
        let mut r = replay(headers, None);
        r.credentials = true;
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains("Cookie: session=alice\r\n"), "{text}");
        assert!(
            text.contains("authorization: Basic YWxpY2U6eA==\r\n"),
            "{text}"
        );
    }

    #[test]
    fn replays_request_line_host_and_headers() {
        let headers: &[(&[u8], &[u8])] = &[
            (b"Host", b"example.test"),
            (b"User-Agent", b"curl/8"),
            (b"Connection", b"keep-alive"),
            (b"x-skip-fetch", b"spoofed"),
            (b"X-Stale-Cache-Refresh", b"guess"),
            (b"Accept", b"*/*"),
        ];
        let text = String::from_utf8(replay(headers, None).to_bytes()).unwrap();
        assert_eq!(
            text,
            "GET /api/x?a=1&b=%20 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8\r\n\
             Accept: */*\r\nX-Skip-Fetch: TRUE\r\nX-Stale-Cache-Refresh: s3cr3t\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn replays_body_with_its_length() {
        let headers: &[(&[u8], &[u8])] = &[(b"Content-Length", b"999")];
        let mut r = replay(headers, Some(b"a\x00b"));
        r.method = b"POST";
        let bytes = r.to_bytes();
        assert!(bytes.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\na\x00b"));
        assert!(!bytes.windows(3).any(|w| w == b"999"));
    }

    #[test]
    fn drops_headers_that_would_split_the_request() {
        let headers: &[(&[u8], &[u8])] = &[(b"X-Evil", b"a\r\nX-Injected: 1")];
        let bytes = replay(headers, None).to_bytes();
        assert!(!bytes.windows(10).any(|w| w == b"X-Injected"));
    }

    #[test]
    fn restore_request_carries_its_ttl_and_drops_client_copies() {
        let headers: &[(&[u8], &[u8])] = &[(b"X-Stale-Cache-Restore", b"999")];
        let mut r = replay(headers, None);
        r.restore_ttl = Some(42);
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains("X-Stale-Cache-Restore: 42\r\n"), "{text}");
        assert!(!text.contains("999"), "{text}");
    }

    #[test]
    fn status_line() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn key_argument_round_trips_every_byte() {
        let key: Vec<u8> = (0..=255u8).collect();
        let arg = key_argument(&key);
        assert!(arg.starts_with(b"key="));
        let mut decoded = Vec::new();
        let mut i = 4;
        while i < arg.len() {
            if arg[i] == b'%' {
                let hex = core::str::from_utf8(&arg[i + 1..i + 3]).unwrap();
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                assert!(arg[i].is_ascii_alphanumeric() || b"-_.~".contains(&arg[i]));
                decoded.push(arg[i]);
                i += 1;
            }
        }
        assert_eq!(decoded, key);
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_matches(b"abc", b"abc"));
        assert!(!secret_matches(b"abd", b"abc"));
        assert!(!secret_matches(b"ab", b"abc"));
        assert!(!secret_matches(b"", b""));
    }
}
