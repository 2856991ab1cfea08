//! The decision taken from a Redis `TTL` answer, the names reported in
//! `$stale_cache_status`, and a rate limiter for error log lines.
//!
//! Pure functions of their inputs, so every branch of the behaviour described
//! in ORIGINAL.md (and every defect we must not repeat) is unit-tested here.

use std::fmt;

/* --------------------------------------------------------------------- ttl */

/// A Redis `TTL` answer that makes sense. Redis ≥ 2.8 answers -2 for a missing
/// key, -1 for a key without expiry, otherwise the seconds left (rounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlReply {
    /// `-2`: no such key.
    Missing,
    /// `-1`: the key exists and never expires (e.g. after `PERSIST`).
    NoExpiry,
    /// Seconds left before the key expires.
    Seconds(u64),
}

impl TtlReply {
    /// Interprets the integer Redis answered; `None` for values below -2,
    /// which no Redis sends (something else answered the lookup).
    pub fn from_redis(ttl: i64) -> Option<TtlReply> {
        match ttl {
            -2 => Some(TtlReply::Missing),
            -1 => Some(TtlReply::NoExpiry),
            0.. => Some(TtlReply::Seconds(ttl.unsigned_abs())),
            _ => None,
        }
    }

    /// The integer Redis answered.
    pub fn to_redis(self) -> i64 {
        match self {
            TtlReply::Missing => -2,
            TtlReply::NoExpiry => -1,
            TtlReply::Seconds(s) => i64::try_from(s).unwrap_or(i64::MAX),
        }
    }
}

/// Where an entry stands relative to its stale window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// `ttl >= stale`: serve it. `fresh_for_ms` is how long until it enters the
    /// stale window, so the answer can be remembered without asking Redis again
    /// (Redis rounds TTLs to the nearest second, so this may be up to 0.5 s
    /// optimistic: a refresh then starts that much later, which is harmless).
    Fresh {
        /// Milliseconds until the entry becomes stale.
        fresh_for_ms: u64,
    },
    /// `-1 <= ttl < stale`: serve it and refresh it. `persist_allowed` only when
    /// `ttl > 0`: a key without expiry needs no `PERSIST`, and one at 0 s may be
    /// gone before the `PERSIST` arrives.
    Stale {
        /// Whether a `PERSIST` may pin the copy during the refresh.
        persist_allowed: bool,
    },
    /// `0 <= ttl < grace`: the last part of the entry's life, kept only for errors: a request
    /// goes to the backend (one per key, the others wait) and the copy is served only if
    /// the backend fails (stale-if-error).
    ErrorGrace,
    /// `ttl == -2`: no entry.
    Missing,
    /// `ttl < -2`: not an answer Redis gives.
    Invalid,
}

/// Classifies a `TTL` answer against the stale window and the error grace band (the last
/// `grace_secs` of the entry's life, `$cache_stale_if_error`; 0 = none), in whole seconds:
/// fresh down to `stale + grace`, stale down to `grace`, then the band.
///
/// `ttl == -1` counts as stale, as in the original: on Redis ≥ 2.8 it is a
/// key without expiry, typically a stale copy a previous refresh `PERSIST`ed
/// whose refresh failed (defect 7). Serving it and refreshing it lets the
/// refresh replace it with an expiring entry. (Redis < 2.8 also answered -1
/// for missing keys; those versions are not supported.)
pub fn classify(ttl: i64, stale_secs: u64, grace_secs: u64) -> Freshness {
    let stale_from = stale_secs.saturating_add(grace_secs);
    match TtlReply::from_redis(ttl) {
        None => Freshness::Invalid,
        Some(TtlReply::Missing) => Freshness::Missing,
        Some(TtlReply::NoExpiry) => Freshness::Stale {
            persist_allowed: false,
        },
        Some(TtlReply::Seconds(secs)) if secs >= stale_from => Freshness::Fresh {
            fresh_for_ms: (secs - stale_from).saturating_mul(1000),
        },
        Some(TtlReply::Seconds(secs)) if secs >= grace_secs => Freshness::Stale {
            persist_allowed: secs > 0,
        },
        Some(TtlReply::Seconds(_)) => Freshness::ErrorGrace,
    }
}

/* ------------------------------------------------------------------ action */

