//! Waiting for a fill: parking a request behind the lock's holder, and going on without it
//! when `$cache_lock_timeout` is over.

use ngx::ffi::ngx_http_request_t;

use super::super::state::{Phase, RequestState};
use super::super::waiters::start_waiting;
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::request_log;
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
    state.enter(Phase::Waiting);
    let key = state.settings().key.to_vec();
    start_waiting(state.wait_mut(), req, zone, &key, holder, budget);
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
