//! The steps while Redis is away (`crate::stale::local`): a copy kept on this node served,
//! or the key filled on this node (one request), its store kept here.

use ngx::ffi::ngx_http_request_t;

use super::fill_or_wait;
use super::refetch::refetch;
use crate::flow::Reached;
use crate::locktable::{LockAttempt, LockKind};
use crate::metrics::Counter;
use crate::nginx::util::now_ms;
use crate::nginx::zone::ZoneRef;
use crate::policy::{Action, CacheStatus};
use crate::stale::conf::StaleCacheConf;
use crate::stale::error::StaleError;
use crate::stale::local;
use crate::stale::state::{Next, Phase, RequestState};
use crate::stale::waiters::{lock_request, new_token, owner_alive, HeldLock};

/// The TTL lookup found Redis away (no answer, or a refusal that says it does not serve;
/// `local::saw` decided and recorded it): the request collapses on this node.
pub(super) fn lookup_away(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    error: StaleError,
) -> Next {
    crate::stale::metrics::error(state, req, error.kind_name());
    local::log_away(req);
    let zone = state.zone().expect("the zone is known before the lookup");
    go_local(state, req, scf, zone)
}

/// Redis answers again (or did not go away for every worker) but has no fresh entry for the
/// key (missing: the fill's store was refused; stale: its refresh could not store) while
/// this node kept a fresh copy from a fill while Redis was away: that copy serves its fresh
/// period (LOCAL), so the key costs one backend request per node per fresh period, not a
/// second one the moment Redis returns.
pub(super) fn served_kept_copy(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    action: &Action,
    now: u64,
) -> bool {
    matches!(
        action,
        Action::FillOrWait | Action::TryBackend | Action::ServeStale { .. }
    ) && local::recently_away(now)
        && local::enabled(req)
        && local::try_serve(state, req, 0, false) == local::Copy::Fresh
}

/// Redis is away: a copy kept on this node is served (LOCAL); otherwise the key is filled
/// under the fill lock as on a miss (its store is refused and kept here), or waited for.
pub(super) fn go_local(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    zone: ZoneRef,
) -> Next {
    match local::try_serve(state, req, 0, true) {
        local::Copy::Fresh => Next::Continue,
        // Stale: one request fills (its store kept here), the others are served the stale
        // copy at once instead of waiting for it.
        local::Copy::Stale => {
            if let Some(lock) = take_fill_lock(state, zone) {
                local::filling(state);
                state.filling(lock);
                zone.count(Counter::FillsStarted);
                state.finish(CacheStatus::Miss);
            }
            Next::Continue
        }
        local::Copy::None => {
            local::filling(state);
            fill_or_wait(state, req, scf, zone, now_ms())
        }
    }
}

/// The key's fill lock if it is free now (no waiting).
fn take_fill_lock(state: &RequestState, zone: ZoneRef) -> Option<HeldLock> {
    let settings = state.settings();
    let token = new_token();
    let lock = lock_request(LockKind::Fill, token, settings.lock_exptime_ms, 0);
    let key = settings.key.to_vec();
    let now = now_ms();
    match zone.with_key(&key, |t, fp| t.try_lock_as(fp, lock, now, owner_alive)) {
        Some(LockAttempt::Acquired(_)) => Some(HeldLock::new(zone, key, token)),
        _ => None,
    }
}

/// After a wake-up: the filler's store was refused (Redis away) and kept on this node: a copy
/// stored since this request began (after a wait), or any fresh one (srcache's fetch
/// skipped, Redis away). `None`: go on to the fill lock.
pub(super) fn served_after_wake(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
) -> Option<Next> {
    let since = match state.phase() {
        Phase::Waiting => Some(state.lookup_started()),
        _ if local::recently_away(now_ms()) => Some(0),
        _ => None,
    };
    if !since.is_some_and(|since| local::try_serve(state, req, since, false) == local::Copy::Fresh)
    {
        return None;
    }
    if state.reached() == Reached::SrcacheMissed {
        // srcache's fetch already ran for this request: let it fetch again.
        return Some(refetch(state, req, CacheStatus::Local));
    }
    Some(Next::Continue)
}
