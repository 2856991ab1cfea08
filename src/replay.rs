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

/// What a stale hit that starts a refresh does to keep the stale copy until the refresh ends.
#[derive(Debug, PartialEq, Eq)]
pub enum KeepCopy {
    Nothing,
    /// `$cache_expire` with this many seconds: the copy outlives the refresh lock, and no key
    /// is ever left without an expiry, whatever the refresh does.
    Expire(u64),
}

/// The step for a stale key with `ttl` seconds left (-1: no expiry), when the policy asks to
/// keep the copy (`persist`: `$cache_persist` set and `ttl > 0`), `$cache_expire` is set
/// (`expire`), and refresh locks last `lock_ms`. With `$cache_expire`, a key without expiry
/// (pinned by an earlier PERSIST, or written so) gets one back on its next stale hit.
///
/// Without `$cache_expire` nothing is sent, `$cache_persist` or not: lua-resty-cache's
/// PERSIST removed the key's expiry, and a refresh that failed, stored nothing or died left
/// the copy in Redis forever (a deleted page never went away). The copy keeps its own expiry
/// instead; the refresh lock then ends with the copy at the latest (`refresh_lock_ms`), so a
/// copy that expires during its refresh costs one fill (waiters collapse onto it), never a
/// pinned key. So a lua-resty-cache configuration works with its two lines changed, and
/// `$cache_expire` only adds the extension of a copy about to expire.
pub fn keep_copy(ttl: i64, persist: bool, expire: bool, lock_ms: u64) -> KeepCopy {
    let window = lock_ms.div_ceil(1000).max(1);
    match (expire, persist) {
        (true, _) if ttl == -1 => KeepCopy::Expire(window),
        (true, true) if ttl >= 0 && (ttl as u64) < window => KeepCopy::Expire(window),
        (true, _) | (false, _) => KeepCopy::Nothing,
    }
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

/// Whether the response head `head` (status line and header lines, possibly cut) has a
/// header named `name`; only complete lines before the blank line count.
pub fn head_has_header(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n')
        .skip(1)
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .any(|line| {
            line.len() > name.len()
                && line[name.len()] == b':'
                && same_header_name(&line[..name.len()], name)
        })
}

/// How well a `listen` address (a `struct sockaddr`'s bytes) serves a refresh sent to
/// `target`: `Some(true)` the same address, `Some(false)` through a wildcard listener of the
/// same port, `None` not at all.
pub fn listener_serves(target: &[u8], listen: &[u8]) -> Option<bool> {
    let family = |s: &[u8]| (s.len() >= 2).then(|| i32::from(u16::from_ne_bytes([s[0], s[1]])));
    let fam = family(target)?;
    if family(listen)? != fam {
        return None;
    }
    let (addr, len) = match fam {
        libc::AF_INET => (4, 4),
        libc::AF_INET6 => (8, 16),
        libc::AF_UNIX => {
            let path = |s: &[u8]| {
                let p = &s[2..];
                p[..p.iter().position(|&b| b == 0).unwrap_or(p.len())].to_vec()
            };
            return (path(target) == path(listen)).then_some(true);
        }
        _ => return None,
    };
    if target.len() < addr + len || listen.len() < addr + len || target[2..4] != listen[2..4] {
        return None;
    }
    let (t, l) = (&target[addr..addr + len], &listen[addr..addr + len]);
    if t == l {
        Some(true)
    } else if l.iter().all(|&b| b == 0) {
        Some(false)
    } else {
        None
    }
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

/// The bytes of `key` percent-encoded as [`key_argument`] writes them (without `key=`).
fn escaped_key(key: &[u8]) -> impl Iterator<Item = u8> + Clone + '_ {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    key.iter().flat_map(|&b| {
        let plain = b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
        let bytes = [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
        let (from, to) = if plain { (0, 1) } else { (0, 3) };
        let bytes = if plain { [b, 0, 0] } else { bytes };
        bytes.into_iter().skip(from).take(to)
    })
}

