//! The driver: every nginx callback of a request that the layer handles ends up here, and
//! runs the request's steps (`decide`) over its state until one has to wait or the layer is
//! done. POST_READ recognises the module's own refreshes and hides the skip header;
//! PREACCESS runs the steps after every rewrite-phase directive (`set`, `set_md5`, `if`, ...)
//! and before the access phase, where srcache_fetch runs, whatever the module load order;
//! PRECONTENT, reached only when srcache did not serve the request, notices an entry the
//! layer expected but srcache missed, and goes on collapsing from there; LOG reports a
//! response srcache did not store; the pool cleanup ends the request.
//!
//! Wake-ups, lookup ends, lease polls and body reads only record what happened in the state
//! and resume the request's phases, which brings it back to these handlers: nothing below
//! calls back up into the steps.

use core::cell::Cell;
use core::ffi::c_void;

use ngx::ffi::{
    ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, ngx_str_t, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_WARN,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::decide;
use super::error::StaleError;
use super::refresh::{self, has_body, SECRET_HEADER};
use super::state::{self, Next, Phase, RequestState};
use super::variables::read_cache_variables;
use super::{hot, metrics};
use crate::collapse::{
    fetch_end, fill_end, miss_forgets_node_copy, FetchEnd, FillEnd, StoreOutcome,
};
use crate::locktable::LockKind;
use crate::nginx::bits;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{
    live_headers, now_ms, request_log, str_bytes, upstream_end, AGAIN, DECLINED, DONE,
};
use crate::nginx::vars;
use crate::policy::CacheStatus;
use crate::replay::{same_header_name, secret_matches};
use crate::settings::{Settings, SettingsError};
use crate::stale::{main_conf, StaleCacheModule};

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
        state.mark_refresh();
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
        if let Some(peek) = state::peek(req) {
            refresh::check_stored(req, peek.is_refresh && !peek.lease_op, peek.status);
            if let (true, false, StoreOutcome::Refused { status }) =
                (peek.is_refresh, peek.lease_op, peek.store)
            {
                // A refresh is decided without settings: its key is read here.
                if let (Ok(Some(settings)), Some(zone)) = (
                    Settings::parse(&read_cache_variables(req)),
                    metrics::zone_of_request(req),
                ) {
                    super::store::refused_refresh(req, zone, &settings.key, status);
                }
            }
        }
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
            if state.is_refresh() && state.status().is_none() {
                state.set_status(CacheStatus::Refresh);
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
        let step = match state.phase() {
            Phase::Start => match settings_of(state, req, scf) {
                Err(error) => Err(error),
                Ok(true) => Ok(read_body(state, req)),
                Ok(false) => decide::start(state, req, scf),
            },
            Phase::LookingUp if !state.capture().done => Ok(Next::Return(AGAIN)),
            Phase::LookingUp => decide::after_lookup(state, req, scf),
            Phase::ReadingBody => Ok(Next::Return(AGAIN)),
            // The body is whole: only now may the request take a lock.
            Phase::BodyRead => decide::start(state, req, scf),
            Phase::Persisting if !state.capture().done => Ok(Next::Return(AGAIN)),
            Phase::Persisting => Ok(persisted(state, req)),
            // Until the wake-up event itself has run, other events (a writable client
            // socket) must not move the request on: the event would resume it twice.
            Phase::Waiting if state.wait_in_progress() => Ok(Next::Return(AGAIN)),
            Phase::Waiting if state.wait_timed_out() => {
                decide::give_up_waiting(state, req);
                Ok(Next::Continue)
            }
            Phase::Waiting | Phase::Missed => decide::after_wake(state, req, scf),
            phase @ (Phase::LeaseFillAsk
            | Phase::LeasePoll
            | Phase::LeaseRefreshAsk
            | Phase::LeaseOpAsk) => decide::lease_step(state, req, scf, phase),
            Phase::Refreshing => {
                // The stale path's own steps are over: the refresh may start.
                if let Some(pending) = state.take_refresh() {
                    refresh::arm(state.request(), pending);
                }
                Ok(Next::Continue)
            }
            Phase::Done | Phase::Filling | Phase::Refetching => Ok(Next::Return(DECLINED)),
        };
        match step {
            Ok(Next::Continue) => {}
            Ok(Next::Return(rc)) => return rc,
            Err(error) => fail_open(state, req, error),
        }
    }
}

/// Logs `error` (rate-limited per kind) and lets the request through without the layer:
/// srcache then decides alone, never a 500 from the module.
fn fail_open(state: &mut RequestState, req: &ngx_http_request_t, error: StaleError) {
    metrics::error(state, req, error.kind_name());
    let status = error.log(req);
    state.finish(status);
}

