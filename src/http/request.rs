//! A request's own caching directives (RFC 9111 5.2.1): what it accepts from the cache.
//! A request this cache may not answer from a stored response goes to the origin (the
//! response stored as usual, unless the request said `no-store`).

/// The request directives that matter here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `no-cache` (or `Pragma: no-cache` without Cache-Control, RFC 9111 5.4): a stored
    /// response is not used without validation.
    pub no_cache: bool,
    /// `no-store`: nothing of this exchange is stored (and so nothing stored is used).
    pub no_store: bool,
    /// `max-age=N`: no response older than N seconds.
    pub max_age: Option<u64>,
    /// `min-fresh=N`: only a response fresh for N more seconds.
    pub min_fresh: Option<u64>,
}

impl Request {
    /// Reads a request's `Cache-Control` and `Pragma` lines.
    pub fn parse<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Request {
        let mut r = Request::default();
        let (mut cache_control, mut pragma_no_cache) = (false, false);
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(b"cache-control") {
                cache_control = true;
                for item in value.split(|&b| b == b',') {
                    let item = item.trim_ascii();
                    let (n, v) = match item.iter().position(|&b| b == b'=') {
                        Some(i) => (&item[..i], Some(item[i + 1..].trim_ascii())),
                        None => (item, None),
                    };
                    let seconds = || {
                        let v = v?;
                        let v = v
                            .strip_prefix(b"\"")
                            .and_then(|v| v.strip_suffix(b"\""))
                            .unwrap_or(v);
                        (!v.is_empty() && v.iter().all(u8::is_ascii_digit)).then(|| {
                            v.iter().fold(0u64, |n, d| {
                                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                            })
                        })
                    };
                    if n.eq_ignore_ascii_case(b"no-cache") {
                        r.no_cache = true;
                    } else if n.eq_ignore_ascii_case(b"no-store") {
                        r.no_store = true;
                    } else if n.eq_ignore_ascii_case(b"max-age") {
                        // An invalid value is not trusted to allow anything: 0.
                        r.max_age.get_or_insert(seconds().unwrap_or(0));
                    } else if n.eq_ignore_ascii_case(b"min-fresh") {
                        if let Some(s) = seconds() {
                            r.min_fresh.get_or_insert(s);
                        }
                    }
                }
            } else if name.eq_ignore_ascii_case(b"pragma")
                && value
                    .split(|&b| b == b',')
                    .any(|m| m.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
            {
                pragma_no_cache = true;
            }
        }
        if !cache_control && pragma_no_cache {
            r.no_cache = true;
        }
        r
    }

    /// No stored response may be used, whatever its age.
    pub fn refuses_any(&self) -> bool {
        self.no_cache || self.no_store || self.max_age == Some(0)
    }

    /// A stored response of this age (seconds), fresh for `fresh_left` more seconds (negative:
    /// stale), may not be used.
    pub fn refuses(&self, age: Option<u64>, fresh_left: Option<i64>) -> bool {
        if self.refuses_any() {
            return true;
        }
        let too_old = matches!((self.max_age, age), (Some(m), Some(a)) if a > m);
        let not_fresh_enough = matches!((self.min_fresh, fresh_left),
            (Some(m), Some(left)) if left < i64::try_from(m).unwrap_or(i64::MAX));
        too_old || not_fresh_enough
    }

    pub fn is_plain(&self) -> bool {
        *self == Request::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &[(&str, &str)]) -> Request {
        Request::parse(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn directives() {
        assert!(req(&[]).is_plain());
        assert!(req(&[("Cache-Control", "no-cache")]).refuses_any());
        assert!(req(&[("Cache-Control", "No-Store")]).refuses_any());
        assert!(req(&[("Cache-Control", "max-age=0")]).refuses_any());
        assert!(req(&[("Pragma", "no-cache")]).refuses_any());
        assert!(!req(&[("Pragma", "no-cache"), ("Cache-Control", "max-age=60")]).refuses_any());
        let r = req(&[("Cache-Control", "max-age=10, min-fresh=5")]);
        assert!(!r.refuses(Some(10), Some(5)));
        assert!(r.refuses(Some(11), Some(100)), "too old");
        assert!(r.refuses(Some(1), Some(4)), "not fresh enough");
        assert!(!r.refuses(None, None), "nothing known: not refused");
        assert!(req(&[("Cache-Control", "max-age=abc")]).refuses_any());
        assert_eq!(req(&[("Cache-Control", "max-age=\"7\"")]).max_age, Some(7));
        assert!(req(&[("Cache-Control", "max-stale=100, only-if-cached")]).is_plain());
    }
}
