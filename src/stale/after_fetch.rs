//! After srcache's fetch. PRECONTENT is only reached when srcache did not serve the request
//! from the cache, so a request the layer let through expecting an entry (fresh by the memo
//! or Redis, stale, or woken after a fill) finds out here that the entry is gone: deleted,
//! evicted, Redis restarted or down. Instead of going to the backend on its own, it drops
//! the memo and joins collapsing: it fills under the lock, or waits for the filler and then
//! goes through its location once more so srcache serves what was stored.

use ngx::ffi::{
    ngx_event_t, ngx_hash_key, ngx_http_finalize_request, ngx_http_get_variable,
    ngx_http_internal_redirect, ngx_http_request_t, ngx_http_run_posted_requests, ngx_int_t,
    ngx_post_event, ngx_posted_events, ngx_str_t,
};
use ngx::http::HttpModuleLocationConf;

use super::phases::{run, Next};
use super::state::{self, Phase, RequestState};
use crate::nginx::log::{debug, Short};
use crate::nginx::util::{no_connection, now_ms, request_log, AGAIN, DECLINED, DONE};
use crate::policy::CacheStatus;
use crate::stale::StaleCacheModule;

/// Whether srcache issued a fetch for `r` and it missed (`$srcache_fetch_status` is MISS).
fn srcache_fetch_missed(r: &mut ngx_http_request_t) -> bool {
    srcache_fetch_status(r) == Some(b"MISS".as_slice())
}

/// `$srcache_fetch_status` (HIT, MISS, BYPASS); `None` when srcache is not loaded.
pub fn srcache_fetch_status(r: &mut ngx_http_request_t) -> Option<&[u8]> {
    let name = b"srcache_fetch_status";
    let mut key = ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: a live request; nginx looks the variable up by name (unknown when srcache is
    // not loaded: null or not found) and its value lives in the request pool.
    unsafe {
        let hash = ngx_hash_key(key.data, key.len);
        let v = ngx_http_get_variable(r, &mut key, hash).as_ref()?;
        (v.valid() != 0 && v.not_found() == 0)
            .then(|| core::slice::from_raw_parts(v.data, v.len() as usize))
    }
}

/// The PRECONTENT handler.
pub unsafe extern "C" fn precontent_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if !core::ptr::eq(req.main, r) {
        return DECLINED;
    }
    let scf = StaleCacheModule::location_conf(req).expect("every location has a conf");
    if !scf.enabled() {
        return DECLINED;
    }
    let Some(mut state) = state::find(req) else {
        return DECLINED;
    };
    // SAFETY: one step at a time (see `state`): this handler is the only borrower.
    let state = unsafe { state.as_mut() };
    super::hot::not_served(state, req);
    if state.wait.in_progress() {
        // Parked (waiting, or a refetch posted): only its own event moves it on.
        return AGAIN;
    }
    if state.phase == Phase::Done && expected_an_entry(state) && srcache_fetch_missed(req) {
        entry_gone(state, req);
    }
    if !state.after_fetch {
        return DECLINED;
    }
    run(state, req, scf)
}

/// The layer let the request through to srcache expecting it to find the entry.
fn expected_an_entry(state: &RequestState) -> bool {
    matches!(
        state.status,
        Some(
            CacheStatus::Fresh
                | CacheStatus::Stale
                | CacheStatus::Collapsed
                | CacheStatus::StaleError
        )
    ) && state.settings.is_some()
}

/// srcache missed an entry the layer expected: forget the memo, and collapse from here.
fn entry_gone(state: &mut RequestState, req: &ngx_http_request_t) {
    let now = now_ms();
    let key = state.settings().key.clone();
    if let Some(zone) = state.zone {
        zone.with_key(&key, |t, fp| t.memo_clear(fp, now));
    }
    super::hot::forget(req, &key);
    debug!(
        request_log(req),
        "stale_cache: srcache missed \"{}\", which was expected {}",
        Short(&key),
        state.status.map_or("", |s| s.as_str())
    );
    if state.refetched || state.zone.is_none() {
        // Sent through once already, and still not there: no second round.
        state.finish(CacheStatus::Gone);
        return;
    }
    state.after_fetch = true;
    state.lookup_started = now;
    state.status = Some(CacheStatus::Gone);
    state.phase = Phase::Missed;
}

/// A fill stored the entry while this request waited after srcache's miss: send the request
/// through its location again (once) so srcache serves the entry. The redirect runs from a
/// posted event, not from inside this step, so no phase handler is re-entered.
pub fn refetch(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    if state.refetched {
        state.finish(CacheStatus::Gone);
        return Next::Continue;
    }
    state.refetched = true;
    state.finish(CacheStatus::Collapsed);
    debug!(
        request_log(req),
        "stale_cache: fetching again after the fill"
    );
    state.wait.wake_pending = true;
    let ev = state.wait.event_mut();
    ev.data = no_connection();
    ev.handler = Some(refetch_event_handler);
    ev.log = request_log(req);
    // SAFETY: the event lives in the state, whose end removes it from the posted queue.
    unsafe { ngx_post_event(ev, &raw mut ngx_posted_events) };
    Next::Return(AGAIN)
}

unsafe extern "C" fn refetch_event_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the wait event of a live RequestState (see `refetch`); no step of
    // the request runs while its posted event runs.
    let state = unsafe { RequestState::of_wait_event(ev) };
    state.wait.wake_pending = false;
    let r = state.r;
    // SAFETY: the request is live while its state is; the redirect keeps the URI and
    // arguments (both in the request's pool) and runs the phases anew, like try_files; the
    // finalize balances the reference the redirect takes. The state borrow ends above.
    unsafe {
        let c = (*r).connection;
        let (mut uri, mut args) = ((*r).uri, (*r).args);
        ngx_http_internal_redirect(r, &mut uri, &mut args);
        ngx_http_finalize_request(r, DONE);
        ngx_http_run_posted_requests(c);
    }
}