/// Why the module steps aside for a request (srcache then decides alone, as if
/// the module were off): the original answered 500 in these cases (defect 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Redis answered a `TTL` below -2.
    InvalidTtl(i64),
    /// The lookup subrequest failed or answered a non-2xx status.
    LookupFailed,
    /// The lookup answered something that is not an integer reply.
    BadReply,
    /// The lookup did not answer in time.
    Timeout,
    /// The lock zone has no room for another lock.
    ZoneFull,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTtl(ttl) => write!(f, "invalid redis TTL {ttl}"),
            Self::LookupFailed => f.write_str("TTL lookup failed"),
            Self::BadReply => f.write_str("TTL lookup answered no integer"),
            Self::Timeout => f.write_str("TTL lookup timed out"),
            Self::ZoneFull => f.write_str("lock zone full"),
        }
    }
}

/// What to do with a request once its `TTL` is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let srcache serve the entry; the key is known fresh for `memo_ms` more
    /// milliseconds (0: fresh now, but do not remember it).
    ServeFresh {
        /// How long the freshness may be remembered.
        memo_ms: u64,
    },
    /// No entry: take the fill lock and go to the backend, or wait for the
    /// request holding it and then let srcache serve what it stored.
    FillOrWait,
    /// In the error grace band: like a miss, one request per key asks the backend (in the
    /// background) while the others wait; its new answer is served if stored, the old
    /// copy if the backend failed.
    TryBackend,
    /// Let srcache serve the stale copy at once; `PERSIST` it first if
    /// `persist`; start a background refresh if `refresh` and the refresh lock
    /// is free. `refresh` is true for every stale entry today; it is a field so
    /// callers need not change if a case without refresh is added.
    ServeStale {
        /// Send `PERSIST` before refreshing.
        persist: bool,
        /// Try to start a refresh.
        refresh: bool,
    },
    /// Step aside and log `reason`.
    FailOpen {
        /// Why.
        reason: FailReason,
    },
}

/// The decision for a `TTL` answer. `persist_configured`: `$cache_persist`
/// names a location.
pub fn decide(ttl: i64, stale_secs: u64, grace_secs: u64, persist_configured: bool) -> Action {
    match classify(ttl, stale_secs, grace_secs) {
        Freshness::Fresh { fresh_for_ms } => Action::ServeFresh {
            memo_ms: fresh_for_ms,
        },
        Freshness::Missing => Action::FillOrWait,
        Freshness::ErrorGrace => Action::TryBackend,
        Freshness::Stale { persist_allowed } => Action::ServeStale {
            persist: persist_allowed && persist_configured,
            refresh: true,
        },
        Freshness::Invalid => Action::FailOpen {
            reason: FailReason::InvalidTtl(ttl),
        },
    }
}

/* ------------------------------------------------------------------ status */

/// The value of `$stale_cache_status` (the original reported stale hits as
/// `HIT`, defect 12), also used to index counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Entry fresh (from Redis or the remembered freshness).
    Fresh,
    /// Stale copy served (a refresh may have been started).
    Stale,
    /// No entry; this request took the lock and went to the backend.
    Miss,
    /// No entry; this request waited for another one's fill.
    Collapsed,
    /// No entry; waiting for another request's fill timed out.
    Timeout,
    /// This is the module's own background refresh request.
    Refresh,
    /// The module did not handle the request (method, lookup location, ...).
    Bypass,
    /// The lookup failed; the module stepped aside.
    Error,
    /// The key's last fill was not stored (an uncacheable answer): this request went to the
    /// backend without waiting, in parallel with the others (hit-for-miss).
    Pass,
    /// The module expected a cached entry (fresh, stale or just filled) but srcache's fetch
    /// found none (deleted, evicted, Redis restarted or down) and the request went to the
    /// backend without collapsing; counted as a miss.
    Gone,
    /// In the error grace band: the backend failed (or is backing off after failing), so the
    /// stored copy was served (stale-if-error).
    StaleError,
    /// Fresh, and answered from this node's hot tier (`stale_cache_hot`) without asking
    /// Redis: the same bytes srcache fetched earlier, at most `stale_cache_hot_max_age` old.
    Hot,
    /// Redis is away (down, in backoff, lookups failing): answered from this node's shared
    /// memory with the response of the one request of the key that went to the backend
    /// (collapsed without Redis), within that response's fresh period.
    Local,
}

impl CacheStatus {
    /// Number of statuses, for counter arrays.
    pub const COUNT: usize = 13;

