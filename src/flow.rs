//! The request flow's decisions, free of nginx: what a request does on its first look at the
//! lock zone, after a fill-lock attempt (on a TTL answer, a wake-up or srcache's miss), and
//! on the fleet lease's answer. The stale layer's driver (`stale::driver`) gathers the facts,
//! calls these, and carries out what they return.

use crate::collapse::AfterLock;
use crate::lease::Answer;
use crate::locktable::LockKind;
use crate::policy::CacheStatus;

/* ------------------------------------------------------------ first look */

/// What the lock zone says of a key before any Redis lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneFacts {
    /// The freshness memo says fresh until then (ms).
    pub memo_fresh_until: Option<u64>,
    /// The key is passed for this many ms more (its last fill stored nothing).
    pub pass_left_ms: Option<u64>,
    /// A lock on the key: its kind and holder's token.
    pub lock: Option<(LockKind, u64)>,
}

/// The first step of a request the layer handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstLook {
    /// Fresh by the memo: srcache serves it, no lookup.
    FreshByMemo { until_ms: u64 },
    /// Passed: straight to the backend, no lookup, no lock.
    Passed { left_ms: u64 },
    /// A fill is under way, so the key is missing: wait for it without asking Redis.
    WaitForFill { holder: u64 },
    /// A refresh is under way, so the key is stale and its copy outlives the refresh lock.
    StaleRefreshRunning,
    /// Ask Redis for the key's TTL.
    LookUp,
}

/// The first step, from what the zone knows.
pub fn first_look(facts: ZoneFacts) -> FirstLook {
    if let Some(until_ms) = facts.memo_fresh_until {
        return FirstLook::FreshByMemo { until_ms };
    }
    if let Some(left_ms) = facts.pass_left_ms {
        return FirstLook::Passed { left_ms };
    }
    match facts.lock {
        Some((LockKind::Fill, holder)) => FirstLook::WaitForFill { holder },
        Some(_) => FirstLook::StaleRefreshRunning,
        None => FirstLook::LookUp,
    }
}

/* ------------------------------------------------------------ fill or wait */

/// How a request came to ask for a key's fill lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Redis said the key is missing (`grace: false`) or in its error grace band (`true`),
    /// possibly after waits that followed that answer.
    Lookup { grace: bool },
    /// It waited for a fill it found in the zone, without a lookup: that fill may have been a
    /// grace-band refresh.
    WaitedWithoutLookup,
    /// srcache's fetch missed an entry the layer expected.
    SrcacheMissed,
}

impl Reached {
    /// The key may be in its error grace band: a live error mark then means its backend just
    /// failed and the stored copy is there to serve (only refreshes of stored entries leave
    /// error marks).
    pub fn may_be_grace(self) -> bool {
        matches!(
            self,
            Reached::Lookup { grace: true } | Reached::WaitedWithoutLookup
        )
    }

    fn grace(self) -> bool {
        matches!(self, Reached::Lookup { grace: true })
    }
}

/// What a request does after asking for a key's fill lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillStep {
    /// The key's backend failed moments ago and the copy is in its grace band: serve the
    /// stored copy (STALE-ERROR) without asking the backend again.
    ServeStoredFailing,
    /// Grace band, lock taken: ask the backend through a refresh sent now, and wait for it.
    RefreshNow,
    /// Grace band, no answer in time or no lock to wait on: serve the stored copy.
    ServeStored,
    /// Lock taken: go to the backend (MISS), after the fleet lease if one is configured.
    Fill,
    /// A fill stored the entry meanwhile: srcache serves it; `refetch` when srcache's fetch
    /// already ran for this request (it goes through its location again).
    Served { refetch: bool },
    /// The key is passed: to the backend in parallel (PASS).
    Pass,
    /// Another request fills: wait for it.
    Wait { holder: u64, budget_ms: u64 },
    /// The wait budget is spent (TIMEOUT).
    GiveUp,
    /// No collapsing possible: to the backend alone (MISS); `zone_full` tells the zone had no
    /// room (else it was unusable).
    Alone { zone_full: bool },
}

impl FillStep {
    /// The status the request ends with at this step (`None`: it goes on elsewhere).
    pub fn status(self) -> Option<CacheStatus> {
        match self {
            FillStep::ServeStoredFailing | FillStep::ServeStored => Some(CacheStatus::StaleError),
            FillStep::Fill | FillStep::Alone { .. } => Some(CacheStatus::Miss),
            FillStep::Served { .. } => Some(CacheStatus::Collapsed),
            FillStep::Pass => Some(CacheStatus::Pass),
            FillStep::GiveUp => Some(CacheStatus::Timeout),
            FillStep::RefreshNow | FillStep::Wait { .. } => None,
        }
    }
}

