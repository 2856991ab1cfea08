//! An entry's own windows, kept in Redis beside it (the value of `<key>:w`, stored with the
//! entry and with its expiry) and read back by the TTL lookup's script, so that the lookup's
//! answer is judged per entry. Nothing of it reaches a client.

use crate::resp::{parse_integer_reply, ReplyError};

/// The windows of one stored response (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub fresh: u64,
    pub stale: u64,
    pub grace: u64,
    /// Its age when it was stored.
    pub age: u64,
}

impl Windows {
    /// How long Redis keeps the entry: fresh, then stale, then the error grace band.
    pub fn total(&self) -> u64 {
        self.fresh
            .saturating_add(self.stale)
            .saturating_add(self.grace)
    }

    /// The value kept in `<key>:w`: "stale_grace_total_age" (no character that needs
    /// escaping in a query string).
    ///
    /// An entry is fresh while its TTL is at least stale + grace; one stored without any
    /// freshness (stale from birth) says one second more of its first window than it has,
    /// so that even its first TTL answer is past freshness.
    pub fn encode(&self) -> String {
        let born_stale = u64::from(self.fresh == 0);
        let (stale, grace) = if self.stale > 0 {
            (self.stale + born_stale, self.grace)
        } else {
            (self.stale, self.grace + born_stale)
        };
        format!("{}_{}_{}_{}", stale, grace, self.total(), self.age)
    }
}

/// The lookup script: the entry's TTL, and with it the entry's windows when it has them
/// (`*5`: ttl, stale, grace, total, age), else the bare TTL as the `TTL` command answers.
///
/// A URL whose responses vary has no entry of its own: its `<key>:w` holds the vary record
/// (`v=<names>`, see `crate::http::vary`), which the script answers as a bulk string; the
/// module then looks the request's variant up with the same script, given the variant's keys
/// and the URL's (KEYS 3 and 4). A missing variant answers the URL's vary record when it
/// still has one (the variant is missing), else -3 (the URL does not vary any more). Entries
/// without Vary cost the same two reads as before.
pub const LOOKUP_SCRIPT: &str = "local t = redis.call('TTL', KEYS[1]) \
local w = redis.call('GET', KEYS[2]) \
if t < 0 then \
if #KEYS >= 4 and KEYS[4] ~= KEYS[2] then \
w = redis.call('GET', KEYS[4]) \
if not (w and string.sub(w, 1, 2) == 'v=') then return -3 end \
end \
if w and string.sub(w, 1, 2) == 'v=' then return w end \
return t end \
if not w then return t end \
local r = {t} \
for n in string.gmatch(w, '%d+') do r[#r + 1] = tonumber(n) end \
if #r ~= 5 then return t end \
if t < r[3] then \
local v = redis.call('GET', KEYS[1]) \
local e = v and string.find(v, '\\r\\n\\r\\n', 1, true) \
if e then \
local h = string.sub(v, 1, e + 1) \
r[6] = string.match(h, '\\n[Ee][Tt][Aa][Gg]:[ \\t]*([^\\r\\n]*)') or '' \
r[7] = string.match(h, '\\n[Ll][Aa][Ss][Tt]%-[Mm][Oo][Dd][Ii][Ff][Ii][Ee][Dd]:[ \\t]*([^\\r\\n]*)') or '' \
end \
end \
return r";

