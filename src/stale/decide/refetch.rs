//! Sending a request through its location once more, so srcache's fetch runs again: after
//! srcache missed an entry that a fill then stored (or that this node kept, `local`).

use ngx::ffi::{
    ngx_event_t, ngx_http_finalize_request, ngx_http_internal_redirect, ngx_http_request_t,
    ngx_http_run_posted_requests,
};

use crate::nginx::log::debug;
use crate::nginx::util::{request_log, AGAIN, DONE};
use crate::policy::CacheStatus;
use crate::stale::state::{Next, RequestState};
use crate::stale::waiters::Wait;

/// A fill stored the entry while this request waited after srcache's miss: send the request
/// through its location again (once) so srcache serves the entry. The redirect runs from a
/// posted event, not from inside this step, so no phase handler is re-entered.
pub fn refetch(state: &mut RequestState, req: &ngx_http_request_t, status: CacheStatus) -> Next {
    if state.refetched() {
        state.finish(CacheStatus::Gone);
        return Next::Continue;
    }
    state.set_refetched();
    state.finish(status);
    debug!(
        request_log(req),
        "stale_cache: fetching again after the fill"
    );
    state.post_refetch(refetch_event_handler);
    Next::Return(AGAIN)
}

unsafe extern "C" fn refetch_event_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the wait event of a live RequestState (see `refetch`), whose end
    // removes it from the posted queue; no step of the request runs while it runs.
    let r = unsafe { Wait::of_event(ev) }.request();
    // SAFETY: the request is live while its state is; the redirect keeps the URI and
    // arguments (both in the request's pool) and runs the phases anew, like try_files; the
    // finalize balances the reference the redirect takes.
    unsafe {
        let c = (*r).connection;
        let (mut uri, mut args) = ((*r).uri, (*r).args);
        ngx_http_internal_redirect(r, &mut uri, &mut args);
        ngx_http_finalize_request(r, DONE);
        ngx_http_run_posted_requests(c);
    }
}
