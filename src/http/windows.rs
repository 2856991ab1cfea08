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
    pub fn encode(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.stale,
            self.grace,
            self.total(),
            self.age
        )
    }
}

/// The lookup script: the entry's TTL, and with it the entry's windows when it has them
/// (`*5`: ttl, stale, grace, total, age), else the bare TTL as the `TTL` command answers.
pub const LOOKUP_SCRIPT: &str = "local t = redis.call('TTL', KEYS[1]) \
if t < 0 then return t end \
local w = redis.call('GET', KEYS[2]) \
if not w then return t end \
local r = {t} \
for n in string.gmatch(w, '%d+') do r[#r + 1] = tonumber(n) end \
if #r ~= 5 then return t end \
return r";

/// The lookup's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub ttl: i64,
    /// The entry's own windows: (stale, grace, total, age when stored).
    pub entry: Option<EntryWindows>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryWindows {
    pub stale: u64,
    pub grace: u64,
    pub total: u64,
    pub stored_age: u64,
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

/// Reads a lookup's answer: an integer reply (`TTL`), or the script's array of five integers.
pub fn parse_lookup(buf: &[u8]) -> Result<Lookup, ReplyError> {
    if buf.first() != Some(&b'*') {
        return parse_integer_reply(buf).map(|ttl| Lookup { ttl, entry: None });
    }
    let bad = || ReplyError::WrongType(crate::resp::ReplyKind::Array);
    let body = buf.strip_prefix(b"*5\r\n").ok_or_else(bad)?;
    let mut n = [0i64; 5];
    let mut rest = body;
    for slot in &mut n {
        let end = rest.windows(2).position(|p| p == b"\r\n").ok_or_else(bad)?;
        *slot = parse_integer_reply(&rest[..end + 2]).map_err(|_| bad())?;
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() || n[1..].iter().any(|&v| v < 0) {
        return Err(bad());
    }
    Ok(Lookup {
        ttl: n[0],
        entry: Some(EntryWindows {
            stale: n[1] as u64,
            grace: n[2] as u64,
            total: n[3] as u64,
            stored_age: n[4] as u64,
        }),
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
    }

    #[test]
    fn lookups() {
        assert_eq!(
            parse_lookup(b":42\r\n").unwrap(),
            Lookup {
                ttl: 42,
                entry: None
            }
        );
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
        assert!(matches!(
            parse_lookup(b"-ERR no\r\n"),
            Err(ReplyError::ErrorReply(_))
        ));
    }
}
