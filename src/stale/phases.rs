//! The phase handlers. POST_READ recognises the module's own refreshes and hides the skip
//! header; PREACCESS runs the request's state machine, one step per `Phase`, after every
//! rewrite-phase directive (`set`, `set_md5`, `if`, ...) and before the access phase, where
//! srcache_fetch runs, whatever the module load order.

use crate::nginx::bits;
use core::cell::Cell;

use ngx::ffi::{
    ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, ngx_str_t, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_WARN,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::decide;
use super::error::fail_open;
use super::refresh::has_body;
use super::refresh::SECRET_HEADER;
use super::state::{self, Phase, RequestState};
use super::variables::read_cache_variables;
use crate::nginx::log::{self, debug, Every};
use crate::nginx::util::{live_headers, request_log, str_bytes, AGAIN, DECLINED, DONE};
use crate::policy::CacheStatus;
use crate::replay::{same_header_name, secret_matches};
use crate::settings::Settings;
use crate::stale::{main_conf, StaleCacheModule};

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
    let mut skip_headers = Vec::new();
    for h in live_headers(req) {
        let name = str_bytes(&h.key);
        // `-`/`_` alike and case ignored, as nginx's `$http_*` variables match them: a client's
        // `X_Skip_Fetch` must be hidden wherever `underscores_in_headers` lets it through.
        if same_header_name(name, SECRET_HEADER.as_bytes()) {
            is_refresh |= secret_matches(str_bytes(&h.value), secret);
            // Never forward or expose the secret (nor a guess at it).
            h.hash = 0;
            h.value = ngx_str_t {
                len: 1,
                data: c"1".as_ptr() as *mut u8,
            };
        } else if same_header_name(name, skip_name) {
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
        debug!(request_log(req), "stale_cache: refresh request recognised");
    }
    DECLINED
}

/* ----------------------------------------------------------------------- LOG */

/// After the response (srcache's store subrequest included): reports responses srcache did
/// not store where the module relied on it (see `refresh::check_stored`).
pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if core::ptr::eq(req.main, r) && main_conf(req).in_use {
        super::refresh::check_stored(req);
    }
    DECLINED
}

/* ----------------------------------------------------------------- PREACCESS */

pub unsafe extern "C" fn preaccess_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if !core::ptr::eq(req.main, r) {
        // srcache's fetch of a hot key is answered from the hot zone (`hot`).
        return super::hot::subrequest(req);
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
            Phase::Start if needs_body(state, req) => Ok(read_body(state, req)),
            Phase::Start => decide::start(state, req, scf),
            Phase::LookingUp if !state.capture.done => Ok(Next::Return(AGAIN)),
            Phase::LookingUp => decide::after_lookup(state, req, scf),
            Phase::ReadingBody if !state.body_read => Ok(Next::Return(AGAIN)),
            // The body is whole: only now may the request take a lock.
            Phase::ReadingBody => {
                state.phase = Phase::Start;
                Ok(Next::Continue)
            }
            Phase::Persisting if !state.capture.done => Ok(Next::Return(AGAIN)),
            Phase::Persisting => Ok(persisted(state, req)),
            // Until the wake-up event itself has run, other events (a writable client
            // socket) must not move the request on: the event would resume it twice.
            Phase::Waiting if state.wait.in_progress() => Ok(Next::Return(AGAIN)),
            Phase::Waiting | Phase::Missed => decide::after_wake(state, req, scf),
            Phase::Lease => super::lease::step(state, req, scf),
            Phase::Done => {
                // The stale path's own steps are over: the refresh may start.
                super::refresh::arm(state);
                Ok(Next::Return(DECLINED))
            }
        };
        match step {
            Ok(Next::Continue) => {}
            Ok(Next::Return(rc)) => return rc,
            Err(error) => fail_open(state, req, error),
        }
    }
}

/// The PERSIST (or EXPIRE) of a stale key answered: the stale copy is served either way.
fn persisted(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    if !state.capture.answered_ok() {
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "persist",
            Every::Interval,
            format_args!(
                "stale_cache: PERSIST/EXPIRE of a stale key failed; serving the stale copy anyway"
            ),
        );
    }
    state.phase = Phase::Done;
    Next::Continue
}

/* ------------------------------------------------------------------ the body */

thread_local! {
    /// Set while `read_body` is inside nginx's body read: a body already buffered completes
    /// there at once, and its callback must then only say so, not resume the phases (the
    /// step that asked is still running and goes on by itself).
    static READ_COMPLETED_INLINE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether the request must read its body before its first step: a request with a body in
/// `$cache_methods` may take a fill or refresh lock, and a client that stalls its body must
/// not hold one (nor its key's refresh). Refreshes and bypassed requests are left alone.
fn needs_body(state: &RequestState, req: &ngx_http_request_t) -> bool {
    if state.is_refresh || state.body_read || !has_body(req) {
        return false;
    }
    match Settings::parse(&read_cache_variables(req)) {
        Ok(Some(settings)) => settings.allows(str_bytes(&req.method_name)),
        _ => false,
    }
}

/// Reads the request body before any decision (the refresh replays it, and no lock may be
/// taken before it is whole); the step goes on at once if it was already buffered, or when
/// `body_read` runs. A body that never arrives ends the request (nginx answers 408) with no
/// lock taken and no status.
fn read_body(state: &mut RequestState, req: &mut ngx_http_request_t) -> Next {
    state.phase = Phase::ReadingBody;
    // The body stays for the proxy after the refresh has copied it.
    bits::set_preserve_body(req, true);
    READ_COMPLETED_INLINE.set(Some(false));
    // SAFETY: live main request; nginx holds it (r->main->count) while reading.
    let rc = unsafe { ngx_http_read_client_request_body(req, Some(body_read)) };
    let completed_inline = READ_COMPLETED_INLINE.replace(None) == Some(true);
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        // nginx answers the request with the error (and dropped its reference itself).
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
    debug!(
        request_log(req),
        "stale_cache: reading the body before deciding"
    );
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