/// The step after a fill-lock attempt. `failing`: a live error mark was found (only looked
/// for when `reached.may_be_grace()`, and then no lock was asked for); `next` is
/// `collapse::after_lock`'s verdict on the attempt; `zone_usable`: the attempt reached the
/// table.
pub fn fill_step(reached: Reached, failing: bool, next: AfterLock, zone_usable: bool) -> FillStep {
    if failing && reached.may_be_grace() {
        return FillStep::ServeStoredFailing;
    }
    let grace = reached.grace();
    match next {
        AfterLock::Fill if grace => FillStep::RefreshNow,
        AfterLock::GiveUp | AfterLock::Alone if grace => FillStep::ServeStored,
        AfterLock::Fill => FillStep::Fill,
        AfterLock::Served => FillStep::Served {
            refetch: reached == Reached::SrcacheMissed,
        },
        AfterLock::Pass => FillStep::Pass,
        AfterLock::Wait { holder, budget_ms } => FillStep::Wait { holder, budget_ms },
        AfterLock::GiveUp => FillStep::GiveUp,
        AfterLock::Alone => FillStep::Alone {
            zone_full: zone_usable,
        },
    }
}

/* ------------------------------------------------------------ fleet lease */

/// What a filling request does on the fleet lease's answer to `fill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFill {
    /// The lease is this node's: fill, and keep the lease while the zone lock is held.
    FillKeeping,
    /// The lease location failed: fill on this node's own collapsing (MISS).
    FillUnleased,
    /// Another node stored the entry: release the zone lock as stored (COLLAPSED);
    /// `refetch` when srcache's fetch already ran for this request.
    Collapsed { refetch: bool },
    /// The key is passed fleet-wide: release the zone lock with a pass mark (PASS).
    Passed,
    /// Another node fills: poll again in `ms`.
    Poll { ms: u64 },
    /// Another node has been filling past this request's wait budget: fill here too.
    FillAfterTimeout,
}

/// The step on the lease's answer to `fill`; `poll_ms` is the next poll interval.
pub fn lease_fill(
    answer: Option<Answer>,
    now_ms: u64,
    deadline_ms: u64,
    poll_ms: u64,
    after_fetch: bool,
) -> LeaseFill {
    match answer {
        None => LeaseFill::FillUnleased,
        Some(Answer::Taken) => LeaseFill::FillKeeping,
        Some(Answer::Stored) => LeaseFill::Collapsed {
            refetch: after_fetch,
        },
        Some(Answer::Passed) => LeaseFill::Passed,
        Some(Answer::Held) if now_ms >= deadline_ms => LeaseFill::FillAfterTimeout,
        Some(Answer::Held) => LeaseFill::Poll {
            ms: poll_ms.min(deadline_ms - now_ms).max(1),
        },
    }
}

/// What a refreshing request does on the fleet lease's answer to `refresh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseRefresh {
    /// The lease is this node's: refresh, keeping the lease while the refresh lock is held.
    RefreshKeeping,
    /// The lease location failed: refresh on this node's own lock.
    RefreshUnleased,
    /// Another node refreshes: serve stale, and hand the refresh lock over to its expiry.
    HandOver,
}