/// The store script of the mode's store location: a response is stored with its windows; a
/// `304` (a conditional refresh's answer) updates the stored response instead (RFC 9111
/// 4.3.4): its header lines replace those of the same name, the body stays, and the entry gets
/// the 304's life. A 304 without a stored response, or for another ETag, stores nothing.
/// KEYS: entry, windows; ARGV: the response as srcache stores it, exptime, windows.
///
/// Variants (`crate::http::vary`): with KEYS entry (the variant's: `<key>:v:<md5>`), its
/// windows, the URL's entry, the URL's windows and the URL's variant set (`<key>:vs`), and
/// the response's normalised Vary names after the windows (`<windows>~<names>`), a response
/// that varies is stored under its variant key; the URL's `<key>:w` becomes the vary record
/// `v=<names>` (the URL's own entry, if any, goes) and the variant set lists the variant's
/// keys for purges. Both live as long as the URL's longest-lived variant.
pub const STORE_SCRIPT: &str = "local b = ARGV[1] \
local w, names = string.match(ARGV[3], '^([^~]*)~?(.*)$') \
if string.sub(b, 1, 12) ~= 'HTTP/1.1 304' and string.sub(b, 1, 12) ~= 'HTTP/1.0 304' then \
redis.call('SET', KEYS[1], b, 'EX', ARGV[2]) \
redis.call('SET', KEYS[2], w, 'EX', ARGV[2]) \
if #KEYS >= 5 and names ~= '' and KEYS[1] ~= KEYS[3] then \
local e = tonumber(ARGV[2]) \
local bt = redis.call('TTL', KEYS[4]) \
if bt > e then e = bt end \
redis.call('SET', KEYS[4], 'v=' .. names, 'EX', e) \
redis.call('DEL', KEYS[3]) \
redis.call('SADD', KEYS[5], KEYS[1], KEYS[2]) \
if redis.call('TTL', KEYS[5]) < e then redis.call('EXPIRE', KEYS[5], e) end \
end \
return 1 end \
local old = redis.call('GET', KEYS[1]) \
local oe = old and string.find(old, '\\r\\n\\r\\n', 1, true) \
if not oe then return 0 end \
local ne = string.find(b, '\\r\\n\\r\\n', 1, true) or (#b + 1) \
local skip = {['content-length'] = true, ['transfer-encoding'] = true, ['content-encoding'] = true, \
['content-range'] = true, ['content-md5'] = true, ['etag'] = true} \
local new, names = {}, {} \
for line in string.gmatch(string.sub(b, 1, ne), '[^\\r\\n]+') do \
local n = string.match(line, '^([^:]+):') \
if n then n = string.lower(n) \
if not skip[n] then names[n] = true new[#new + 1] = line end end \
end \
local function etag(h) return string.match(h, '\\n[Ee][Tt][Aa][Gg]:[ \\t]*([^\\r\\n]*)') end \
local oh = string.sub(old, 1, oe + 1) \
local ot, nt = etag(oh), etag(string.sub(b, 1, ne + 1)) \
if nt and ot ~= nt then return 0 end \
local out, first = {}, true \
for line in string.gmatch(oh, '[^\\r\\n]+') do \
local n = string.match(line, '^([^:]+):') \
if first or not n or not names[string.lower(n)] then out[#out + 1] = line end \
first = false \
end \
for _, line in ipairs(new) do out[#out + 1] = line end \
redis.call('SET', KEYS[1], table.concat(out, '\\r\\n') .. string.sub(old, oe), 'EX', ARGV[2]) \
redis.call('SET', KEYS[2], w, 'EX', ARGV[2]) \
return 1";

/// The lookup's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub ttl: i64,
    /// The URL varies: the normalised names of its vary record (its variant is to be looked
    /// up); `ttl` is then -2.
    pub vary: Option<Vec<u8>>,
    /// The entry's own windows: (stale, grace, total, age when stored).
    pub entry: Option<EntryWindows>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryWindows {
    pub stale: u64,
    pub grace: u64,
    pub total: u64,
    pub stored_age: u64,
    /// In the error grace band (where a request revalidates): the stored response's `ETag`
    /// and `Last-Modified`, empty when it has none.
    pub etag: Vec<u8>,
    pub last_modified: Vec<u8>,
}

impl EntryWindows {
    /// The entry's `Age` now, from its TTL (RFC 9111 4.2.3: its age when stored plus its time
    /// in the cache).
    pub fn age(&self, ttl: i64) -> u64 {
        let resident = i64::try_from(self.total).unwrap_or(i64::MAX) - ttl.max(0);
        self.stored_age
            .saturating_add(u64::try_from(resident).unwrap_or(0))
    }
}

/// The conditional request headers that revalidate a stored response (RFC 9111 4.3.1).
pub fn conditional_headers(e: &EntryWindows) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if !e.etag.is_empty() {
        out.push((b"If-None-Match".to_vec(), e.etag.clone()));
    }
    if !e.last_modified.is_empty() {
        out.push((b"If-Modified-Since".to_vec(), e.last_modified.clone()));
    }
    out
}

/// Reads a lookup's answer: an integer reply (`TTL`), or the script's array: five integers,
/// then in the grace band two bulk strings (the validators).
pub fn parse_lookup(buf: &[u8]) -> Result<Lookup, ReplyError> {
    if buf.first() != Some(&b'*') {
        if buf.first() == Some(&b'$') {
            return parse_vary(buf);
        }
        return parse_integer_reply(buf).map(|ttl| Lookup {
            ttl,
            entry: None,
            vary: None,
        });
    }
    let bad = || ReplyError::WrongType(crate::resp::ReplyKind::Array);
    let (count, mut rest) = if let Some(r) = buf.strip_prefix(b"*5\r\n") {
        (5, r)
    } else if let Some(r) = buf.strip_prefix(b"*7\r\n") {
        (7, r)
    } else {
        return Err(bad());
    };
    let line = |rest: &[u8]| -> Result<usize, ReplyError> {
        rest.windows(2)
            .position(|p| p == b"\r\n")
            .map(|e| e + 2)
            .ok_or_else(bad)
    };
    let mut n = [0i64; 5];
    for slot in &mut n {
        let end = line(rest)?;
        *slot = parse_integer_reply(&rest[..end]).map_err(|_| bad())?;
        rest = &rest[end..];
    }
    let mut strings: [Vec<u8>; 2] = Default::default();
    if count == 7 {
        for s in &mut strings {
            let end = line(rest)?;
            let len: usize = rest[..end - 2]
                .strip_prefix(b"$")
                .and_then(|l| core::str::from_utf8(l).ok())
                .and_then(|l| l.parse().ok())
                .ok_or_else(bad)?;
            let value = rest.get(end..end + len).ok_or_else(bad)?;
            if rest.get(end + len..end + len + 2) != Some(b"\r\n") {
                return Err(bad());
            }
            *s = value.to_vec();
            rest = &rest[end + len + 2..];
        }
    }
    if !rest.is_empty() || n[1..].iter().any(|&v| v < 0) {
        return Err(bad());
    }
    let [etag, last_modified] = strings;
    Ok(Lookup {
        ttl: n[0],
        vary: None,
        entry: Some(EntryWindows {
            stale: n[1] as u64,
            grace: n[2] as u64,
            total: n[3] as u64,
            stored_age: n[4] as u64,
            etag,
            last_modified,
        }),
    })
}

