//! `Vary` (RFC 9111 4.1): a response that varies is stored as a variant of its URL, under a
//! secondary key made from the request header fields its `Vary` names.
//!
//! Normalised so that requests the origin cannot tell apart share a variant:
//! - the names: split on commas, trimmed, case-folded, duplicates dropped, sorted
//!   (`Vary: Accept-Language, accept-encoding` and `Vary: Accept-Encoding` +
//!   `Vary: Accept-Language` give `accept-encoding,accept-language`);
//! - a request's values: for each name, every line of that field in the order received, each
//!   split on commas with the whitespace around the members trimmed, the members joined by
//!   `,` (`gzip, br` and `gzip,br` are one variant; `br, gzip` another: order may matter);
//!   a field the request lacks differs from one present but empty;
//! - the variant: `:v:` and the MD5 of the names and values (a name, `=` or `!` for absent,
//!   the value, a newline each), appended to the entry's Redis key, so that a `{tag}` of the
//!   entry's key (Redis Cluster) is kept and every key of a URL lives in one slot.

use crate::keyderive::md5_hex;

/// `Vary: *` (or a member `*` among others): no request can be matched to the response. A
/// member that is no plain field name (letters, digits, `-`, `_`, `.`) counts as `*` too: it
/// could not be keyed on, and a variant that ignored it could be served to the wrong client.
pub fn has_star(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|m| {
        let m = m.trim_ascii();
        !m.is_empty() && !m.iter().all(|&b| is_name_char(b))
    })
}

/// The normalised names the `Vary` lines of a response give (`a,b`), empty when none.
pub fn names<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut all: Vec<String> = Vec::new();
    for line in lines {
        for m in line.split(|&b| b == b',') {
            let m = m.trim_ascii();
            // Only plain field names (see `has_star`): the record and the store location's
            // argument stay free of separators.
            if !m.is_empty() && m.iter().all(|&b| is_name_char(b)) {
                all.push(String::from_utf8_lossy(m).to_ascii_lowercase());
            }
        }
    }
    all.sort();
    all.dedup();
    all.join(",")
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// The variant suffix (`:v:<md5 hex>`) of a request with these header lines for the
/// normalised `names` (`a,b`); empty when `names` is.
pub fn variant<'a>(names: &str, request: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> String {
    if names.is_empty() {
        return String::new();
    }
    let request: Vec<(&[u8], &[u8])> = request.into_iter().collect();
    let mut canon: Vec<u8> = Vec::new();
    for name in names.split(',') {
        canon.extend_from_slice(name.as_bytes());
        let mut present = false;
        let mut members: Vec<&[u8]> = Vec::new();
        for &(n, v) in &request {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                present = true;
                members.extend(v.split(|&b| b == b',').map(<[u8]>::trim_ascii));
            }
        }
        if present {
            canon.push(b'=');
            canon.extend_from_slice(&members.join(&b","[..]));
        } else {
            canon.push(b'!');
        }
        canon.push(b'\n');
    }
    let hex = md5_hex(&canon);
    format!(":v:{}", String::from_utf8_lossy(&hex))
}

/// A request's variant, once its URL is known to vary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    /// The normalised names the URL varies on.
    pub names: String,
    /// `:v:<md5>`, appended to the URL's Redis key.
    pub suffix: String,
}

impl Variant {
    /// The key of the variant's freshness memo: the URL's key and the suffix.
    pub fn memo_key(&self, key: &[u8]) -> Vec<u8> {
        [key, b"\n", self.suffix.as_bytes()].concat()
    }
}

/// The vary record kept in `<key>:w` of a URL whose responses vary: `v=<names>`.
pub fn record_names(record: &[u8]) -> Option<&[u8]> {
    record.strip_prefix(b"v=").filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(h: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone {
        h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            names([&b"Accept-Language, accept-encoding"[..]]),
            "accept-encoding,accept-language"
        );
        assert_eq!(
            names([
                &b"Accept-Encoding"[..],
                b" ACCEPT-language ,accept-encoding"
            ]),
            "accept-encoding,accept-language"
        );
        assert_eq!(names([&b""[..], b" , "]), "");
        assert!(has_star(b"*") && has_star(b"Accept, * ") && !has_star(b"Accept"));
        assert!(has_star(b"a&b") && !has_star(b"X-Foo_1.2, ,"));
    }

    #[test]
    fn variants() {
        let n = "accept-encoding,accept-language";
        let a = variant(
            n,
            req(&[("Accept-Encoding", "gzip, br"), ("Accept-Language", "en")]),
        );
        assert!(a.starts_with(":v:") && a.len() == 35);
        assert_eq!(
            a,
            variant(
                n,
                req(&[("accept-language", " en "), ("ACCEPT-ENCODING", "gzip,br")])
            )
        );
        assert_eq!(
            a,
            variant(
                n,
                req(&[
                    ("Accept-Encoding", "gzip"),
                    ("Accept-Encoding", "br"),
                    ("Accept-Language", "en")
                ])
            )
        );
        assert_ne!(
            a,
            variant(
                n,
                req(&[("Accept-Encoding", "br, gzip"), ("Accept-Language", "en")])
            )
        );
        // absent differs from empty, and the names count
        let absent = variant("foo", req(&[]));
        assert_ne!(absent, variant("foo", req(&[("Foo", "")])));
        assert_ne!(absent, variant("bar", req(&[])));
        assert_eq!(variant("", req(&[("Foo", "1")])), "");
        assert_eq!(record_names(b"v=accept"), Some(&b"accept"[..]));
        assert_eq!(record_names(b"30_10_100_5"), None);
    }
}
