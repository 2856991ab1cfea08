//! The phase handlers. POST_READ recognises the module's own refreshes and hides the skip
//! header; PREACCESS runs the request's state machine, one step per `Phase`, after every
//! rewrite-phase directive (`set`, `set_md5`, `if`, ...) and before the access phase, where
//! srcache_fetch runs, whatever the module load order.

use core::cell::Cell;

use ngx::ffi::{
    ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, ngx_str_t, NGX_HTTP_NO_CONTENT, NGX_HTTP_SPECIAL_RESPONSE,
    NGX_LOG_ERR, NGX_LOG_WARN,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::decide;
use super::error::fail_open;
use super::module::{main_conf, StaleCacheModule};
use super::refresh::SECRET_HEADER;
use super::state::{self, Phase, RequestState};
use super::waiters::release;
use crate::nginx::log::{self, debug, Every};
use crate::nginx::util::{live_headers, request_log, str_bytes, AGAIN, DECLINED, DONE};
use crate::policy::CacheStatus;
use crate::replay::{secret_matches, RESTORE_HEADER};

/// What the state machine does after a step.
pub enum Next {
    /// Run the step of the phase the request is in now.
    Continue,
    /// Return this code from the phase handler.
    Return(ngx_int_t),
}

/* ----------------------------------------------------------------- POST_READ */

/// Recognises the module's own refresh requests and hides the skip header of every other
/// request, so `if ($http_x_skip_fetch ...)` and `$http_*` never see a client's copy.
pub unsafe extern "C" fn post_read_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if !core::ptr::eq(req.main, r) || !main_conf(req).in_use {
        return DECLINED;
    }
    let scf = StaleCacheModule::location_conf(req).expect("every location has a conf");
    let secret = main_conf(req).secret.as_bytes();
    let skip_name = scf.skip_header_name();
    let mut is_refresh = false;
    let mut restore_ttl = None;
    let mut skip_headers = Vec::new();
    for h in live_headers(req) {
        let name = str_bytes(&h.key);
        if name.eq_ignore_ascii_case(SECRET_HEADER.as_bytes()) {
            is_refresh |= secret_matches(str_bytes(&h.value), secret);
            // Never forward or expose the secret (nor a guess at it).
            h.hash = 0;
            h.value = ngx_str_t {
                len: 1,
                data: c"1".as_ptr() as *mut u8,
            };
        } else if name.eq_ignore_ascii_case(RESTORE_HEADER) {
            restore_ttl = core::str::from_utf8(str_bytes(&h.value))
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            h.hash = 0;
        } else if name.eq_ignore_ascii_case(skip_name) {
            skip_headers.push(h);
        }
    }
    if !is_refresh {
        for h in skip_headers {
            // A hash of 0 marks a deleted header: variables stop seeing it.
            h.hash = 0;
        }
        return DECLINED;
    }
    if let Some(mut state) = state::attach(req) {
        // SAFETY: POST_READ is the request's first step; nothing else borrows its state.
        let state = unsafe { state.as_mut() };
        state.is_refresh = true;
        state.restore_ttl = restore_ttl;
        debug!(request_log(req), "stale_cache: refresh request recognised");
    }
    DECLINED
}

/* ----------------------------------------------------------------- PREACCESS */

pub unsafe extern "C" fn preaccess_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if !core::ptr::eq(req.main, r) {
        return DECLINED;
    }
    let scf = StaleCacheModule::location_conf(req).expect("every location has a conf");
    if !scf.enabled() {
        if let Some(mut state) = state::find(req) {
            // SAFETY: one step at a time (see `state`): this handler is the only borrower.
            let state = unsafe { state.as_mut() };
            if state.is_refresh && state.status.is_none() {
                state.status = Some(CacheStatus::Refresh);
            }
        }
        return DECLINED;
    }
    let Some(mut state) = state::attach(req) else {
        return DECLINED;
    };
    // SAFETY: one step at a time (see `state`): the state is a separate allocation from the
    // request, and nothing this step calls re-enters a callback that borrows it.
    let state = unsafe { state.as_mut() };
    run(state, req, scf)
}

