//! The rules of request collapsing, as pure functions: when a fill counts (it stored), what a request
//! does after trying the fill lock (also after being woken), when waiters are woken, and how
//! long a refresh lock may live. The nginx layer (`stale::`) only carries them out.

use crate::locktable::{LockAttempt, LockInfo};
use crate::policy::CacheStatus;

/// How a fill ended, judged when its request is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillEnd {
    /// srcache's store subrequest answered 2xx (or its fetch found the entry, stored by
    /// another request meanwhile): waiters are served from the cache.
    Stored,
    /// The answer was complete but nothing was stored (an uncacheable status or
    /// `Cache-Control`, too large, store skipped or failed): waiting cannot help, so waiters go
    /// to the backend at once and the key gets a pass mark (hit-for-miss).
    NotStored,
    /// The filler ended before its answer was complete (client gone, request failed early):
    /// one waiter fills in its place, the others keep waiting.
    Abandoned,
}

/// What srcache's store subrequest did with a request's response: the one account of
/// "stored" for the fill's end, the metrics and the hot tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// No store subrequest ran: srcache did not store this response (an uncacheable status or
    /// `Cache-Control`, `srcache_store_skip`, a body over its limit, the response not
    /// complete). Nothing says the response may be reused.
    NotRun,
    /// The store location answered 2xx: the response is in Redis.
    Stored,
    /// srcache sent the response to its store location, which answered `status` (not 2xx):
    /// Redis refused the write (an error reply such as `-OOM` or `-READONLY`: 502), was
    /// down or timed out. The response was complete and cacheable, but it is not in Redis.
    Refused {
        /// The store subrequest's status.
        status: usize,
    },
    /// No store ran because srcache's fetch found the entry in Redis (200) and sent it from
    /// there: another request stored it after this one's lookup (e.g. a filler whose client
    /// left after its store went out). The entry is in Redis, though not through this request.
    Found,
}

impl StoreOutcome {
    /// The outcome from the store subrequest's status, if one ran, and whether srcache's fetch
    /// answered an entry from Redis.
    pub fn of(store_status: Option<usize>, found: bool) -> Self {
        match store_status {
            None if found => StoreOutcome::Found,
            None => StoreOutcome::NotRun,
            Some(200..=299) => StoreOutcome::Stored,
            Some(status) => StoreOutcome::Refused { status },
        }
    }

    /// Whether this request's store put the response in Redis (not `Found`: nothing went
    /// to Redis through it).
    pub fn is_stored(self) -> bool {
        self == StoreOutcome::Stored
    }
}

/// How srcache's fetch of an entry the layer expected ended, when srcache missed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchEnd {
    /// Redis's own answer without the entry (HttpRedis 404, a nil reply).
    Missed,
    /// The fetch location failed after Redis answered (an error reply such as `-WRONGTYPE`,
    /// or a 5xx of the location's own): not Redis away, and nothing said of the entry.
    Refused,
    /// Redis gave no answer: no connection, a broken one, or a timeout. Redis is away.
    Unreachable,
}

/// How the fetch ended, from its response header's status and, when it had an upstream, the
/// upstream's final status and whether any byte came back from it. (srcache's
/// post-subrequest handler swallows a failed upstream's error page: no header is sent then,
/// and the upstream's status is what says 502 or 504.)
pub fn fetch_end(header_status: usize, upstream: Option<(usize, bool)>) -> FetchEnd {
    match upstream {
        Some((504, _)) => FetchEnd::Unreachable,
        Some((status, false)) if status >= 500 => FetchEnd::Unreachable,
        Some((status, true)) if status >= 500 => FetchEnd::Refused,
        _ if header_status >= 500 => FetchEnd::Refused,
        _ => FetchEnd::Missed,
    }
}

/// srcache missed an entry the layer expected: whether the copy of the key kept on this node
/// (hot tier or local zone) goes too. An entry gone from Redis (deleted, evicted) makes the
/// copy suspect; a failed fetch says nothing of the entry, and while Redis is, or was just,
/// away the copy is what answers (another worker may have just kept it).
pub fn miss_forgets_node_copy(fetch: FetchEnd, redis_recently_away: bool) -> bool {
    fetch == FetchEnd::Missed && !redis_recently_away
}