    /// Every status, in [`CacheStatus::index`] order.
    pub const ALL: [CacheStatus; CacheStatus::COUNT] = [
        CacheStatus::Fresh,
        CacheStatus::Stale,
        CacheStatus::Miss,
        CacheStatus::Collapsed,
        CacheStatus::Timeout,
        CacheStatus::Refresh,
        CacheStatus::Bypass,
        CacheStatus::Error,
        CacheStatus::Pass,
        CacheStatus::Gone,
        CacheStatus::StaleError,
        CacheStatus::Hot,
        CacheStatus::Local,
    ];

    /// The variable's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Fresh => "FRESH",
            CacheStatus::Stale => "STALE",
            CacheStatus::Miss => "MISS",
            CacheStatus::Collapsed => "COLLAPSED",
            CacheStatus::Timeout => "TIMEOUT",
            CacheStatus::Refresh => "REFRESH",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Error => "ERROR",
            CacheStatus::Pass => "PASS",
            CacheStatus::Gone => "GONE",
            CacheStatus::StaleError => "STALE-ERROR",
            CacheStatus::Hot => "HOT",
            CacheStatus::Local => "LOCAL",
        }
    }

    /// Position in [`CacheStatus::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/* ------------------------------------------------------------- log limiter */

/// Lets through at most one log line per interval and counts the rest, so a
/// Redis outage logs a line per interval instead of one per request.
/// `repr(C)` and plain integers so it can also live in shared memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimiter {
    interval_ms: u64,
    last_ms: u64,
    suppressed: u64,
    logged_once: u64,
}

