//! This cache's member of an RFC 9211 `Cache-Status` header, from what the layer decided for
//! a request. Pure, so every status's header is unit-tested.
//!
//! RFC 9211 parameters used: `hit` (served from the cache), `fwd` (why the request went on to
//! the backend: `miss`, `bypass`, `request`), `fwd-status` (the status the backend answered),
//! `ttl` (freshness left, seconds; negative for a stale copy), `collapsed` (the request waited
//! for another one's fill instead of going to the backend) and `detail` (this module's own
//! status where RFC 9211 has no word for it).

use crate::policy::CacheStatus;

/// The cache's identifier in the header (RFC 9211 suggests a product name).
pub const CACHE_ID: &str = "stale-cache";

/// What the member is made from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    /// Seconds of freshness left (negative: stale for that long), when a TTL lookup or the
    /// freshness memo said.
    pub ttl: Option<i64>,
    /// The response's status code, 0 when not known yet.
    pub response_status: usize,
    /// srcache served the response from Redis (`$srcache_fetch_status` is HIT); only looked
    /// at where the layer itself did not decide (BYPASS, ERROR).
    pub srcache_hit: bool,
    /// A LOCAL answer came from a copy past its fresh period.
    pub local_stale: bool,
}

/// A member, built in place: it is made for every response that shows it, so neither the
/// heap nor `core::fmt` is used.
#[derive(Clone, Copy)]
pub struct Member {
    bytes: [u8; Member::CAP],
    len: usize,
}

impl Member {
    /// Room for the longest member (about 80 bytes: an i64 TTL, a usize status, the longest
    /// words).
    const CAP: usize = 128;

    fn new() -> Self {
        let mut member = Member {
            bytes: [0; Member::CAP],
            len: 0,
        };
        member.push(CACHE_ID);
        member
    }

    fn push(&mut self, text: &str) {
        let end = self.len + text.len();
        // Never cut in practice (see CAP); a cut would only shorten the header.
        if end <= Self::CAP {
            self.bytes[self.len..end].copy_from_slice(text.as_bytes());
            self.len = end;
        }
    }

    fn push_int(&mut self, negative: bool, n: u64) {
        if negative {
            self.push("-");
        }
        let mut buf = [0; 20];
        // ASCII digits.
        self.push(core::str::from_utf8(crate::resp::decimal(n, &mut buf)).unwrap_or_default());
    }