/// The PERSIST (or EXPIRE) of a stale key answered: the stale copy is served either way.
fn persisted(state: &mut RequestState, req: &ngx_http_request_t) -> Next {
    if !state.capture().answered_ok() {
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
    state.persisted();
    Next::Continue
}

/* ------------------------------------------------------------------ the body */

thread_local! {
    /// Set while `read_body` is inside nginx's body read: a body already buffered completes
    /// there at once, and its callback must then only say so, not resume the phases (the
    /// step that asked is still running and goes on by itself).
    static READ_COMPLETED_INLINE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The first step: reads the `$cache_*` settings, once per request, and tells whether the
/// request must read its body before deciding: a request with a body in `$cache_methods` may
/// take a fill or refresh lock, and a client that stalls its body must not hold one (nor its
/// key's refresh). Refreshes (decided without settings) are left alone.
fn settings_of(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Result<bool, StaleError> {
    if state.is_refresh() {
        return Ok(false);
    }
    let preset = scf.preset.as_ref().and_then(|p| p.settings(req));
    let settings = match preset.map_or_else(|| parse_settings(req), |s| Ok(Some(s))) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(StaleError::Inactive),
        Err(e) => return Err(StaleError::Settings(e)),
    };
    let needs_body = has_body(req) && settings.allows(str_bytes(&req.method_name));
    state.set_settings(settings);
    Ok(needs_body)
}

/// The `$cache_*` variables read and parsed: a location without a preset, or a request whose
/// variables differ from it. Kept out of `run` (the preset's fresh hits never come here): its
/// thread-local memo's address (a `__tls_get_addr` call in a shared object) would otherwise be
/// computed on every step of every request.
#[cold]
#[inline(never)]
fn parse_settings(req: &ngx_http_request_t) -> Result<Option<Settings>, SettingsError> {
    Settings::parse(&read_cache_variables(req))
}

/// Reads the request body before any decision (the refresh replays it, and no lock may be
/// taken before it is whole); the step goes on at once if it was already buffered, or when
/// `body_read` runs. A body that never arrives ends the request (nginx answers 408) with no
/// lock taken and no status.
// Not inlined into `run`: its thread-local's address (a `__tls_get_addr` call in a shared
// object) would then be computed on every step of every request, bodies or not.
#[inline(never)]
fn read_body(state: &mut RequestState, req: &mut ngx_http_request_t) -> Next {
    state.reading_body();
    // The body stays for the proxy after the refresh has copied it.
    bits::set_preserve_body(req, true);
    READ_COMPLETED_INLINE.set(Some(false));
    // SAFETY: live main request; nginx holds it (r->main->count) while reading.
    let rc = unsafe { ngx_http_read_client_request_body(req, Some(body_read)) };
    let completed_inline = READ_COMPLETED_INLINE.replace(None) == Some(true);
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        // nginx answers the request with the error (and dropped its reference itself).
        state.done();
        return Next::Return(rc);
    }
    // SAFETY: balances the reference the read took; the phase handler's own reference keeps
    // the request alive.
    unsafe { ngx_http_finalize_request(req, DONE) };
    if completed_inline {
        state.body_is_read();
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
    unsafe { state.as_mut() }.body_is_read();
    // SAFETY: live request; the phases go on from where the read stopped them.
    unsafe {
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}

/* ---------------------------------------------------------------- PRECONTENT */

/// `$srcache_fetch_status`: MISS when srcache's fetch missed, BYPASS when it was skipped
/// (or failed).
fn srcache_fetch_status(r: &mut ngx_http_request_t) -> Option<&'static [u8]> {
    match vars::by_name(r, b"srcache_fetch_status") {
        Some(b"MISS") => Some(b"MISS"),
        Some(b"BYPASS") => Some(b"BYPASS"),
        _ => None,
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
    hot::not_served(state, req);
    if state.wait_in_progress() {
        // Parked (waiting, or a refetch posted): only its own event moves it on.
        return AGAIN;
    }
    if matches!(state.phase(), Phase::Done | Phase::Refetching) && expected_an_entry(state) {
        match srcache_fetch_status(req) {
            Some(b"MISS") => entry_gone(state, req),
            // Skipped or failed while Redis is away: collapse on this node (`local`).
            Some(b"BYPASS") if super::local::enabled(req) && super::local::away() => {
                super::local::filling(state);
                entry_gone(state, req);
            }
            _ => {}
        }
    }
    if !state.after_fetch() {
        return DECLINED;
    }
    run(state, req, scf)
}

/// The layer let the request through to srcache expecting it to find the entry.
fn expected_an_entry(state: &RequestState) -> bool {
    matches!(
        state.status(),
        Some(
            CacheStatus::Fresh
                | CacheStatus::Stale
                | CacheStatus::Collapsed
                | CacheStatus::StaleError
        )
    ) && state.settings_if_read().is_some()
}

/// srcache missed an entry the layer expected: forget the memo (and this node's copy, unless
/// the fetch failed or Redis is away: `miss_forgets_node_copy`), and collapse from here.
fn entry_gone(state: &mut RequestState, req: &ngx_http_request_t) {
    let now = now_ms();
    let key = state.settings().key.to_vec();
    if let Some(zone) = state.zone() {
        zone.with_key(&key, |t, fp| t.memo_clear(fp, now));
        super::vary::memo_clear(state, zone, now);
    }
    let fetch = state.fetch_request().map_or(FetchEnd::Missed, |sr| {
        fetch_end(sr.headers_out.status, upstream_end(sr))
    });
    if fetch == FetchEnd::Unreachable {
        // Redis is away for this worker too: the copy another worker may have just kept
        // answers (`local_steps::served_after_wake`), as after a failed store.
        super::local::saw(req, super::local::Seen::FetchUnreachable, now);
    }
    if miss_forgets_node_copy(fetch, super::local::recently_away(now)) {
        hot::forget(req, &key);
    }
    debug!(
        request_log(req),
        "stale_cache: srcache missed \"{}\", which was expected {} (fetch {:?})",
        Short(&key),
        state.status().map_or("", |s| s.as_str()),
        fetch
    );
    if state.refetched() || state.zone().is_none() {
        // Sent through once already, and still not there: no second round.
        state.finish(CacheStatus::Gone);
        return;
    }
    state.srcache_missed(now);
}

/* ----------------------------------------------------------------------- end */

/// The pool cleanup: the request is over. Stops waiting, completes its fill lock with the
/// fill's outcome, and starts its refresh; everything else it held is released when its
/// state is dropped.
pub unsafe extern "C" fn end_of_request(data: *mut c_void) {
    // SAFETY: `data` is the state `attach` made; nginx runs each cleanup exactly once, after
    // every callback of the request (and its subrequests) has run, before it frees the pool.
    let mut state = unsafe { state::reclaim(data) };
    let (fill, unsent) = state.take_end();
    // SAFETY: the request is being freed but its fields are still readable now.
    let r = unsafe { &*state.request() };
    // SAFETY: the connection is live until the request is gone.
    let connection_error = unsafe { (*r.connection).error() } != 0;
    let end = fill_end(
        r.headers_out.status,
        connection_error,
        state.store_outcome(),
    );
    metrics::request_ended(&state, fill.is_some(), r, end);
    if let Some(lock) = fill {
        debug!(
            request_log(r),
            "stale_cache: fill of \"{}\" ended with status {}: {:?}",
            Short(lock.key()),
            r.headers_out.status,
            end
        );
        // srcache's store ran for a complete answer and did not store: reported (`saw`
        // decides whether Redis is away); kept on this node if it is, so the waiters are
        // answered from here, no pass mark.
        if end == FillEnd::NotStored && state.hot_mut().store.is_some() {
            super::local::saw(r, super::local::Seen::StoreNotStored, now_ms());
        }
        let kept = super::local::keep_store(&mut state, r);
        // Not stored because Redis is away (the store skipped or refused): no pass mark
        // either; one waiter fills in its place.
        let away = end == FillEnd::NotStored && super::local::away();
        // Invalidated while it ran: what it stored may be the old answer, the mark stays.
        let invalidated = state
            .zone()
            .is_some_and(|z| super::invalidation::passed(r, z, lock.key()));
        let pass_ms = match (end, state.settings_if_read()) {
            _ if invalidated => 0,
            (FillEnd::NotStored, Some(settings)) if !(kept || away) => settings.pass_ttl_ms,
            _ => 0,
        };
        lock.release_with_pass((end == FillEnd::Stored || kept) && !invalidated, pass_ms);
    } else if state.store_outcome().is_stored() && state.status() == Some(CacheStatus::Pass) {
        // A passed key answered something cacheable: collapsing resumes at once (not for an
        // entry srcache found, e.g. a copy in its grace band whose refresh stored nothing;
        // nor while a fill is under way: invalidated meanwhile, its store may land after
        // this one).
        if let (Some(zone), Some(settings)) = (state.zone(), state.settings_if_read()) {
            let now = now_ms();
            let http = StaleCacheConf::http_mode_in(r);
            zone.with_key(&settings.key, |t, fp| {
                if !http
                    || t.lock_state(fp, now)
                        .is_none_or(|l| l.kind != LockKind::Fill)
                {
                    t.pass_clear(fp, now)
                }
            });
        }
    }
    if state.store_outcome().is_stored() && state.hot_mut().store.is_none() {
        // A new copy went to Redis through this node: the hot copy is not it (unless this
        // request kept it: `local`).
        if let Some(settings) = state.settings_if_read() {
            hot::forget(r, &settings.key);
        }
    }
    super::invalidation::ended(&state, r);
    hot::release(&mut state, r);
    refresh::request_ended(state.request(), unsent);
    // Dropping the state releases what it still holds: a refresh lock whose refresh was
    // never prepared (the request ended first), its slot, the lease's poll timer.
}