/// The vary record as the lookup script answers it: `$<n>\r\nv=<names>\r\n`.
fn parse_vary(buf: &[u8]) -> Result<Lookup, ReplyError> {
    let bad = || ReplyError::WrongType(crate::resp::ReplyKind::Bulk);
    let end = buf.windows(2).position(|p| p == b"\r\n").ok_or_else(bad)?;
    let len: usize = core::str::from_utf8(&buf[1..end])
        .ok()
        .and_then(|l| l.parse().ok())
        .ok_or_else(bad)?;
    let value = buf.get(end + 2..end + 2 + len).ok_or_else(bad)?;
    if &buf[end + 2 + len..] != b"\r\n" {
        return Err(bad());
    }
    let names = crate::http::vary::record_names(value).ok_or_else(bad)?;
    Ok(Lookup {
        ttl: -2,
        entry: None,
        vary: Some(names.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_total() {
        let w = Windows {
            fresh: 60,
            stale: 30,
            grace: 10,
            age: 5,
        };
        assert_eq!(w.total(), 100);
        assert_eq!(w.encode(), "30_10_100_5");
        let born_stale = Windows {
            fresh: 0,
            stale: 0,
            grace: 60,
            age: 0,
        };
        assert_eq!(born_stale.encode(), "0_61_60_0");
    }

    #[test]
    fn lookups() {
        assert_eq!(
            parse_lookup(b":42\r\n").unwrap(),
            Lookup {
                ttl: 42,
                entry: None,
                vary: None
            }
        );
        let v = parse_lookup(b"$19\r\nv=accept,user-agent\r\n").unwrap();
        assert_eq!(
            (v.ttl, v.vary.as_deref()),
            (-2, Some(&b"accept,user-agent"[..]))
        );
        assert!(parse_lookup(b"$19\r\nv=accept,user-agent\r\nx").is_err());
        assert!(parse_lookup(b"$3\r\nabc\r\n").is_err());
        let l = parse_lookup(b"*5\r\n:80\r\n:30\r\n:10\r\n:100\r\n:5\r\n").unwrap();
        assert_eq!(l.ttl, 80);
        let e = l.entry.unwrap();
        assert_eq!((e.stale, e.grace, e.total, e.stored_age), (30, 10, 100, 5));
        assert_eq!(e.age(80), 25);
        assert_eq!(e.age(-1), 105);
        assert!(parse_lookup(b"*5\r\n:80\r\n:30\r\n").is_err());
        assert!(parse_lookup(b"*2\r\n:80\r\n:30\r\n").is_err());
        assert!(parse_lookup(b"*5\r\n:80\r\n:-30\r\n:10\r\n:100\r\n:5\r\n").is_err());
        assert!(parse_lookup(b"*5\r\n:80\r\n:30\r\n:10\r\n:100\r\n:5\r\nx").is_err());
        let l = parse_lookup(b"*7\r\n:5\r\n:0\r\n:60\r\n:62\r\n:0\r\n$5\r\n\"abc\"\r\n$0\r\n\r\n")
            .unwrap();
        let e = l.entry.unwrap();
        assert_eq!(
            (l.ttl, e.grace, &e.etag[..], &e.last_modified[..]),
            (5, 60, &b"\"abc\""[..], &b""[..])
        );
        assert!(
            parse_lookup(b"*7\r\n:5\r\n:0\r\n:60\r\n:62\r\n:0\r\n$9\r\nabc\r\n$0\r\n\r\n").is_err()
        );
        assert!(matches!(
            parse_lookup(b"-ERR no\r\n"),
            Err(ReplyError::ErrorReply(_))
        ));
    }
}