/// Runs the request's steps until one has to wait or the layer is done.
pub fn run(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> ngx_int_t {
    loop {
        let step = match state.phase {
            Phase::Start => decide::start(state, req, scf),
            Phase::LookingUp if !state.capture.done => Ok(Next::Return(AGAIN)),
            Phase::LookingUp => decide::after_lookup(state, req, scf),
            Phase::ReadingBody if !state.body_read => Ok(Next::Return(AGAIN)),
            Phase::ReadingBody => Ok(decide::finish_stale(state, req, scf)),
            Phase::Persisting if !state.capture.done => Ok(Next::Return(AGAIN)),
            Phase::Persisting => Ok(persisted(state, req)),
            Phase::Restoring if !state.capture.done => Ok(Next::Return(AGAIN)),
            Phase::Restoring => Ok(restored(state, req)),
            // Until the wake-up event itself has run, other events (a writable client
            // socket) must not move the request on: the event would resume it twice.
            Phase::Waiting if state.wait.in_progress() => Ok(Next::Return(AGAIN)),
            Phase::Waiting | Phase::Missed => decide::after_wake(state, req),
            Phase::Lease => super::lease::step(state, req, scf),
            Phase::Done => Ok(Next::Return(DECLINED)),
        };
        match step {
            Ok(Next::Continue) => {}
            Ok(Next::Return(rc)) => return rc,
            Err(error) => fail_open(state, req, error),
        }
    }
}

/// The PERSIST of a stale key answered: the stale copy is served either way.
fn persisted(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    if !state.capture.answered_ok() {
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "persist",
            Every::Interval,
            format_args!("stale_cache: PERSIST lookup failed; serving the stale copy anyway"),
        );
    }
    state.phase = Phase::Done;
    Next::Continue
}

/// The EXPIRE of a restore request answered: the request ends here, without the backend.
fn restored(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    state.phase = Phase::Done;
    if !state.capture.answered_ok() {
        log::limited(
            request_log(req),
            NGX_LOG_ERR,
            "restore",
            Every::Interval,
            format_args!(
                "stale_cache: giving a PERSISTed key its expiry back failed; check the \
                 $cache_expire location"
            ),
        );
    }
    Next::Return(NGX_HTTP_NO_CONTENT as ngx_int_t)
}

/* ------------------------------------------------------------------ the body */

thread_local! {
    /// Set while `read_body` is inside nginx's body read: a body already buffered completes
    /// there at once, and its callback must then only say so, not resume the phases (the
    /// step that asked is still running and goes on by itself).
    static READ_COMPLETED_INLINE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Reads the request body (the refresh replays it); the step goes on at once if it was
/// already buffered, or when `body_read` runs.
pub fn read_body(state: &mut RequestState, req: &mut ngx_http_request_t) -> Next {
    state.phase = Phase::ReadingBody;
    // The body stays for the proxy after the refresh has copied it.
    req.set_preserve_body(1);
    READ_COMPLETED_INLINE.set(Some(false));
    // SAFETY: live main request; nginx holds it (r->main->count) while reading.
    let rc = unsafe { ngx_http_read_client_request_body(req, Some(body_read)) };
    let completed_inline = READ_COMPLETED_INLINE.replace(None) == Some(true);
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        // nginx answers the request with the error (and dropped its reference itself).
        if let Some(lock) = state.refresh_lock.take() {
            release(&lock, false);
        }
        state.phase = Phase::Done;
        return Next::Return(rc);
    }
    // SAFETY: balances the reference the read took; the phase handler's own reference keeps
    // the request alive.
    unsafe { ngx_http_finalize_request(req, DONE) };
    if completed_inline {
        state.body_read = true;
        return Next::Continue;
    }
    debug!(request_log(req), "stale_cache: reading the body to replay");
    Next::Return(DONE)
}

unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    if READ_COMPLETED_INLINE.get().is_some() {
        READ_COMPLETED_INLINE.set(Some(true));
        return;
    }
    // SAFETY: nginx calls this with the live request whose body it read.
    let Some(mut state) = state::find(unsafe { &*r }) else {
        return;
    };
    // SAFETY: called from the read event, when no step of the request runs.
    unsafe { state.as_mut() }.body_read = true;
    // SAFETY: live request; the phases go on from where the read stopped them.
    unsafe {
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}