    /// The member's text.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl core::fmt::Debug for Member {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for Member {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The `Cache-Status` member for a request that ended with `status`.
pub fn member(status: CacheStatus, facts: Facts) -> Member {
    let mut out = Member::new();
    let hit = |out: &mut Member| out.push("; hit");
    let fwd = |out: &mut Member, why: &str| {
        out.push("; fwd=");
        out.push(why);
        if facts.response_status != 0 {
            out.push("; fwd-status=");
            out.push_int(false, facts.response_status as u64);
        }
    };
    let ttl = |out: &mut Member| {
        if let Some(t) = facts.ttl {
            out.push("; ttl=");
            out.push_int(t < 0, t.unsigned_abs());
        }
    };
    let detail = |out: &mut Member, d: &str| {
        out.push("; detail=");
        out.push(d);
    };
    match status {
        CacheStatus::Fresh => {
            hit(&mut out);
            ttl(&mut out);
        }
        CacheStatus::Hot => {
            // A fresh hit served from this node's shared memory instead of Redis.
            hit(&mut out);
            ttl(&mut out);
            detail(&mut out, "hot");
        }
        CacheStatus::Local => {
            // Redis away: a copy kept in this node's shared memory; a stale one is said so
            // as STALE says it (no `fwd`: the client's answer was not forwarded).
            hit(&mut out);
            let d = if facts.local_stale {
                "local-stale"
            } else {
                "local"
            };
            detail(&mut out, d);
        }
        CacheStatus::Stale => {
            hit(&mut out);
            ttl(&mut out);
            detail(&mut out, "stale");
        }
        CacheStatus::Miss => fwd(&mut out, "miss"),
        CacheStatus::Collapsed => {
            fwd(&mut out, "miss");
            out.push("; collapsed");
        }
        CacheStatus::Timeout => {
            fwd(&mut out, "miss");
            detail(&mut out, "lock-timeout");
        }
        CacheStatus::Pass => {
            fwd(&mut out, "miss");
            detail(&mut out, "pass");
        }
        CacheStatus::Gone => {
            fwd(&mut out, "miss");
            detail(&mut out, "gone");
        }
        CacheStatus::StaleError => {
            // The backend failed and the stored copy stood in for it (RFC 5861).
            hit(&mut out);
            ttl(&mut out);
            detail(&mut out, "stale-if-error");
        }
        CacheStatus::Refresh => {
            fwd(&mut out, "request");
            detail(&mut out, "refresh");
        }
        CacheStatus::Bypass | CacheStatus::Error => {
            // srcache decided alone: say what it did.
            if facts.srcache_hit {
                hit(&mut out);
            } else {
                fwd(&mut out, "bypass");
            }
            if status == CacheStatus::Error {
                detail(&mut out, "error");
            }
        }
    }
    out
}

/// Seconds of freshness left from a Redis TTL, the stale window and the error grace band
/// (`$cache_stale_if_error`): an entry is fresh down to `stale + grace` seconds of life
/// (`policy::classify`), so this is negative once stale (or in the band).
pub fn ttl_left(redis_ttl: i64, stale_secs: u64, grace_secs: u64) -> Option<i64> {
    let stale_from = i64::try_from(stale_secs.saturating_add(grace_secs)).unwrap_or(i64::MAX);
    // -1 (no expiry) and -2 (missing) say nothing about freshness.
    (redis_ttl >= 0).then(|| redis_ttl.saturating_sub(stale_from))
}

/// Seconds of freshness left by the freshness memo (fresh until `until_ms`), rounded as
/// Redis rounds a `TTL`, so a memo answer and a lookup agree.
pub fn memo_ttl_left(until_ms: u64, now_ms: u64) -> i64 {
    i64::try_from(until_ms.saturating_sub(now_ms).saturating_add(500) / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ttl: Option<i64>, status: usize) -> Facts {
        Facts {
            ttl,
            response_status: status,
            srcache_hit: false,
            local_stale: false,
        }
    }

    #[test]
    fn each_status() {
        let f = facts(Some(4), 200);
        assert_eq!(member(CacheStatus::Fresh, f), "stale-cache; hit; ttl=4");
        assert_eq!(
            member(CacheStatus::Hot, f),
            "stale-cache; hit; ttl=4; detail=hot"
        );
        assert_eq!(
            member(CacheStatus::Fresh, facts(None, 200)),
            "stale-cache; hit"
        );
        assert_eq!(
            member(CacheStatus::Stale, facts(Some(-50), 200)),
            "stale-cache; hit; ttl=-50; detail=stale"
        );
        assert_eq!(
            member(CacheStatus::Miss, f),
            "stale-cache; fwd=miss; fwd-status=200"
        );
        assert_eq!(
            member(CacheStatus::Miss, facts(None, 0)),
            "stale-cache; fwd=miss"
        );
        assert_eq!(
            member(CacheStatus::Collapsed, f),
            "stale-cache; fwd=miss; fwd-status=200; collapsed"
        );
        assert_eq!(
            member(CacheStatus::Timeout, facts(None, 502)),
            "stale-cache; fwd=miss; fwd-status=502; detail=lock-timeout"
        );
        assert_eq!(
            member(CacheStatus::Pass, facts(None, 500)),
            "stale-cache; fwd=miss; fwd-status=500; detail=pass"
        );
        assert_eq!(
            member(CacheStatus::Gone, f),
            "stale-cache; fwd=miss; fwd-status=200; detail=gone"
        );
        assert_eq!(
            member(CacheStatus::Refresh, f),
            "stale-cache; fwd=request; fwd-status=200; detail=refresh"
        );
        assert_eq!(
            member(CacheStatus::Bypass, f),
            "stale-cache; fwd=bypass; fwd-status=200"
        );
        assert_eq!(
            member(CacheStatus::Local, f),
            "stale-cache; hit; detail=local"
        );
        let stale = Facts {
            local_stale: true,
            ..f
        };
        assert_eq!(
            member(CacheStatus::Local, stale),
            "stale-cache; hit; detail=local-stale"
        );
        let hit = Facts {
            srcache_hit: true,
            ..f
        };
        assert_eq!(member(CacheStatus::Bypass, hit), "stale-cache; hit");
        assert_eq!(
            member(CacheStatus::Error, hit),
            "stale-cache; hit; detail=error"
        );
        assert_eq!(
            member(CacheStatus::Error, f),
            "stale-cache; fwd=bypass; fwd-status=200; detail=error"
        );
    }

    #[test]
    fn extreme_numbers() {
        let f = Facts {
            ttl: Some(i64::MIN),
            response_status: usize::MAX,
            srcache_hit: false,
            local_stale: false,
        };
        assert_eq!(
            member(CacheStatus::StaleError, f),
            "stale-cache; hit; ttl=-9223372036854775808; detail=stale-if-error"
        );
        assert_eq!(
            member(CacheStatus::Timeout, f),
            "stale-cache; fwd=miss; fwd-status=18446744073709551615; detail=lock-timeout"
        );
        assert_eq!(
            member(CacheStatus::Fresh, facts(Some(0), 0)),
            "stale-cache; hit; ttl=0"
        );
        assert_eq!(
            member(CacheStatus::Refresh, facts(Some(i64::MAX), 0)),
            "stale-cache; fwd=request; detail=refresh"
        );
    }

    #[test]
    fn ttl_from_redis() {
        assert_eq!(ttl_left(105, 100, 0), Some(5));
        assert_eq!(ttl_left(50, 100, 0), Some(-50));
        assert_eq!(ttl_left(0, 100, 0), Some(-100));
        assert_eq!(ttl_left(-1, 100, 0), None);
        assert_eq!(ttl_left(-2, 100, 0), None);
        assert_eq!(ttl_left(i64::MAX, u64::MAX, u64::MAX), Some(0));
    }

    #[test]
    fn ttl_with_stale_if_error_counts_the_grace_band() {
        // Stored for 165 s: 5 s fresh, 100 s stale, 60 s of grace for errors.
        assert_eq!(ttl_left(164, 100, 60), Some(4));
        assert_eq!(ttl_left(160, 100, 60), Some(0));
        // Stale for 1 s, and in the grace band (stale-if-error) for 100 s + 10 s.
        assert_eq!(ttl_left(159, 100, 60), Some(-1));
        assert_eq!(ttl_left(50, 100, 60), Some(-110));
    }

    #[test]
    fn memo_ttl_rounds_as_redis() {
        assert_eq!(memo_ttl_left(10_000, 5_000), 5);
        assert_eq!(memo_ttl_left(10_000, 5_600), 4);
        assert_eq!(memo_ttl_left(10_000, 5_400), 5);
        assert_eq!(memo_ttl_left(10_000, 12_000), 0);
    }
}
