//! Sending a request through its location again once a fill stored its entry.

use ngx::ffi::{
    ngx_event_t, ngx_http_finalize_request, ngx_http_internal_redirect, ngx_http_request_t,
    ngx_http_run_posted_requests,
};

use super::super::state::{Next, RequestState};
use super::super::waiters::Wait;
use crate::nginx::log::debug;
use crate::nginx::util::{request_log, AGAIN, DONE};
use crate::policy::CacheStatus;

/// A fill stored the entry while this request waited after srcache's miss: send the request
/// through its location again (once) so srcache serves the entry. The redirect runs from a
/// posted event, not from inside this step, so no phase handler is re-entered.
pub fn refetch(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    if state.refetched() {
        state.finish(CacheStatus::Gone);
        return Next::Continue;
    }
    state.set_refetched();
    state.finish(CacheStatus::Collapsed);
    debug!(
        request_log(req),
        "stale_cache: fetching again after the fill"
    );
    let r = state.request();
    state.wait_mut().post(r, refetch_event_handler);
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