impl LogLimiter {
    /// A limiter that has not logged yet.
    pub const fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            last_ms: 0,
            suppressed: 0,
            logged_once: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// suppressed since the last one (worth appending to the line); `None`
    /// when this one must be dropped. A clock behind the last log time (clocks
    /// of different workers differ slightly) counts as no time passed.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        let due = self.logged_once == 0 || now_ms.saturating_sub(self.last_ms) >= self.interval_ms;
        if !due {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.logged_once = 1;
        self.last_ms = now_ms;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines dropped since the last one let through.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/* ------------------------------------------------------------------- tests */

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_reply_from_redis() {
        assert_eq!(TtlReply::from_redis(-2), Some(TtlReply::Missing));
        assert_eq!(TtlReply::from_redis(-1), Some(TtlReply::NoExpiry));
        assert_eq!(TtlReply::from_redis(0), Some(TtlReply::Seconds(0)));
        assert_eq!(
            TtlReply::from_redis(i64::MAX),
            Some(TtlReply::Seconds(i64::MAX as u64))
        );
        assert_eq!(TtlReply::from_redis(-3), None);
        assert_eq!(TtlReply::from_redis(i64::MIN), None);
        for ttl in [-2, -1, 0, 1, 105, i64::MAX] {
            assert_eq!(TtlReply::from_redis(ttl).unwrap().to_redis(), ttl);
        }
        assert_eq!(TtlReply::Seconds(u64::MAX).to_redis(), i64::MAX);
    }

    #[test]
    fn classify_boundaries() {
        assert_eq!(
            classify(105, 100, 0),
            Freshness::Fresh { fresh_for_ms: 5000 }
        );
        assert_eq!(classify(100, 100, 0), Freshness::Fresh { fresh_for_ms: 0 });
        assert_eq!(
            classify(99, 100, 0),
            Freshness::Stale {
                persist_allowed: true
            }
        );
        assert_eq!(
            classify(1, 100, 0),
            Freshness::Stale {
                persist_allowed: true
            }
        );
        assert_eq!(
            classify(0, 100, 0),
            Freshness::Stale {
                persist_allowed: false
            }
        );
        assert_eq!(
            classify(-1, 100, 0),
            Freshness::Stale {
                persist_allowed: false
            }
        );
        assert_eq!(classify(-2, 100, 0), Freshness::Missing);
        assert_eq!(classify(-3, 100, 0), Freshness::Invalid);
        assert_eq!(classify(i64::MIN, 100, 0), Freshness::Invalid);
    }

    #[test]
    fn classify_without_stale_window() {
        assert_eq!(classify(0, 0, 0), Freshness::Fresh { fresh_for_ms: 0 });
        assert_eq!(classify(7, 0, 0), Freshness::Fresh { fresh_for_ms: 7000 });
        // A key without expiry is stale even then, so it gets replaced.
        assert_eq!(
            classify(-1, 0, 0),
            Freshness::Stale {
                persist_allowed: false
            }
        );
        assert_eq!(classify(-2, 0, 0), Freshness::Missing);
    }

    #[test]
    fn classify_extremes_do_not_overflow() {
        assert_eq!(
            classify(i64::MAX, 0, 0),
            Freshness::Fresh {
                fresh_for_ms: u64::MAX
            }
        );
        assert_eq!(
            classify(i64::MAX, u64::MAX, 0),
            Freshness::Stale {
                persist_allowed: true
            }
        );
    }

    #[test]
    fn decide_follows_classification() {
        assert_eq!(
            decide(105, 100, 0, true),
            Action::ServeFresh { memo_ms: 5000 }
        );
        assert_eq!(decide(-2, 100, 0, true), Action::FillOrWait);
        assert_eq!(
            decide(50, 100, 0, true),
            Action::ServeStale {
                persist: true,
                refresh: true
            }
        );
        assert_eq!(
            decide(50, 100, 0, false),
            Action::ServeStale {
                persist: false,
                refresh: true
            }
        );
        // Never PERSIST a key that has no expiry or is about to vanish.
        for ttl in [-1, 0] {
            assert_eq!(
                decide(ttl, 100, 0, true),
                Action::ServeStale {
                    persist: false,
                    refresh: true
                }
            );
        }
        assert_eq!(
            decide(-5, 100, 0, true),
            Action::FailOpen {
                reason: FailReason::InvalidTtl(-5)
            }
        );
    }

    #[test]
    fn fail_reasons_read_well() {
        assert_eq!(
            FailReason::InvalidTtl(-9).to_string(),
            "invalid redis TTL -9"
        );
        assert_eq!(FailReason::Timeout.to_string(), "TTL lookup timed out");
        assert_eq!(FailReason::ZoneFull.to_string(), "lock zone full");
    }

    #[test]
    fn error_grace_band_is_the_end_of_the_life() {
        // 60 s of grace under a 100 s stale window: fresh from 160 s, stale down to 60 s.
        assert_eq!(
            classify(165, 100, 60),
            Freshness::Fresh { fresh_for_ms: 5000 }
        );
        assert_eq!(classify(160, 100, 60), Freshness::Fresh { fresh_for_ms: 0 });
        assert_eq!(
            classify(159, 100, 60),
            Freshness::Stale {
                persist_allowed: true
            }
        );
        assert_eq!(
            classify(60, 100, 60),
            Freshness::Stale {
                persist_allowed: true
            }
        );
        assert_eq!(classify(59, 100, 60), Freshness::ErrorGrace);
        assert_eq!(classify(0, 100, 60), Freshness::ErrorGrace);
        // A key without expiry or a missing one is not in any band.
        assert_eq!(
            classify(-1, 100, 60),
            Freshness::Stale {
                persist_allowed: false
            }
        );
        assert_eq!(classify(-2, 100, 60), Freshness::Missing);
        assert_eq!(decide(30, 100, 60, true), Action::TryBackend);
        assert_eq!(
            decide(30, 100, 0, true),
            Action::ServeStale {
                persist: true,
                refresh: true
            }
        );
        // No overflow at the edges.
        assert_eq!(
            classify(i64::MAX, u64::MAX, u64::MAX),
            Freshness::ErrorGrace
        );
    }

    #[test]
    fn status_names() {
        let names: Vec<&str> = CacheStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "FRESH",
                "STALE",
                "MISS",
                "COLLAPSED",
                "TIMEOUT",
                "REFRESH",
                "BYPASS",
                "ERROR",
                "PASS",
                "GONE",
                "STALE-ERROR",
                "HOT",
                "LOCAL"
            ]
        );
        for (i, s) in CacheStatus::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn log_limiter_lets_one_line_per_interval() {
        let mut lim = LogLimiter::new(1000);
        assert_eq!(lim.allow(0), Some(0));
        assert_eq!(lim.allow(1), None);
        assert_eq!(lim.allow(999), None);
        assert_eq!(lim.suppressed(), 2);
        assert_eq!(lim.allow(1000), Some(2));
        assert_eq!(lim.suppressed(), 0);
        assert_eq!(lim.allow(1500), None);
        assert_eq!(lim.allow(5000), Some(1));
        assert_eq!(lim.allow(5000), None);
    }

    #[test]
    fn log_limiter_first_line_at_any_time_and_clock_skew() {
        let mut lim = LogLimiter::new(1000);
        assert_eq!(lim.allow(123_456), Some(0));
        // Another worker's clock slightly behind: no time passed.
        assert_eq!(lim.allow(123_000), None);
        assert_eq!(lim.allow(124_456), Some(1));
        let mut zero = LogLimiter::new(0);
        assert_eq!(zero.allow(5), Some(0));
        assert_eq!(zero.allow(5), Some(0));
    }
}
