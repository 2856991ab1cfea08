//! Invalidation after unsafe requests (RFC 9111 4.4): a non-error answer to a method that
//! is not safe drops the stored response of its URL, and of the URLs in its `Location` and
//! `Content-Location` when they are on the same host.

/// Methods that do not invalidate: the safe ones (RFC 9110 9.2.1).
pub fn is_unsafe(method: &[u8]) -> bool {
    !matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// Whether an answer invalidates: 2xx and 3xx ("non-error").
pub fn invalidating_status(status: usize) -> bool {
    (200..400).contains(&status)
}

/// The URL a `Location`/`Content-Location` value names, as `origin` + path, when it is on
/// the request's origin (`origin` is "scheme://host"): a path, or an absolute URL of the same
/// origin. `None` for another host or a relative reference without a leading slash.
pub fn same_origin_url(origin: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    if value.starts_with(b"/") && !value.starts_with(b"//") {
        return Some([origin, value].concat());
    }
    let rest = value.get(origin.len()..)?;
    (value[..origin.len()].eq_ignore_ascii_case(origin) && rest.starts_with(b"/"))
        .then(|| [origin, rest].concat())
}

fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The invalidation location's arguments: `url`, `loc` and `cl`, escaped; a missing one
/// repeats `url` (so the location can always name three keys).
pub fn arguments(url: &[u8], loc: Option<&[u8]>, cl: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 9 * url.len());
    for (name, v) in [
        (&b"url="[..], url),
        (b"&loc=", loc.unwrap_or(url)),
        (b"&cl=", cl.unwrap_or(url)),
    ] {
        out.extend_from_slice(name);
        escaped(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_statuses() {
        for m in [&b"POST"[..], b"PUT", b"DELETE", b"PATCH", b"M-SEARCH"] {
            assert!(is_unsafe(m));
        }
        for m in [&b"GET"[..], b"HEAD", b"OPTIONS", b"TRACE"] {
            assert!(!is_unsafe(m));
        }
        assert!(invalidating_status(200) && invalidating_status(303));
        assert!(!invalidating_status(404) && !invalidating_status(500));
    }

    #[test]
    fn same_origin() {
        let o = b"http://example.com";
        assert_eq!(
            same_origin_url(o, b"/a?b").as_deref(),
            Some(&b"http://example.com/a?b"[..])
        );
        assert_eq!(
            same_origin_url(o, b"HTTP://example.com/x").as_deref(),
            Some(&b"http://example.com/x"[..])
        );
        assert_eq!(same_origin_url(o, b"http://other.com/x"), None);
        assert_eq!(same_origin_url(o, b"http://example.com.evil/x"), None);
        assert_eq!(same_origin_url(o, b"//other.com/x"), None);
        assert_eq!(same_origin_url(o, b"x"), None);
    }

    #[test]
    fn args() {
        assert_eq!(
            arguments(b"http://h/a b", Some(b"http://h/c"), None),
            b"url=http%3A%2F%2Fh%2Fa%20b&loc=http%3A%2F%2Fh%2Fc&cl=http%3A%2F%2Fh%2Fa%20b".to_vec()
        );
    }
}