/// A fill counts only when its answer was stored: "filled" is an outcome in Redis, not a
/// status code.
pub fn fill_end(response_status: usize, connection_error: bool, store: StoreOutcome) -> FillEnd {
    match store {
        StoreOutcome::Stored => FillEnd::Stored,
        // The entry is in Redis: waiters are served from the cache, and a pass mark would
        // only keep the key from collapsing (and the hot tier) for nothing.
        StoreOutcome::Found => FillEnd::Stored,
        // srcache stores only a complete answer: it was complete, whoever left after it.
        StoreOutcome::Refused { .. } => FillEnd::NotStored,
        StoreOutcome::NotRun if connection_error || response_status == 0 => FillEnd::Abandoned,
        StoreOutcome::NotRun => FillEnd::NotStored,
    }
}

/// The value of `exptime=` in srcache's store subrequest's arguments (the usual
/// `key=...&exptime=N`): how long the stored copy lives, the fresh period included.
pub fn store_exptime(args: &[u8]) -> Option<u64> {
    args.split(|&b| b == b'&')
        .find_map(|a| a.strip_prefix(b"exptime="))
        .and_then(|v| core::str::from_utf8(v).ok()?.parse().ok())
}

/// What a request does after asking for a key's fill lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLock {
    /// It holds the lock: go to the backend (MISS); srcache stores the answer.
    Fill,
    /// A fill finished since this request's lookup started: srcache serves what it stored.
    Served,
    /// Another request fills: wait for it at most `budget_ms` more.
    Wait {
        /// The holder's token, to tell its release from a new holder.
        holder: u64,
        /// What is left of the request's wait budget.
        budget_ms: u64,
    },
    /// The wait budget is spent: go on without the fill (TIMEOUT).
    GiveUp,
    /// No collapsing possible (zone full or unusable): go to the backend alone.
    Alone,
    /// The key's last fill was not stored and its pass mark lasts: go to the backend now,
    /// in parallel with the others (PASS).
    Pass,
}

impl AfterLock {
    /// The status a request ends with when it stops here (`None` while it waits).
    pub fn status(self) -> Option<CacheStatus> {
        match self {
            AfterLock::Fill | AfterLock::Alone => Some(CacheStatus::Miss),
            AfterLock::Pass => Some(CacheStatus::Pass),
            AfterLock::Served => Some(CacheStatus::Collapsed),
            AfterLock::GiveUp => Some(CacheStatus::Timeout),
            AfterLock::Wait { .. } => None,
        }
    }
}

/// The step after a fill-lock attempt. `outcome` is `None` when the zone could not be used;
/// `deadline_ms` is when the request stops waiting, however often it is woken.
pub fn after_lock(outcome: Option<LockAttempt>, now_ms: u64, deadline_ms: u64) -> AfterLock {
    match outcome {
        Some(LockAttempt::Acquired(_)) => AfterLock::Fill,
        Some(LockAttempt::RecentlyFilled) => AfterLock::Served,
        Some(LockAttempt::Pass { .. }) => AfterLock::Pass,
        Some(LockAttempt::Held(info)) => {
            let budget_ms = deadline_ms.saturating_sub(now_ms);
            if budget_ms == 0 {
                AfterLock::GiveUp
            } else {
                AfterLock::Wait {
                    holder: info.token.get(),
                    budget_ms,
                }
            }
        }
        Some(LockAttempt::Full) | None => AfterLock::Alone,
    }
}

/// Whether waiters of a key waiting for `waited_token` must be woken, given the lock seen
/// now: it was released, or taken over by someone else.
pub fn lock_moved(now_holder: Option<LockInfo>, waited_token: u64) -> bool {
    now_holder.is_none_or(|h| h.token.get() != waited_token)
}

/// How long a refresh lock may live. It vouches that the stale copy is still there (stale
/// hits skip the TTL lookup while it is held), so unless PERSIST keeps the copy it expires
/// with the copy at the latest.
pub fn refresh_lock_ms(ttl_secs: i64, persisted: bool, lock_exptime_ms: u64) -> u64 {
    if ttl_secs >= 0 && !persisted {
        lock_exptime_ms.min((ttl_secs as u64).max(1) * 1000)
    } else {
        lock_exptime_ms
    }
}

/// The first backoff after a failed refresh of a key; each further failure doubles it.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// The longest backoff.
pub const BACKOFF_CAP_MS: u64 = 60_000;