/// Whether `args` contains `key` percent-encoded (as `key_argument` encodes it), without
/// building the encoded key.
pub fn contains_escaped_key(args: &[u8], key: &[u8]) -> bool {
    let escaped = escaped_key(key);
    let len = escaped.clone().count();
    len > 0
        && args.len() >= len
        && (0..=args.len() - len).any(|at| escaped.clone().eq(args[at..at + len].iter().copied()))
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

    #[test]
    fn escaped_keys_are_found_in_arguments() {
        let key = b"Mozilla/5.0 |/api/x?a=1";
        let arg = key_argument(key);
        assert!(contains_escaped_key(&arg, key));
        let mut longer = b"a=1&".to_vec();
        longer.extend_from_slice(&arg);
        longer.extend_from_slice(b"&exptime=5");
        assert!(contains_escaped_key(&longer, key));
        assert!(!contains_escaped_key(b"key=Mozilla", key));
        assert!(!contains_escaped_key(b"", key));
        assert!(!contains_escaped_key(b"anything", b""));
        assert!(contains_escaped_key(b"plain", b"plain"));
    }

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
    fn keep_copy_never_leaves_a_key_without_expiry_when_expire_is_configured() {
        use KeepCopy::*;
        // (ttl, persist asked, $cache_expire set, lock 30 s) -> step
        // without $cache_expire never a PERSIST (it would pin the copy if the refresh failed)
        assert_eq!(keep_copy(50, true, false, 30_000), Nothing);
        assert_eq!(keep_copy(5, true, false, 30_000), Nothing);
        assert_eq!(keep_copy(50, false, false, 30_000), Nothing);
        assert_eq!(keep_copy(-1, false, false, 30_000), Nothing);
        // with $cache_expire: extend only a copy that could expire during the refresh
        assert_eq!(keep_copy(50, true, true, 30_000), Nothing);
        assert_eq!(keep_copy(30, true, true, 30_000), Nothing);
        assert_eq!(keep_copy(29, true, true, 30_000), Expire(30));
        assert_eq!(keep_copy(1, true, true, 1_500), Expire(2));
        assert_eq!(keep_copy(10, false, true, 30_000), Nothing);
        // a key without expiry gets one, PERSIST configured or not
        assert_eq!(keep_copy(-1, false, true, 30_000), Expire(30));
        assert_eq!(keep_copy(-1, true, true, 30_000), Expire(30));
    }

    #[test]
    fn confirmation_header_in_a_response_head() {
        let head = b"HTTP/1.1 200 OK\r\nServer: x\r\nx-stale-cache-refreshed: 1\r\n\r\nbody";
        assert!(head_has_header(head, b"X-Stale-Cache-Refreshed"));
        let foreign = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nX-Stale-Cache-Refreshed: 1\r\n";
        assert!(
            !head_has_header(foreign, b"X-Stale-Cache-Refreshed"),
            "in the body"
        );
        assert!(!head_has_header(
            b"X-Stale-Cache-Refreshed: 1\r\n",
            b"X-Stale-Cache-Refreshed"
        ));
        assert!(!head_has_header(
            b"HTTP/1.1 200 OK\r\nX-Stale-Cache-Refreshed-Not: 1\r\n\r\n",
            b"X-Stale-Cache-Refreshed"
        ));
    }

    fn inet(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut s = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        s.extend_from_slice(&port.to_be_bytes());
        s.extend_from_slice(&ip);
        s.extend_from_slice(&[0; 8]);
        s
    }

    fn unix(path: &str) -> Vec<u8> {
        let mut s = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        s.extend_from_slice(path.as_bytes());
        s.push(0);
        s
    }

    #[test]
    fn refresh_address_against_listeners() {
        let target = inet([127, 0, 0, 1], 8080);
        assert_eq!(
            listener_serves(&target, &inet([127, 0, 0, 1], 8080)),
            Some(true)
        );
        assert_eq!(
            listener_serves(&target, &inet([0, 0, 0, 0], 8080)),
            Some(false)
        );
        assert_eq!(listener_serves(&target, &inet([127, 0, 0, 1], 8081)), None);
        assert_eq!(listener_serves(&target, &inet([10, 0, 0, 1], 8080)), None);
        assert_eq!(listener_serves(&target, &unix("/run/a.sock")), None);
        let sock = unix("/run/a.sock");
        assert_eq!(listener_serves(&sock, &unix("/run/a.sock")), Some(true));
        assert_eq!(listener_serves(&sock, &unix("/run/b.sock")), None);
        assert_eq!(listener_serves(&[], &sock), None);
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