pub fn lease_refresh(answer: Option<Answer>) -> LeaseRefresh {
    match answer {
        Some(Answer::Taken) => LeaseRefresh::RefreshKeeping,
        None => LeaseRefresh::RefreshUnleased,
        Some(_) => LeaseRefresh::HandOver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LOCK: ZoneFacts = ZoneFacts {
        memo_fresh_until: None,
        pass_left_ms: None,
        lock: None,
    };

    #[test]
    fn first_look_prefers_memo_then_pass_then_locks() {
        let all = ZoneFacts {
            memo_fresh_until: Some(9),
            pass_left_ms: Some(5),
            lock: Some((LockKind::Fill, 3)),
        };
        assert_eq!(first_look(all), FirstLook::FreshByMemo { until_ms: 9 });
        let no_memo = ZoneFacts {
            memo_fresh_until: None,
            ..all
        };
        assert_eq!(first_look(no_memo), FirstLook::Passed { left_ms: 5 });
        let fill = ZoneFacts {
            lock: Some((LockKind::Fill, 3)),
            ..NO_LOCK
        };
        assert_eq!(first_look(fill), FirstLook::WaitForFill { holder: 3 });
        let refresh = ZoneFacts {
            lock: Some((LockKind::Refresh, 3)),
            ..NO_LOCK
        };
        assert_eq!(first_look(refresh), FirstLook::StaleRefreshRunning);
        assert_eq!(first_look(NO_LOCK), FirstLook::LookUp);
    }

    const MISSING: Reached = Reached::Lookup { grace: false };
    const GRACE: Reached = Reached::Lookup { grace: true };

    #[test]
    fn a_failing_key_in_the_grace_band_serves_the_stored_copy() {
        for reached in [GRACE, Reached::WaitedWithoutLookup] {
            assert_eq!(
                fill_step(reached, true, AfterLock::Fill, true),
                FillStep::ServeStoredFailing
            );
        }
        // Outside the band an error mark says nothing about a stored copy.
        for reached in [MISSING, Reached::SrcacheMissed] {
            assert!(!reached.may_be_grace());
            assert_eq!(
                fill_step(reached, true, AfterLock::Fill, true),
                FillStep::Fill
            );
        }
    }

    #[test]
    fn the_grace_band_refreshes_or_serves_stored() {
        assert_eq!(
            fill_step(GRACE, false, AfterLock::Fill, true),
            FillStep::RefreshNow
        );
        assert_eq!(
            fill_step(GRACE, false, AfterLock::GiveUp, true),
            FillStep::ServeStored
        );
        assert_eq!(
            fill_step(GRACE, false, AfterLock::Alone, false),
            FillStep::ServeStored
        );
        // Waiting and being served work as outside the band.
        let wait = AfterLock::Wait {
            holder: 7,
            budget_ms: 50,
        };
        assert_eq!(
            fill_step(GRACE, false, wait, true),
            FillStep::Wait {
                holder: 7,
                budget_ms: 50
            }
        );
        assert_eq!(
            fill_step(GRACE, false, AfterLock::Served, true),
            FillStep::Served { refetch: false }
        );
    }

    #[test]
    fn every_lock_verdict_outside_the_band() {
        let cases = [
            (AfterLock::Fill, FillStep::Fill),
            (AfterLock::Served, FillStep::Served { refetch: false }),
            (AfterLock::Pass, FillStep::Pass),
            (AfterLock::GiveUp, FillStep::GiveUp),
            (
                AfterLock::Wait {
                    holder: 1,
                    budget_ms: 2,
                },
                FillStep::Wait {
                    holder: 1,
                    budget_ms: 2,
                },
            ),
        ];
        for (next, want) in cases {
            assert_eq!(fill_step(MISSING, false, next, true), want);
            assert_eq!(
                fill_step(Reached::WaitedWithoutLookup, false, next, true),
                want
            );
        }
        assert_eq!(
            fill_step(MISSING, false, AfterLock::Alone, true),
            FillStep::Alone { zone_full: true }
        );
        assert_eq!(
            fill_step(MISSING, false, AfterLock::Alone, false),
            FillStep::Alone { zone_full: false }
        );
    }

    #[test]
    fn served_after_srcache_missed_fetches_again() {
        assert_eq!(
            fill_step(Reached::SrcacheMissed, false, AfterLock::Served, true),
            FillStep::Served { refetch: true }
        );
    }

    #[test]
    fn statuses_of_the_steps() {
        assert_eq!(FillStep::Fill.status(), Some(CacheStatus::Miss));
        assert_eq!(
            FillStep::ServeStored.status(),
            Some(CacheStatus::StaleError)
        );
        assert_eq!(
            FillStep::ServeStoredFailing.status(),
            Some(CacheStatus::StaleError)
        );
        assert_eq!(
            FillStep::Served { refetch: true }.status(),
            Some(CacheStatus::Collapsed)
        );
        assert_eq!(FillStep::GiveUp.status(), Some(CacheStatus::Timeout));
        assert_eq!(FillStep::Pass.status(), Some(CacheStatus::Pass));
        assert_eq!(FillStep::RefreshNow.status(), None);
        assert_eq!(
            FillStep::Wait {
                holder: 1,
                budget_ms: 1
            }
            .status(),
            None
        );
    }

    #[test]
    fn lease_answers_for_a_fill() {
        assert_eq!(
            lease_fill(Some(Answer::Taken), 0, 10, 5, false),
            LeaseFill::FillKeeping
        );
        assert_eq!(lease_fill(None, 0, 10, 5, false), LeaseFill::FillUnleased);
        assert_eq!(
            lease_fill(Some(Answer::Stored), 0, 10, 5, true),
            LeaseFill::Collapsed { refetch: true }
        );
        assert_eq!(
            lease_fill(Some(Answer::Passed), 0, 10, 5, false),
            LeaseFill::Passed
        );
        assert_eq!(
            lease_fill(Some(Answer::Held), 0, 10, 50, false),
            LeaseFill::Poll { ms: 10 }
        );
        assert_eq!(
            lease_fill(Some(Answer::Held), 8, 10, 1, false),
            LeaseFill::Poll { ms: 1 }
        );
        assert_eq!(
            lease_fill(Some(Answer::Held), 10, 10, 5, false),
            LeaseFill::FillAfterTimeout
        );
    }

    #[test]
    fn lease_answers_for_a_refresh() {
        assert_eq!(
            lease_refresh(Some(Answer::Taken)),
            LeaseRefresh::RefreshKeeping
        );
        assert_eq!(lease_refresh(None), LeaseRefresh::RefreshUnleased);
        assert_eq!(lease_refresh(Some(Answer::Held)), LeaseRefresh::HandOver);
        assert_eq!(lease_refresh(Some(Answer::Stored)), LeaseRefresh::HandOver);
    }
}