/// How long a key is left alone after its `failures`-th failed refresh in a row: no new
/// refresh (stale hits are served without one), and in the error grace band the stored copy
/// is served at once. `base`, twice that, four times, ... up to `cap`
/// (`stale_cache_refresh_backoff`, 1 s and 60 s by default).
pub fn backoff_ms(failures: u8, base_ms: u64, cap_ms: u64) -> u64 {
    let doublings = u32::from(failures.max(1) - 1).min(32);
    base_ms.saturating_mul(1u64 << doublings).min(cap_ms)
}

/// How a refresh (a request of the module's own to this nginx) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshEnd {
    /// It answered 2xx: the new entry is stored.
    Stored,
    /// It answered 2xx, but Redis refused its store (its request marked the key with the
    /// refresh backoff already).
    NotStored,
    /// It answered this status (not 2xx).
    Status(u16),
    /// It did not answer in time.
    Timeout,
    /// It could not be sent or its connection failed.
    Error,
}

/// Which refresh failures let the error grace band serve the stored copy, as in
/// `proxy_cache_use_stale` (`stale_cache_use_stale`). A bit per word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UseStale(u16);

impl UseStale {
    const WORDS: [(&'static str, u16); 9] = [
        ("error", 1),
        ("timeout", 1 << 1),
        ("http_500", 1 << 2),
        ("http_502", 1 << 3),
        ("http_503", 1 << 4),
        ("http_504", 1 << 5),
        ("http_403", 1 << 6),
        ("http_404", 1 << 7),
        ("http_429", 1 << 8),
    ];

    /// `error timeout http_500 http_502 http_503 http_504`.
    pub const DEFAULT: UseStale = UseStale(0b11_1111);
    /// `off`.
    pub const OFF: UseStale = UseStale(0);

    /// Parses the directive's words; `off` alone turns it off.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a [u8]>) -> Result<UseStale, String> {
        let mut bits = 0;
        let mut off = false;
        for word in words {
            if word == b"off" {
                off = true;
                continue;
            }
            let Some((_, bit)) = Self::WORDS.iter().find(|(w, _)| w.as_bytes() == word) else {
                return Err(format!(
                    "unknown value \"{}\" (expected off, or any of error, timeout, http_500, \
                     http_502, http_503, http_504, http_403, http_404, http_429)",
                    String::from_utf8_lossy(word)
                ));
            };
            bits |= bit;
        }
        match (off, bits) {
            (true, 0) => Ok(UseStale::OFF),
            (true, _) => Err("\"off\" cannot be combined with other values".into()),
            (false, 0) => Err("expected at least one value".into()),
            (false, _) => Ok(UseStale(bits)),
        }
    }

