//! Waiting for a fill: parking a request behind the lock's holder, and going on without it
//! when `$cache_lock_timeout` is over.

use ngx::ffi::ngx_http_request_t;

use super::super::refresh::{self, PendingRefresh};
use super::super::state::{Next, RequestState};
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, AGAIN};
use crate::nginx::zone::ZoneRef;
use crate::policy::CacheStatus;

/// Parks the request until the fill lock's `holder` releases it (or its wait budget ends).
pub(super) fn wait_for(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    zone: ZoneRef,
    holder: u64,
    budget: u64,
) {
    state.wait_for_fill(req, zone, holder, budget);
}

/// `$cache_lock_timeout` is over: go on without the fill (logged at warn, rate-limited).
pub fn give_up_waiting(state: &mut RequestState, req: &ngx_http_request_t) {
    state.finish(CacheStatus::Timeout);
    if let Some(zone) = state.zone() {
        zone.count(Counter::WaitTimeouts);
    }
    let key = &state.settings().key;
    debug!(
        request_log(req),
        "stale_cache: wait for \"{}\" timed out",
        Short(key)
    );
    log::limited(
        request_log(req),
        ngx::ffi::NGX_LOG_WARN,
        "lock-timeout",
        Every::Interval,
        format_args!(
            "stale_cache: waited $cache_lock_timeout for the request filling \"{}\"; going on \
             without it",
            Short(key)
        ),
    );
}

/// In the error grace band, the request holding the key's fill lock asks the backend through
/// a refresh sent now (the stored copy stays untouched in Redis meanwhile), and waits for it
/// like every other request of the key: when it ends, all are served the new copy if it was
/// stored, or the old one if the backend failed (`HeldLock::end_refresh` leaves the marks).
pub(super) fn try_backend_now(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    token: core::num::NonZeroU64,
    pending: Option<PendingRefresh>,
) -> Next {
    let (Some(pending), Some(zone)) = (pending, state.zone()) else {
        // No refresh could be prepared (logged): the stored copy it is.
        state.finish(CacheStatus::StaleError);
        return Next::Continue;
    };
    refresh::send(pending);
    let budget = state.wait_deadline_ms().saturating_sub(now_ms()).max(1);
    wait_for(state, req, zone, token.get(), budget);
    Next::Return(AGAIN)
}
