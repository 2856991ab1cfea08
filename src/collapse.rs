//! The rules of request collapsing, as pure functions: when a fill counts, what a request
//! does after trying the fill lock (also after being woken), when waiters are woken, and how
//! long a refresh lock may live. The nginx layer (`stale::`) only carries them out.

use crate::locktable::{LockInfo, LockOutcome};
use crate::policy::CacheStatus;

/// Whether a fill's end counts as "stored" for its waiters: they are then served from the
/// cache (COLLAPSED); otherwise one of them fills in its place.
///
/// Today a fill counts when its response was a 2xx and the client connection did not fail
/// (srcache stores only complete 2xx responses by default).
pub fn fill_counts(status: usize, connection_error: bool) -> bool {
    (200..300).contains(&status) && !connection_error
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
}

impl AfterLock {
    /// The status a request ends with when it stops here (`None` while it waits).
    pub fn status(self) -> Option<CacheStatus> {
        match self {
            AfterLock::Fill | AfterLock::Alone => Some(CacheStatus::Miss),
            AfterLock::Served => Some(CacheStatus::Collapsed),
            AfterLock::GiveUp => Some(CacheStatus::Timeout),
            AfterLock::Wait { .. } => None,
        }
    }
}

/// The step after a fill-lock attempt. `outcome` is `None` when the zone could not be used;
/// `deadline_ms` is when the request stops waiting, however often it is woken.
pub fn after_lock(outcome: Option<LockOutcome>, now_ms: u64, deadline_ms: u64) -> AfterLock {
    match outcome {
        Some(LockOutcome::Acquired { .. }) => AfterLock::Fill,
        Some(LockOutcome::RecentlyFilled) => AfterLock::Served,
        Some(LockOutcome::Held(info)) => {
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
        Some(LockOutcome::Full) | None => AfterLock::Alone,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locktable::LockKind;
    use std::num::NonZeroU64;

    fn held(token: u64) -> LockInfo {
        LockInfo {
            kind: LockKind::Fill,
            token: NonZeroU64::new(token).unwrap(),
            expires_at_ms: 1_000,
        }
    }

    #[test]
    fn a_fill_counts_for_complete_2xx_only() {
        assert!(fill_counts(200, false));
        assert!(fill_counts(204, false));
        assert!(!fill_counts(200, true));
        assert!(!fill_counts(404, false));
        assert!(!fill_counts(500, false));
        assert!(!fill_counts(0, false));
        assert!(!fill_counts(302, false));
    }

    #[test]
    fn after_lock_steps() {
        let acquired = LockOutcome::Acquired {
            took_over_expired: false,
        };
        assert_eq!(after_lock(Some(acquired), 10, 20), AfterLock::Fill);
        assert_eq!(
            after_lock(Some(LockOutcome::RecentlyFilled), 10, 20),
            AfterLock::Served
        );
        assert_eq!(
            after_lock(Some(LockOutcome::Held(held(7))), 10, 25),
            AfterLock::Wait {
                holder: 7,
                budget_ms: 15
            }
        );
        // The budget is one for all waits of a request: spent means give up, not wait again.
        assert_eq!(
            after_lock(Some(LockOutcome::Held(held(7))), 25, 25),
            AfterLock::GiveUp
        );
        assert_eq!(
            after_lock(Some(LockOutcome::Held(held(7))), 30, 25),
            AfterLock::GiveUp
        );
        assert_eq!(
            after_lock(Some(LockOutcome::Full), 10, 20),
            AfterLock::Alone
        );
        assert_eq!(after_lock(None, 10, 20), AfterLock::Alone);
    }

    #[test]
    fn statuses_of_the_steps() {
        assert_eq!(AfterLock::Fill.status(), Some(CacheStatus::Miss));
        assert_eq!(AfterLock::Alone.status(), Some(CacheStatus::Miss));
        assert_eq!(AfterLock::Served.status(), Some(CacheStatus::Collapsed));
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
    fn refresh_lock_lives_no_longer_than_the_copy() {
        assert_eq!(refresh_lock_ms(3, false, 30_000), 3_000);
        assert_eq!(refresh_lock_ms(0, false, 30_000), 1_000);
        assert_eq!(refresh_lock_ms(100, false, 30_000), 30_000);
        // PERSIST keeps the copy, and a key without expiry (-1) has no end to respect.
        assert_eq!(refresh_lock_ms(3, true, 30_000), 30_000);
        assert_eq!(refresh_lock_ms(-1, false, 30_000), 30_000);
    }
}