    /// Whether the stored copy stands in for a refresh that ended like this. A refresh goes
    /// through this nginx's proxy, so a backend that refuses connections answers 502 and one
    /// that times out 504: `error` and `timeout` cover those too.
    pub fn covers(self, end: RefreshEnd) -> bool {
        let has = |word: &str| {
            Self::WORDS
                .iter()
                .any(|(w, bit)| *w == word && self.0 & bit != 0)
        };
        match end {
            RefreshEnd::Stored | RefreshEnd::NotStored => false,
            RefreshEnd::Error => has("error"),
            RefreshEnd::Timeout => has("timeout"),
            RefreshEnd::Status(502) => has("http_502") || has("error"),
            RefreshEnd::Status(504) => has("http_504") || has("timeout"),
            RefreshEnd::Status(code) => has(&format!("http_{code}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exptime_from_store_arguments() {
        assert_eq!(store_exptime(b"key=a%20b&exptime=105"), Some(105));
        assert_eq!(store_exptime(b"exptime=7"), Some(7));
        assert_eq!(store_exptime(b"key=x"), None);
        assert_eq!(store_exptime(b"key=x&exptime=oops"), None);
    }

    use super::*;
    use crate::locktable::{LockKind, TakeOver};
    use std::num::NonZeroU64;

    fn held(token: u64) -> LockInfo {
        LockInfo {
            kind: LockKind::Fill,
            token: NonZeroU64::new(token).unwrap(),
            owner_pid: 1,
            expires_at_ms: 1_000,
        }
    }

    #[test]
    fn a_fill_counts_when_it_was_stored() {
        let of = |status| StoreOutcome::of(status, false);
        assert_eq!(fill_end(200, false, of(Some(200))), FillEnd::Stored);
        assert_eq!(fill_end(302, false, of(Some(201))), FillEnd::Stored);
        // A store that finished counts even if the client left after it.
        assert_eq!(fill_end(200, true, of(Some(200))), FillEnd::Stored);
        // Complete answers that were not stored: uncacheable, or the store failed.
        assert_eq!(fill_end(200, false, of(None)), FillEnd::NotStored);
        assert_eq!(fill_end(404, false, of(None)), FillEnd::NotStored);
        assert_eq!(fill_end(500, false, of(None)), FillEnd::NotStored);
        assert_eq!(fill_end(200, false, of(Some(502))), FillEnd::NotStored);
        // A refused store had a complete answer, even if the client left after it.
        assert_eq!(fill_end(200, true, of(Some(502))), FillEnd::NotStored);
        // The filler did not finish its answer: someone else must fill.
        assert_eq!(fill_end(200, true, of(None)), FillEnd::Abandoned);
        assert_eq!(fill_end(0, false, of(None)), FillEnd::Abandoned);
        // srcache's fetch found the entry (stored since the lookup): nothing to store, and
        // no pass mark, whether or not the client stayed.
        let found = StoreOutcome::of(None, true);
        assert_eq!(found, StoreOutcome::Found);
        assert_eq!(fill_end(200, false, found), FillEnd::Stored);
        assert_eq!(fill_end(200, true, found), FillEnd::Stored);
        // A store that ran is what counts.
        assert_eq!(
            fill_end(200, false, StoreOutcome::of(Some(502), true)),
            FillEnd::NotStored
        );
    }

    #[test]
    fn store_outcomes() {
        assert_eq!(StoreOutcome::of(None, false), StoreOutcome::NotRun);
        assert_eq!(StoreOutcome::of(Some(204), false), StoreOutcome::Stored);
        assert_eq!(
            StoreOutcome::of(Some(502), false),
            StoreOutcome::Refused { status: 502 }
        );
        assert!(StoreOutcome::of(Some(200), false).is_stored());
        assert!(!StoreOutcome::of(Some(404), false).is_stored());
        // Found in Redis, not stored through this request.
        assert!(!StoreOutcome::of(None, true).is_stored());
    }

    #[test]
    fn a_failed_fetch_is_told_from_a_miss() {
        // No response header: the upstream says it. Nothing came back: Redis is away.
        assert_eq!(fetch_end(0, Some((502, false))), FetchEnd::Unreachable);
        assert_eq!(fetch_end(0, Some((504, false))), FetchEnd::Unreachable);
        assert_eq!(fetch_end(0, Some((504, true))), FetchEnd::Unreachable);
        // Redis answered, with an error reply.
        assert_eq!(fetch_end(0, Some((502, true))), FetchEnd::Refused);
        assert_eq!(fetch_end(502, None), FetchEnd::Refused);
        // A miss: HttpRedis's 404 for a nil reply, or a 200 srcache could not use.
        assert_eq!(fetch_end(404, Some((404, true))), FetchEnd::Missed);
        assert_eq!(fetch_end(200, Some((200, true))), FetchEnd::Missed);
        // Answered by this node (no upstream).
        assert_eq!(fetch_end(200, None), FetchEnd::Missed);
        assert_eq!(fetch_end(0, None), FetchEnd::Missed);
    }

    #[test]
    fn a_miss_forgets_the_node_copy_only_when_the_entry_is_gone() {
        // Redis answered without the entry, and this worker has not seen Redis away.
        assert!(miss_forgets_node_copy(FetchEnd::Missed, false));
        // A failed fetch (another worker may have just kept the copy), or Redis away.
        for fetch in [FetchEnd::Refused, FetchEnd::Unreachable] {
            assert!(!miss_forgets_node_copy(fetch, false));
        }
        for fetch in [FetchEnd::Missed, FetchEnd::Refused, FetchEnd::Unreachable] {
            assert!(!miss_forgets_node_copy(fetch, true));
        }
    }

    #[test]
    fn after_lock_steps() {
        let acquired = LockAttempt::Acquired(TakeOver::Free);
        assert_eq!(after_lock(Some(acquired), 10, 20), AfterLock::Fill);
        let from_dead = LockAttempt::Acquired(TakeOver::DeadOwner { pid: 42 });
        assert_eq!(after_lock(Some(from_dead), 10, 20), AfterLock::Fill);
        assert_eq!(
            after_lock(Some(LockAttempt::RecentlyFilled), 10, 20),
            AfterLock::Served
        );
        // A pass mark sends the request on at once, whatever its wait budget.
        let pass = LockAttempt::Pass { left_ms: 500 };
        assert_eq!(after_lock(Some(pass), 10, 20), AfterLock::Pass);
        assert_eq!(after_lock(Some(pass), 30, 20), AfterLock::Pass);
        assert_eq!(
            after_lock(Some(LockAttempt::Held(held(7))), 10, 25),
            AfterLock::Wait {
                holder: 7,
                budget_ms: 15
            }
        );
        // The budget is one for all waits of a request: spent means give up, not wait again.
        assert_eq!(
            after_lock(Some(LockAttempt::Held(held(7))), 25, 25),
            AfterLock::GiveUp
        );
        assert_eq!(
            after_lock(Some(LockAttempt::Held(held(7))), 30, 25),
            AfterLock::GiveUp
        );
        assert_eq!(
            after_lock(Some(LockAttempt::Full), 10, 20),
            AfterLock::Alone
        );
        assert_eq!(after_lock(None, 10, 20), AfterLock::Alone);
    }

    #[test]
    fn statuses_of_the_steps() {
        assert_eq!(AfterLock::Fill.status(), Some(CacheStatus::Miss));
        assert_eq!(AfterLock::Alone.status(), Some(CacheStatus::Miss));
        assert_eq!(AfterLock::Served.status(), Some(CacheStatus::Collapsed));
        assert_eq!(AfterLock::Pass.status(), Some(CacheStatus::Pass));
        assert_eq!(AfterLock::GiveUp.status(), Some(CacheStatus::Timeout));
        let wait = AfterLock::Wait {
            holder: 1,
            budget_ms: 1,
        };
        assert_eq!(wait.status(), None);
    }

    #[test]
    fn waiters_wake_on_release_or_takeover_only() {
        assert!(lock_moved(None, 7));
        assert!(lock_moved(Some(held(8)), 7));
        assert!(!lock_moved(Some(held(7)), 7));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let default = |n| backoff_ms(n, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
        assert_eq!(default(0), 1_000);
        assert_eq!(default(1), 1_000);
        assert_eq!(default(2), 2_000);
        assert_eq!(default(3), 4_000);
        assert_eq!(default(6), 32_000);
        assert_eq!(default(7), 60_000);
        assert_eq!(default(255), 60_000);
        assert_eq!(backoff_ms(40, u64::MAX / 2, u64::MAX), u64::MAX);
        assert_eq!(backoff_ms(3, 50, 50), 50);
        assert_eq!(backoff_ms(3, 0, 60_000), 0);
    }

    #[test]
    fn use_stale_words() {
        let parse = |s: &str| UseStale::parse(s.split(' ').map(str::as_bytes));
        let d = UseStale::DEFAULT;
        assert_eq!(
            parse("error timeout http_500 http_502 http_503 http_504"),
            Ok(d)
        );
        assert!(d.covers(RefreshEnd::Error));
        assert!(d.covers(RefreshEnd::Timeout));
        for code in [500, 502, 503, 504] {
            assert!(d.covers(RefreshEnd::Status(code)), "{code}");
        }
        assert!(!d.covers(RefreshEnd::Status(404)));
        assert!(!d.covers(RefreshEnd::Status(400)));
        assert!(!d.covers(RefreshEnd::Stored));
        let only_404 = parse("http_404").unwrap();
        assert!(only_404.covers(RefreshEnd::Status(404)));
        assert!(!only_404.covers(RefreshEnd::Error));
        // The proxy's answers to connection errors and timeouts count as those.
        let conn = parse("error timeout").unwrap();
        assert!(conn.covers(RefreshEnd::Status(502)));
        assert!(conn.covers(RefreshEnd::Status(504)));
        assert!(!conn.covers(RefreshEnd::Status(500)));
        assert_eq!(parse("off"), Ok(UseStale::OFF));
        assert!(!UseStale::OFF.covers(RefreshEnd::Error));
        assert!(parse("off error").is_err());
        assert!(parse("http_418").unwrap_err().contains("http_418"));
    }

    #[test]
    fn refresh_lock_lives_no_longer_than_the_copy() {
        assert_eq!(refresh_lock_ms(3, false, 30_000), 3_000);
        assert_eq!(refresh_lock_ms(0, false, 30_000), 1_000);
        assert_eq!(refresh_lock_ms(100, false, 30_000), 30_000);
        // PERSIST keeps the copy, and a key without expiry (-1) has no end to respect.
        assert_eq!(refresh_lock_ms(3, true, 30_000), 30_000);
        assert_eq!(refresh_lock_ms(-1, false, 30_000), 30_000);
    }
}
