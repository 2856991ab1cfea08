//! The request flow: POST_READ (refresh recognition, skip-header stripping), PREACCESS (TTL
//! lookup, decision, waiting), the capture filters of the lookup subrequests, and the
//! request-end cleanup that releases locks and starts refreshes.
//!
//! PREACCESS runs after every rewrite-phase directive (`set`, `set_md5`, `if`, ...) and
//! before the access phase, where srcache_fetch runs, whatever the module load order.

use core::ffi::c_void;
use core::num::NonZeroU64;
use core::ptr;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ngx::ffi::{
    ngx_chain_t, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_http_block_reading,
    ngx_http_core_run_phases, ngx_http_finalize_request, ngx_http_output_body_filter_pt,
    ngx_http_output_header_filter_pt, ngx_http_post_subrequest_t,
    ngx_http_read_client_request_body, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_subrequest, ngx_http_test_reading, ngx_int_t, ngx_msec_t, ngx_pool_cleanup_add,
    ngx_post_event, ngx_posted_events, ngx_read_file, ngx_str_t, ngx_table_elt_t,
    ngx_variable_value_t, NGX_HTTP_NO_CONTENT, NGX_HTTP_SPECIAL_RESPONSE,
    NGX_HTTP_SUBREQUEST_WAITED, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN,
};

use super::conf::{LocConf, MainConf};
use super::module::module;
use super::refresh::{self, RefreshOutcome, RefreshTarget};
use super::util::{now_ms, pool_str, str_bytes};
use super::vars;
use super::zone::{self, Zone};
use crate::locktable::{LockKind, LockOutcome, MemoOutcome};
use crate::policy::{decide, Action, CacheStatus, FailReason, LogLimiter};
use crate::replay::{key_argument, secret_matches, Replay, RESTORE_HEADER};
use crate::resp::{parse_integer_reply, ReplyError};
use crate::settings::Settings;

const NGX_OK: ngx_int_t = 0;
const NGX_ERROR: ngx_int_t = -1;
const NGX_AGAIN: ngx_int_t = -2;
const NGX_DONE: ngx_int_t = -4;
const NGX_DECLINED: ngx_int_t = -5;

/// The header the module's own refresh requests carry the per-start secret in.
pub const SECRET_HEADER: &str = "X-Stale-Cache-Refresh";
/// The longest TTL/PERSIST reply kept; a valid one is a few bytes.
const CAPTURE_LIMIT: usize = 256;
/// How often a worker re-checks, in shared memory, locks that waiters of it wait for; a
/// release in the same worker wakes its waiters at once instead.
const WAIT_POLL_MS: ngx_msec_t = 1;
/// The largest request body a refresh replays.
const MAX_REPLAY_BODY: usize = 1 << 20;
const STATE_MAGIC: u64 = u64::from_le_bytes(*b"stalecac");
/// One error line per this interval and kind, however many requests hit the problem.
const LOG_INTERVAL_MS: u64 = 10_000;

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Start,
    LookingUp,
    ReadingBody,
    Persisting,
    Restoring,
    Waiting,
    Done,
}

/// What a lookup subrequest answered.
#[derive(Default)]
struct Capture {
    done: bool,
    failed_rc: ngx_int_t,
    status: usize,
    body: Vec<u8>,
    overflow: bool,
}

/// A lock this request holds, released when the request ends.
struct HeldLock {
    zone: *const Zone,
    key: Vec<u8>,
    token: NonZeroU64,
}

/// A refresh to start once the client's request is finished.
struct PendingRefresh {
    request: Vec<u8>,
    uri: String,
    target: RefreshTarget,
    timeout: u64,
    lock: HeldLock,
    /// Sent if the refresh fails, to give the key it PERSISTed its expiry back.
    restore: Option<Vec<u8>>,
}

/// Everything the module keeps for one main request. Owned by a cleanup of the request's
/// pool, so it survives internal redirects (which clear module contexts) and is released
/// however the request ends: finished, failed, or abandoned by its client.
pub struct RequestState {
    /// Identifies a RequestState behind a pool cleanup.
    magic: u64,
    r: *mut ngx_http_request_t,
    phase: Phase,
    status: Option<CacheStatus>,
    is_refresh: bool,
    /// A refresh-authenticated request asking to restore the key's expiry (seconds).
    restore_ttl: Option<u64>,
    settings: Option<Settings>,
    zone: *const Zone,
    lookup_started: u64,
    capture: Capture,
    ttl: i64,
    fill: Option<HeldLock>,
    /// The refresh lock, held while the body is read and the refresh is prepared.
    refresh_lock: Option<HeldLock>,
    persist_pending: bool,
    body_read: bool,
    refresh: Option<PendingRefresh>,
    wait_event: ngx_event_t,
    /// The lock holder being waited for, to tell its release from a new holder.
    waited_token: u64,
    waiting: bool,
    /// When this request stops waiting for fills, whatever happens (0: not waiting yet).
    wait_deadline: u64,
    /// Woken, but the posted wake-up event has not run yet.
    wake_pending: bool,
    /// When a wake-up resumed this request (precise clock; 0: never woken).
    resumed_ms: u64,
    /// For `$stale_cache_wake_delay`: from the fill's store to this request resuming.
    wake_delay_ms: Option<u64>,
    post_subrequest: ngx_http_post_subrequest_t,
}

/// Waiting requests by (zone address, key).
type WaiterMap = HashMap<(usize, Vec<u8>), Vec<*mut RequestState>>;

thread_local! {
    /// This worker's waiting requests, by zone and key.
    static WAITERS: RefCell<WaiterMap> = RefCell::new(HashMap::new());
    /// The poll timer that notices releases made by other workers.
    static POLL_EVENT: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
    static TOKEN_COUNTER: Cell<u64> = const { Cell::new(0) };
    static LIMITERS: RefCell<HashMap<&'static str, LogLimiter>> = RefCell::new(HashMap::new());
}

fn main_conf<'a>() -> &'a MainConf {
    use ngx::http::HttpModuleConfExt;
    // SAFETY: the module's main conf exists for the whole cycle once configuration is done,
    // and MainConf is the type create_main_conf allocates.
    unsafe {
        (*ngx::ffi::ngx_cycle)
            .http_main_conf_unchecked::<MainConf>(module())
            .expect("stale_cache main conf")
            .as_ref()
    }
}

fn loc_conf<'a>(r: &ngx_http_request_t) -> &'a LocConf {
    // SAFETY: every location has this module's LocConf.
    unsafe { &*(*r.loc_conf.add(module().ctx_index) as *const LocConf) }
}

fn log_of(r: &ngx_http_request_t) -> *mut ngx::ffi::ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}

/// Logs at most one line per LOG_INTERVAL_MS for `kind` in this worker.
fn log_limited(log: *mut ngx::ffi::ngx_log_t, level: u32, kind: &'static str, message: &str) {
    log_every(LOG_INTERVAL_MS, log, level, kind, message);
}

/// Logs at most one line per `interval_ms` for `kind` in this worker.
fn log_every(
    interval_ms: u64,
    log: *mut ngx::ffi::ngx_log_t,
    level: u32,
    kind: &'static str,
    message: &str,
) {
    let allowed = LIMITERS.with(|l| {
        l.borrow_mut()
            .entry(kind)
            .or_insert_with(|| LogLimiter::new(interval_ms))
            .allow(now_ms())
    });
    if let Some(suppressed) = allowed {
        if suppressed > 0 {
            ngx::ngx_log_error!(
                level,
                log,
                "{} ({} similar suppressed)",
                message,
                suppressed
            );
        } else {
            ngx::ngx_log_error!(level, log, "{}", message);
        }
    }
}

fn new_token() -> NonZeroU64 {
    let n = TOKEN_COUNTER.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    // SAFETY: ngx_pid is set once per process.
    let pid = unsafe { ngx::ffi::ngx_pid } as u64;
    // Odd and distinct for 2^39 consecutive locks of this worker; the pid tells workers apart.
    let low = ((n << 1) | 1) & ((1 << 40) - 1);
    NonZeroU64::new((pid << 40) | low).unwrap_or(NonZeroU64::MIN)
}

/* ---------------------------------------------------------------- request state */

unsafe extern "C" fn state_cleanup(data: *mut c_void) {
    // SAFETY: `data` is the state leaked by `state_of`, cleaned up exactly once here.
    let mut state = unsafe { Box::from_raw(data as *mut RequestState) };
    stop_waiting(&mut state);
    // SAFETY: the request is being freed but its fields are still readable now.
    let r = unsafe { &*state.r };
    if let Some(lock) = state.fill.take() {
        // SAFETY: connection is live until the request is gone.
        let client_error = unsafe { (*r.connection).error() } != 0;
        let status = r.headers_out.status;
        let filled = (200..300).contains(&status) && !client_error;
        release(&lock, filled);
    }
    if let Some(lock) = state.refresh_lock.take() {
        // The request ended before its refresh could be prepared.
        release(&lock, false);
    }
    if let Some(pending) = state.refresh.take() {
        let PendingRefresh {
            request,
            uri,
            target,
            timeout,
            lock,
            restore,
        } = pending;
        let (restore_target, restore_uri) = (target.clone(), uri.clone());
        refresh::start(
            &target,
            request,
            uri,
            "refresh",
            timeout,
            Box::new(move |outcome: &RefreshOutcome, _ms| {
                let ok = matches!(outcome, RefreshOutcome::Status(s) if (200..300).contains(s));
                release(&lock, ok);
                if let (false, Some(bytes)) = (ok, restore) {
                    // The key was PERSISTed for this refresh, which failed: without its
                    // expiry back, a deleted page would be served forever.
                    refresh::start(
                        &restore_target,
                        bytes,
                        restore_uri,
                        "expiry restore",
                        timeout,
                        Box::new(|_: &RefreshOutcome, _| {}),
                    );
                }
            }),
        );
    }
}

/// The state of main request `r`, created on first use.
fn state_of<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestState> {
    find_state(r, true)
}

/// The state of main request `r`; `create`: make one if it has none.
fn find_state<'a>(r: *mut ngx_http_request_t, create: bool) -> Option<&'a mut RequestState> {
    // SAFETY: r is a live main request; its module ctx slot is ours.
    unsafe {
        let ctx = *(*r).ctx.add(module().ctx_index) as *mut RequestState;
        if !ctx.is_null() {
            return Some(&mut *ctx);
        }
        // After an internal redirect the ctx is gone but the cleanup still holds the state.
        let mut c = (*(*r).pool).cleanup;
        while !c.is_null() {
            let ours = (*c).handler.is_some_and(|h| {
                core::ptr::fn_addr_eq(h, state_cleanup as unsafe extern "C" fn(*mut c_void))
            });
            if ours && (*((*c).data as *const RequestState)).magic == STATE_MAGIC {
                let state = (*c).data as *mut RequestState;
                *(*r).ctx.add(module().ctx_index) = state as *mut c_void;
                return Some(&mut *state);
            }
            c = (*c).next;
        }
        if !create {
            return None;
        }
        let cleanup = ngx_pool_cleanup_add((*r).pool, 0);
        if cleanup.is_null() {
            return None;
        }
        let state = Box::into_raw(Box::new(RequestState {
            magic: STATE_MAGIC,
            r,
            phase: Phase::Start,
            status: None,
            is_refresh: false,
            restore_ttl: None,
            settings: None,
            zone: ptr::null(),
            lookup_started: 0,
            capture: Capture::default(),
            ttl: 0,
            fill: None,
            refresh_lock: None,
            persist_pending: false,
            body_read: false,
            refresh: None,
            wait_event: core::mem::zeroed(),
            waited_token: 0,
            waiting: false,
            wait_deadline: 0,
            wake_pending: false,
            resumed_ms: 0,
            wake_delay_ms: None,
            post_subrequest: ngx_http_post_subrequest_t {
                handler: Some(lookup_done),
                data: ptr::null_mut(),
            },
        }));
        (*state).post_subrequest.data = state as *mut c_void;
        (*cleanup).handler = Some(state_cleanup);
        (*cleanup).data = state as *mut c_void;
        *(*r).ctx.add(module().ctx_index) = state as *mut c_void;
        Some(&mut *state)
    }
}

/// The state if the request already has one (no allocation), also after an internal
/// redirect cleared the module context.
fn existing_state<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestState> {
    // SAFETY: r is live; its main request shares the pool the state hangs on.
    find_state(unsafe { (*r).main }, false)
}

/* ----------------------------------------------------------------- POST_READ */

/// Recognises the module's own refresh requests and hides the skip header of every other
/// request, so `if ($http_x_skip_fetch ...)` and `$http_*` never see a client's copy.
pub unsafe extern "C" fn post_read_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if req.main != r {
        return NGX_DECLINED;
    }
    let mcf = main_conf();
    if !mcf.in_use {
        return NGX_DECLINED;
    }
    let skip_name = loc_conf(req).skip_header_name();
    let mut is_refresh = false;
    let mut restore_ttl = None;
    let mut skip_headers: Vec<*mut ngx_table_elt_t> = Vec::new();
    for h in headers(req) {
        // SAFETY: list elements are valid header entries.
        let (name, value) = unsafe { (str_bytes(&(*h).key), str_bytes(&(*h).value)) };
        if name.eq_ignore_ascii_case(SECRET_HEADER.as_bytes()) {
            is_refresh |= secret_matches(value, mcf.secret.as_bytes());
            // Never forward or expose the secret (nor a guess at it).
            // SAFETY: header entries are writable request memory.
            unsafe {
                (*h).hash = 0;
                (*h).value = ngx_str_t {
                    len: 1,
                    data: c"1".as_ptr() as *mut u8,
                };
            }
        } else if name.eq_ignore_ascii_case(RESTORE_HEADER) {
            restore_ttl = core::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            // SAFETY: header entries are writable request memory.
            unsafe { (*h).hash = 0 };
        } else if name.eq_ignore_ascii_case(skip_name) {
            skip_headers.push(h);
        }
    }
    if !is_refresh {
        for h in skip_headers {
            // A hash of 0 marks a deleted header: variables stop seeing it.
            // SAFETY: as above.
            unsafe { (*h).hash = 0 };
        }
        return NGX_DECLINED;
    }
    if let Some(state) = state_of(r) {
        state.is_refresh = true;
        state.restore_ttl = restore_ttl;
    }
    NGX_DECLINED
}

/// The request's live (not deleted) header entries, walked in place.
fn headers(r: &ngx_http_request_t) -> Headers {
    Headers {
        part: &r.headers_in.headers.part,
        index: 0,
    }
}

struct Headers {
    part: *const ngx::ffi::ngx_list_part_t,
    index: usize,
}

impl Iterator for Headers {
    type Item = *mut ngx_table_elt_t;

    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: walks nginx's header list of a live request; each part holds `nelts`
        // elements and the last part's `next` is null.
        unsafe {
            while !self.part.is_null() {
                if self.index < (*self.part).nelts {
                    let h = ((*self.part).elts as *mut ngx_table_elt_t).add(self.index);
                    self.index += 1;
                    if (*h).hash != 0 {
                        return Some(h);
                    }
                } else {
                    self.part = (*self.part).next;
                    self.index = 0;
                }
            }
        }
        None
    }
}

/* ----------------------------------------------------------------- PREACCESS */

pub unsafe extern "C" fn preaccess_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if req.main != r {
        return NGX_DECLINED;
    }
    let lcf = loc_conf(req);
    if !lcf.enabled() {
        if let Some(state) = existing_state(r) {
            if state.is_refresh && state.status.is_none() {
                state.status = Some(CacheStatus::Refresh);
            }
        }
        return NGX_DECLINED;
    }
    let Some(state) = state_of(r) else {
        return NGX_DECLINED;
    };
    loop {
        match state.phase {
            Phase::Start => match start(state, req, lcf) {
                Some(rc) => return rc,
                None => continue,
            },
            Phase::LookingUp => {
                if !state.capture.done {
                    return NGX_AGAIN;
                }
                match after_lookup(state, req, lcf) {
                    Some(rc) => return rc,
                    None => continue,
                }
            }
            Phase::ReadingBody => {
                if !state.body_read {
                    return NGX_AGAIN;
                }
                match finish_stale(state, req, lcf) {
                    Some(rc) => return rc,
                    None => continue,
                }
            }
            Phase::Restoring => {
                if !state.capture.done {
                    return NGX_AGAIN;
                }
                state.phase = Phase::Done;
                if state.capture.failed_rc != 0 || state.capture.status != 200 {
                    log_limited(
                        log_of(req),
                        NGX_LOG_ERR,
                        "restore",
                        "stale_cache: giving a PERSISTed key its expiry back failed; check \
                         the $cache_expire location",
                    );
                }
                return NGX_HTTP_NO_CONTENT as ngx_int_t;
            }
            Phase::Persisting => {
                if !state.capture.done {
                    return NGX_AGAIN;
                }
                if state.capture.failed_rc != 0 || state.capture.status != 200 {
                    log_limited(
                        log_of(req),
                        NGX_LOG_WARN,
                        "persist",
                        "stale_cache: PERSIST lookup failed; serving the stale copy anyway",
                    );
                }
                state.phase = Phase::Done;
            }
            Phase::Waiting => {
                // Until the wake-up event itself has run, other events (a writable client
                // socket) must not move the request on: the event would resume it twice.
                if state.waiting || state.wake_pending {
                    return NGX_AGAIN;
                }
                if state.status == Some(CacheStatus::Timeout) {
                    state.phase = Phase::Done;
                    continue;
                }
                // Woken: the lock went. If the holder stored the entry this is COLLAPSED;
                // if its fill failed (or it died), this request fills in its place and the
                // others wait on, instead of all going to the backend at once.
                // SAFETY: the zone was set before waiting and lives for the cycle.
                let zone = unsafe { &*state.zone };
                match fill_or_wait(state, req, zone, now_ms()) {
                    Some(rc) => return rc,
                    None => continue,
                }
            }
            Phase::Done => return NGX_DECLINED,
        }
    }
}

/// First visit: settings, bypass rules, the freshness memo, then the TTL lookup.
/// `Some(rc)` returns from the phase handler, `None` continues the state machine.
fn start(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    lcf: &LocConf,
) -> Option<ngx_int_t> {
    let r = req as *mut ngx_http_request_t;
    if state.is_refresh {
        state.status = Some(CacheStatus::Refresh);
        state.phase = Phase::Done;
        if let Some(ttl) = state.restore_ttl {
            return Some(restore_expiry(state, req, ttl));
        }
        return None;
    }
    let mcf = main_conf();
    let raw = vars::read_cache_variables(r, &mcf.vars);
    let settings = match Settings::parse(&raw) {
        Ok(Some(s)) => s,
        Ok(None) => {
            log_limited(
                log_of(req),
                NGX_LOG_ERR,
                "inactive",
                "stale_cache: \"stale_cache on\" but $cache_lock, $cache_ttl and $cache_key \
                 are unset; the request passes through untouched",
            );
            state.status = Some(CacheStatus::Bypass);
            state.phase = Phase::Done;
            return None;
        }
        Err(e) => {
            log_limited(
                log_of(req),
                NGX_LOG_ERR,
                "settings",
                &format!("stale_cache: {e}; the request passes through untouched"),
            );
            state.status = Some(CacheStatus::Error);
            state.phase = Phase::Done;
            return None;
        }
    };
    if !settings
        .skip_fetch
        .eq_ignore_ascii_case(lcf.skip_header_name())
    {
        // Clients' copies of the header the refreshes use would not be hidden.
        log_limited(
            log_of(req),
            NGX_LOG_WARN,
            "skip-header",
            &format!(
                "stale_cache: $cache_skip_fetch is \"{}\" but clients' \"{}\" headers are the \
                 ones hidden; add \"stale_cache_skip_header {};\" at http or server level",
                String::from_utf8_lossy(&settings.skip_fetch),
                String::from_utf8_lossy(lcf.skip_header_name()),
                String::from_utf8_lossy(&settings.skip_fetch)
            ),
        );
    }
    // SAFETY: method_name and uri are valid request strings.
    let (method, uri) = (str_bytes(&req.method_name), str_bytes(&req.uri));
    if !settings.allows(method) || settings.is_lookup_uri(uri) {
        state.status = Some(CacheStatus::Bypass);
        state.phase = Phase::Done;
        return None;
    }
    let Some(zone) = zone::find(&mcf.zones, &settings.lock_zone) else {
        log_limited(
            log_of(req),
            NGX_LOG_ERR,
            "zone",
            &format!(
                "stale_cache: $cache_lock names \"{}\" but no \"stale_cache_zone {} SIZE;\" \
                 is configured; the request passes through untouched",
                String::from_utf8_lossy(&settings.lock_zone),
                String::from_utf8_lossy(&settings.lock_zone)
            ),
        );
        state.status = Some(CacheStatus::Error);
        state.phase = Phase::Done;
        return None;
    };
    state.zone = zone;
    let now = now_ms();
    let memo = lcf.memo_enabled();
    let (fresh, filling) = zone
        .with_key(&settings.key, |t, fp| {
            let fresh = if memo { t.memo_get(fp, now) } else { None };
            (fresh, t.lock_state(fp, now))
        })
        .unwrap_or((None, None));
    if fresh.is_some() {
        state.status = Some(CacheStatus::Fresh);
        state.phase = Phase::Done;
        state.settings = Some(settings);
        return None;
    }
    match filling {
        Some(info) if info.kind == LockKind::Fill => {
            // A fill of this key is under way, so the key is missing: wait for it without
            // asking Redis (a burst of misses costs one TTL lookup, not one per request).
            let (key, timeout) = (settings.key.clone(), settings.lock_timeout_ms);
            state.lookup_started = now;
            state.wait_deadline = now + timeout;
            state.settings = Some(settings);
            start_waiting(state, req, zone, key, info.token.get(), timeout);
            return Some(NGX_AGAIN);
        }
        Some(_) => {
            // A refresh of this key is under way: it is stale, and its copy lives at least as
            // long as the refresh lock (taken no longer than the copy's TTL), so srcache can
            // serve it without a TTL lookup.
            state.status = Some(CacheStatus::Stale);
            state.phase = Phase::Done;
            state.settings = Some(settings);
            return None;
        }
        None => {}
    }
    state.lookup_started = now;
    let ttl_uri = settings.ttl_uri.clone();
    let args = key_argument(&settings.key);
    state.settings = Some(settings);
    if start_lookup(state, req, &ttl_uri, &args).is_err() {
        return Some(fail_open(state, req, FailReason::LookupFailed));
    }
    state.phase = Phase::LookingUp;
    Some(NGX_AGAIN)
}

/// An expiry-restore request (sent by this module after a failed refresh of a key it had
/// PERSISTed): EXPIRE the key through `$cache_expire`, then answer 204 without the backend.
fn restore_expiry(state: &mut RequestState, req: &mut ngx_http_request_t, ttl: u64) -> ngx_int_t {
    let raw = vars::read_cache_variables(req, &main_conf().vars);
    let Ok(Some(settings)) = Settings::parse(&raw) else {
        return NGX_HTTP_NO_CONTENT as ngx_int_t;
    };
    let Some(uri) = settings.expire_uri.clone() else {
        return NGX_HTTP_NO_CONTENT as ngx_int_t;
    };
    let mut args = key_argument(&settings.key);
    args.extend_from_slice(format!("&ttl={}", ttl.max(1)).as_bytes());
    state.settings = Some(settings);
    if start_lookup(state, req, &uri, &args).is_err() {
        return NGX_HTTP_NO_CONTENT as ngx_int_t;
    }
    state.phase = Phase::Restoring;
    NGX_AGAIN
}

/// Issues a waited subrequest to a lookup location; its answer lands in `state.capture`.
fn start_lookup(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    uri: &[u8],
    args: &[u8],
) -> Result<(), ()> {
    let pool = req.pool;
    let mut uri = pool_str(pool, uri).ok_or(())?;
    let mut args = pool_str(pool, args).ok_or(())?;
    state.capture = Capture::default();
    let mut sr: *mut ngx_http_request_t = ptr::null_mut();
    // SAFETY: r is the live main request; uri/args live in its pool; the post-subrequest
    // record lives in the state, which outlives the subrequest.
    let rc = unsafe {
        ngx_http_subrequest(
            req,
            &mut uri,
            &mut args,
            &mut sr,
            &mut state.post_subrequest,
            NGX_HTTP_SUBREQUEST_WAITED as _,
        )
    };
    if rc != NGX_OK || sr.is_null() {
        return Err(());
    }
    // The filters recognise the subrequest by its post_subrequest record and keep its
    // output from the client.
    Ok(())
}

type LookupDoneFn =
    unsafe extern "C" fn(*mut ngx_http_request_t, *mut c_void, ngx_int_t) -> ngx_int_t;

unsafe extern "C" fn lookup_done(
    sr: *mut ngx_http_request_t,
    data: *mut c_void,
    rc: ngx_int_t,
) -> ngx_int_t {
    // SAFETY: data is the RequestState given with the subrequest; sr is live.
    let state = unsafe { &mut *(data as *mut RequestState) };
    state.capture.done = true;
    // SAFETY: as above.
    let (status, client_gone) = unsafe { ((*sr).headers_out.status, (*(*sr).connection).error()) };
    if status != 0 {
        state.capture.status = status;
    }
    if rc == NGX_ERROR && client_gone != 0 {
        return rc;
    }
    if rc >= 300 || rc == NGX_ERROR {
        // A failed lookup is recorded and the request fails open. Ending the subrequest
        // quietly keeps nginx from answering it with an error page (or, for NGX_ERROR,
        // from closing the client's connection): its output is not the client's.
        state.capture.failed_rc = if rc == NGX_ERROR { 500 } else { rc };
        return NGX_OK;
    }
    rc
}

fn fail_open(state: &mut RequestState, req: &ngx_http_request_t, reason: FailReason) -> ngx_int_t {
    log_limited(
        log_of(req),
        NGX_LOG_ERR,
        "lookup",
        &format!(
            "stale_cache: {reason} for \"{}\"; serving without the stale cache layer \
             (check redis and the $cache_ttl location)",
            String::from_utf8_lossy(str_bytes(&req.uri))
        ),
    );
    state.status = Some(CacheStatus::Error);
    state.phase = Phase::Done;
    NGX_DECLINED
}

/// The TTL is in: decide and act.
fn after_lookup(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    lcf: &LocConf,
) -> Option<ngx_int_t> {
    let capture = &state.capture;
    let ttl = if capture.failed_rc != 0 || capture.status != 200 || capture.overflow {
        Err(FailReason::LookupFailed)
    } else {
        match parse_integer_reply(&capture.body) {
            Ok(ttl) => Ok(ttl),
            Err(ReplyError::ErrorReply(text)) => {
                log_limited(
                    log_of(req),
                    NGX_LOG_ERR,
                    "redis-error",
                    &format!(
                        "stale_cache: the TTL lookup got a redis error: \"{}\"",
                        crate::resp::Escaped(&text)
                    ),
                );
                Err(FailReason::BadReply)
            }
            Err(_) => Err(FailReason::BadReply),
        }
    };
    let ttl = match ttl {
        Ok(ttl) => ttl,
        Err(reason) => return Some(fail_open(state, req, reason)),
    };
    state.ttl = ttl;
    // SAFETY: zone was set before the lookup and lives for the cycle.
    let zone = unsafe { &*state.zone };
    let settings = state
        .settings
        .as_ref()
        .expect("settings parsed before lookup");
    let now = now_ms();
    match decide(ttl, settings.stale_secs, settings.persist_uri.is_some()) {
        Action::ServeFresh { memo_ms } => {
            if lcf.memo_enabled() && memo_ms > 0 {
                let stored =
                    zone.with_key(&settings.key, |t, fp| t.memo_set(fp, now + memo_ms, now));
                if let Some(MemoOutcome::StoredEvicted(_)) = stored {
                    // Once per worker: it says the zone is too small, not that anything failed.
                    log_every(
                        u64::MAX,
                        log_of(req),
                        NGX_LOG_NOTICE,
                        "evict",
                        &format!(
                            "stale_cache: zone \"{}\" is full: evicting the least recently \
                             used freshness memos (requests stay correct; a bigger zone saves \
                             TTL lookups)",
                            String::from_utf8_lossy(&zone.name)
                        ),
                    );
                }
            }
            state.status = Some(CacheStatus::Fresh);
            state.phase = Phase::Done;
            None
        }
        Action::FailOpen { reason } => Some(fail_open(state, req, reason)),
        Action::FillOrWait => fill_or_wait(state, req, zone, now),
        Action::ServeStale { persist, refresh } => {
            state.status = Some(CacheStatus::Stale);
            state.phase = Phase::Done;
            if !refresh {
                return None;
            }
            let token = new_token();
            let key = settings.key.clone();
            // The lock must not outlive the stale copy it vouches for (see `start`): unless
            // PERSIST keeps the copy, it expires with the copy at the latest.
            let ttl_ms = if ttl >= 0 && !persist {
                settings.lock_exptime_ms.min((ttl as u64).max(1) * 1000)
            } else {
                settings.lock_exptime_ms
            };
            let outcome = zone.with_key(&key, |t, fp| {
                t.try_lock(fp, LockKind::Refresh, token, ttl_ms, 0, now)
            });
            if !matches!(outcome, Some(LockOutcome::Acquired { .. })) {
                if matches!(outcome, Some(LockOutcome::Full)) {
                    zone_full(req, zone);
                }
                return None;
            }
            state.refresh_lock = Some(HeldLock { zone, key, token });
            state.persist_pending = persist;
            if has_body(req) {
                // The refresh replays the body too: read it now (proxying reuses it).
                return Some(read_body(state, req));
            }
            finish_stale(state, req, lcf)
        }
    }
}

/// The stale path once the refresh lock is held (and the body read, if any): prepare the
/// refresh, then PERSIST the key if asked.
fn finish_stale(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    lcf: &LocConf,
) -> Option<ngx_int_t> {
    state.phase = Phase::Done;
    let lock = state.refresh_lock.take()?;
    match refresh_request(state, req, lcf, lock) {
        Ok(pending) => state.refresh = Some(pending),
        Err((lock, why)) => {
            log_limited(log_of(req), NGX_LOG_ERR, "refresh", why);
            release(&lock, false);
            return None;
        }
    }
    if state.persist_pending {
        let settings = state
            .settings
            .as_ref()
            .expect("settings parsed before lookup");
        let uri = settings.persist_uri.clone().unwrap_or_default();
        let args = key_argument(&settings.key);
        if start_lookup(state, req, &uri, &args).is_ok() {
            state.phase = Phase::Persisting;
            return Some(NGX_AGAIN);
        }
    }
    None
}

fn has_body(req: &ngx_http_request_t) -> bool {
    req.headers_in.content_length_n > 0 || req.headers_in.chunked() != 0
}

/// Starts reading the request body; the phases resume in `body_read`.
fn read_body(state: &mut RequestState, req: &mut ngx_http_request_t) -> ngx_int_t {
    state.phase = Phase::ReadingBody;
    // SAFETY: live main request; nginx holds it (r->main->count) while reading.
    let rc = unsafe { ngx_http_read_client_request_body(req, Some(body_read)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        if let Some(lock) = state.refresh_lock.take() {
            release(&lock, false);
        }
        state.phase = Phase::Done;
        return rc;
    }
    // SAFETY: balances the reference reading took; the request lives on.
    unsafe { ngx_http_finalize_request(req, NGX_DONE) };
    NGX_DONE
}

unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    let Some(state) = existing_state(r) else {
        return;
    };
    state.body_read = true;
    // SAFETY: live request; the body stays for the proxy, and the phases go on from here.
    unsafe {
        (*r).set_preserve_body(1);
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}

/// The request body's bytes, from memory and temp-file buffers; `None` when too large.
fn body_bytes(req: &ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if req.request_body.is_null() {
        return Some(out);
    }
    // SAFETY: the read body's chain and buffers live in the request pool; file buffers
    // refer to the body's temp file, open while the request lives.
    unsafe {
        let mut cl = (*req.request_body).bufs;
        while !cl.is_null() {
            let b = &mut *(*cl).buf;
            if b.in_file() != 0 && b.memory() == 0 && b.temporary() == 0 {
                let len = (b.file_last - b.file_pos) as usize;
                if out.len() + len > MAX_REPLAY_BODY {
                    return None;
                }
                let start = out.len();
                out.resize(start + len, 0);
                let n = ngx_read_file(b.file, out.as_mut_ptr().add(start), len, b.file_pos);
                if n != len as isize {
                    return None;
                }
            } else {
                let len = b.last.offset_from(b.pos) as usize;
                if out.len() + len > MAX_REPLAY_BODY {
                    return None;
                }
                if len > 0 {
                    out.extend_from_slice(core::slice::from_raw_parts(b.pos, len));
                }
            }
            cl = (*cl).next;
        }
    }
    Some(out)
}

fn zone_full(req: &ngx_http_request_t, zone: &Zone) {
    log_limited(
        log_of(req),
        NGX_LOG_ERR,
        "zone-full",
        &format!(
            "stale_cache: zone \"{}\" is full of locks; increase its size",
            String::from_utf8_lossy(&zone.name)
        ),
    );
}

/// A missing key: fill it, or wait for the request filling it.
fn fill_or_wait(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    zone: &Zone,
    now: u64,
) -> Option<ngx_int_t> {
    let settings = state
        .settings
        .as_ref()
        .expect("settings parsed before lookup");
    let token = new_token();
    let key = settings.key.clone();
    let (ttl_ms, started) = (settings.lock_exptime_ms, state.lookup_started);
    let timeout = settings.lock_timeout_ms;
    let (outcome, stored_at) = zone
        .with_key(&key, |t, fp| {
            let outcome = t.try_lock(fp, LockKind::Fill, token, ttl_ms, started, now);
            (Some(outcome), t.last_store_ms(fp, now))
        })
        .unwrap_or((None, None));
    match outcome {
        Some(LockOutcome::Acquired { .. }) => {
            state.fill = Some(HeldLock { zone, key, token });
            state.status = Some(CacheStatus::Miss);
            state.phase = Phase::Done;
            None
        }
        Some(LockOutcome::RecentlyFilled) => {
            if state.resumed_ms != 0 {
                state.wake_delay_ms = stored_at.map(|at| state.resumed_ms.saturating_sub(at));
            }
            state.status = Some(CacheStatus::Collapsed);
            state.phase = Phase::Done;
            None
        }
        Some(LockOutcome::Held(info)) => {
            // One budget for all the waits of this request, however often it is woken.
            if state.wait_deadline == 0 {
                state.wait_deadline = now + timeout;
            }
            let left = state.wait_deadline.saturating_sub(now);
            if left == 0 {
                give_up_waiting(state, req);
                return None;
            }
            start_waiting(state, req, zone, key, info.token.get(), left);
            Some(NGX_AGAIN)
        }
        Some(LockOutcome::Full) => {
            zone_full(req, zone);
            state.status = Some(CacheStatus::Miss);
            state.phase = Phase::Done;
            None
        }
        None => {
            log_limited(
                log_of(req),
                NGX_LOG_ERR,
                "zone-unusable",
                &format!(
                    "stale_cache: zone \"{}\" cannot be used; no collapsing until nginx restarts",
                    String::from_utf8_lossy(&zone.name)
                ),
            );
            state.status = Some(CacheStatus::Miss);
            state.phase = Phase::Done;
            None
        }
    }
}

/* ------------------------------------------------------------------- waiting */

fn start_waiting(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    zone: &Zone,
    key: Vec<u8>,
    holder: u64,
    timeout: u64,
) {
    state.phase = Phase::Waiting;
    state.waiting = true;
    state.waited_token = holder;
    let ev = &mut state.wait_event;
    ev.data = no_connection();
    ev.handler = Some(wait_event_handler);
    ev.log = log_of(req);
    // Notice a client that gives up while waiting, as limit_req does.
    req.read_event_handler = Some(ngx_http_test_reading);
    // SAFETY: the event lives in the state, which outlives the wait (the cleanup stops it).
    unsafe { ngx::ffi::ngx_add_timer(ev, timeout.max(1) as ngx_msec_t) };
    let zone_id = zone as *const Zone as usize;
    WAITERS.with(|w| {
        w.borrow_mut()
            .entry((zone_id, key))
            .or_default()
            .push(state as *mut RequestState)
    });
    arm_poll_timer();
}

/// Removes the request from the waiters and cancels its timer and posted wake-up.
fn stop_waiting(state: &mut RequestState) {
    if state.waiting {
        state.waiting = false;
        let me = state as *mut RequestState;
        WAITERS.with(|w| {
            w.borrow_mut().retain(|_, list| {
                list.retain(|&s| s != me);
                !list.is_empty()
            })
        });
    }
    // Also when already woken: the wake-up may still sit in the posted queue, and must not
    // run after the request (and this state) is gone.
    let ev = &mut state.wait_event;
    // SAFETY: the event is ours; removing a timer/post only touches nginx's queues.
    unsafe {
        if ev.timer_set() != 0 {
            ngx_del_timer(ev);
        }
        if ev.posted() != 0 {
            ngx_delete_posted_event(ev);
        }
    }
}

/// Wakes every request of this worker waiting on `key` in `zone`.
fn wake_waiters(zone: *const Zone, key: &[u8]) {
    let woken = WAITERS.with(|w| w.borrow_mut().remove(&(zone as usize, key.to_vec())));
    for state in woken.into_iter().flatten() {
        // SAFETY: registered waiters are live until stop_waiting removes them.
        let state = unsafe { &mut *state };
        wake(state, CacheStatus::Collapsed);
    }
}

fn wake(state: &mut RequestState, status: CacheStatus) {
    state.waiting = false;
    state.wake_pending = true;
    state.status = Some(status);
    let ev = &mut state.wait_event;
    // SAFETY: the event is ours and armed while waiting.
    unsafe {
        if ev.timer_set() != 0 {
            ngx_del_timer(ev);
        }
        ngx_post_event(ev, &raw mut ngx_posted_events);
    }
}

/// `$cache_lock_timeout` is over: go on without the fill (logged at warn).
fn give_up_waiting(state: &mut RequestState, req: &ngx_http_request_t) {
    state.status = Some(CacheStatus::Timeout);
    state.phase = Phase::Done;
    let key = state
        .settings
        .as_ref()
        .map(|s| String::from_utf8_lossy(&s.key).into_owned())
        .unwrap_or_default();
    ngx::ngx_log_error!(
        NGX_LOG_WARN,
        log_of(req),
        "stale_cache: waited $cache_lock_timeout for the request filling \"{}\"; going on \
         without it",
        key
    );
}

unsafe extern "C" fn wait_event_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the `wait_event` field of a RequestState, live while armed.
    let state = unsafe {
        &mut *(ev
            .byte_sub(core::mem::offset_of!(RequestState, wait_event))
            .cast::<RequestState>())
    };
    state.wake_pending = false;
    // SAFETY: live event.
    if unsafe { (*ev).timedout() } != 0 {
        // SAFETY: as above.
        unsafe { (*ev).set_timedout(0) };
        stop_waiting(state);
        // SAFETY: the request is live while its state is.
        let req = unsafe { &*state.r };
        give_up_waiting(state, req);
    } else {
        // SAFETY: nginx's own clock update, safe to call from the event loop.
        unsafe { ngx::ffi::ngx_time_update() };
        state.resumed_ms = now_ms();
    }
    let r = state.r;
    // SAFETY: resume the request's phases where the wait stopped them.
    unsafe {
        (*r).read_event_handler = Some(ngx_http_block_reading);
        let c = (*r).connection;
        ngx_http_core_run_phases(r);
        ngx_http_run_posted_requests(c);
    }
}

/// What timer events that belong to no connection point `data` at: nginx's debug log reads
/// `((ngx_connection_t *) ev->data)->fd` for every timer, so it must be a connection, and
/// fd -1 says "none".
fn no_connection() -> *mut c_void {
    thread_local! {
        static NONE: Box<ngx::ffi::ngx_connection_t> = {
            // SAFETY: a zeroed connection is inert; only its fd is ever read.
            let mut c: Box<ngx::ffi::ngx_connection_t> = Box::new(unsafe { core::mem::zeroed() });
            c.fd = -1;
            c
        };
    }
    NONE.with(|c| &**c as *const ngx::ffi::ngx_connection_t as *mut c_void)
}

fn arm_poll_timer() {
    POLL_EVENT.with(|p| {
        let mut p = p.borrow_mut();
        let ev = p.get_or_insert_with(|| {
            // SAFETY: a zeroed event is nginx's initial state for one.
            let mut ev: Box<ngx_event_t> = Box::new(unsafe { core::mem::zeroed() });
            ev.handler = Some(poll_waiters);
            ev.data = no_connection();
            // SAFETY: the cycle log lives as long as the worker.
            ev.log = unsafe { (*ngx::ffi::ngx_cycle).log };
            ev.set_cancelable(1);
            ev
        });
        if ev.timer_set() == 0 {
            // SAFETY: the boxed event lives for the worker's lifetime.
            unsafe { ngx::ffi::ngx_add_timer(&mut **ev, WAIT_POLL_MS) };
        }
    });
}

/// Re-checks the locks this worker's waiters wait for: a release or takeover by another
/// worker wakes them.
unsafe extern "C" fn poll_waiters(_ev: *mut ngx_event_t) {
    let now = now_ms();
    let keys: Vec<(usize, Vec<u8>)> = WAITERS.with(|w| w.borrow().keys().cloned().collect());
    for (zone_id, key) in keys {
        // SAFETY: zone ids are addresses of zones in the main conf, live for the cycle.
        let zone = unsafe { &*(zone_id as *const Zone) };
        let holder = zone.with_key(&key, |t, fp| t.lock_state(fp, now)).flatten();
        let waited: Vec<*mut RequestState> = WAITERS.with(|w| {
            w.borrow()
                .get(&(zone_id, key.clone()))
                .cloned()
                .unwrap_or_default()
        });
        let released = match holder {
            None => true,
            // SAFETY: waiters are live while registered.
            Some(h) => waited
                .iter()
                .all(|&s| unsafe { (*s).waited_token } != h.token.get()),
        };
        if released {
            wake_waiters(zone, &key);
        }
    }
    if WAITERS.with(|w| !w.borrow().is_empty()) {
        arm_poll_timer();
    }
}

/// Releases a lock this worker holds and wakes its local waiters at once.
fn release(lock: &HeldLock, filled: bool) {
    // SAFETY: zones live for the cycle; the lock was taken in this cycle.
    let zone = unsafe { &*lock.zone };
    // The release time dates the store that waiters are woken for: read the clock afresh
    // (nginx's cached time can be a whole event-loop iteration old).
    // SAFETY: nginx's own clock update, safe to call from the event loop.
    unsafe { ngx::ffi::ngx_time_update() };
    let now = now_ms();
    zone.with_key(&lock.key, |t, fp| t.unlock(fp, lock.token, now, filled));
    wake_waiters(lock.zone, &lock.key);
}

/* ------------------------------------------------------------------- refresh */

/// Builds the refresh request (a replay of this one) and picks where to send it.
fn refresh_request(
    state: &RequestState,
    req: &ngx_http_request_t,
    lcf: &LocConf,
    lock: HeldLock,
) -> Result<PendingRefresh, (HeldLock, &'static str)> {
    let settings = state
        .settings
        .as_ref()
        .expect("settings parsed before lookup");
    let target = match lcf.refresh_target(req) {
        Ok(t) => t,
        Err(why) => return Err((lock, why)),
    };
    let header_pairs: Vec<(&[u8], &[u8])> = headers(req)
        // SAFETY: live header entries of the live request.
        .map(|h| unsafe { (str_bytes(&(*h).key), str_bytes(&(*h).value)) })
        .collect();
    let host = str_bytes(&req.headers_in.server);
    let secret = main_conf().secret.as_bytes();
    let body = if has_body(req) {
        match body_bytes(req) {
            Some(body) => Some(body),
            None => {
                return Err((
                    lock,
                    "stale_cache: the request body is too large to replay (over 1 MiB) or \
                     unreadable; no refresh for this stale entry",
                ))
            }
        }
    } else {
        None
    };
    // Only a key this request PERSISTs can need its expiry back, and only with a location to
    // send EXPIRE to.
    let restore_ttl =
        (state.persist_pending && settings.expire_uri.is_some()).then_some(state.ttl.max(1) as u64);
    let mut replay = Replay {
        method: str_bytes(&req.method_name),
        target: str_bytes(&req.unparsed_uri),
        host,
        headers: &header_pairs,
        body: body.as_deref(),
        skip_header: &settings.skip_fetch,
        secret_header: SECRET_HEADER.as_bytes(),
        secret,
        restore_ttl: None,
    };
    let request = replay.to_bytes();
    let restore = restore_ttl.map(|ttl| {
        replay.restore_ttl = Some(ttl);
        replay.to_bytes()
    });
    Ok(PendingRefresh {
        request,
        restore,
        uri: String::from_utf8_lossy(str_bytes(&req.unparsed_uri)).into_owned(),
        target,
        timeout: settings.lock_exptime_ms,
        lock,
    })
}

/* ----------------------------------------------------------------- variables */

pub unsafe extern "C" fn status_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    match existing_state(r).and_then(|s| s.status) {
        Some(status) => vars::set_value(v, status.as_str().as_bytes()),
        None => vars::set_not_found(v),
    }
    NGX_OK
}

pub unsafe extern "C" fn wake_delay_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    let Some(delay) = existing_state(r).and_then(|s| s.wake_delay_ms) else {
        vars::set_not_found(v);
        return NGX_OK;
    };
    let text = delay.to_string();
    // SAFETY: r is live; the value is copied into its pool so it lives as long as it.
    match pool_str(unsafe { (*r).pool }, text.as_bytes()) {
        Some(s) => vars::set_value(v, str_bytes(&s)),
        None => vars::set_not_found(v),
    }
    NGX_OK
}

pub unsafe extern "C" fn skip_fetch_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    let refresh = existing_state(r).is_some_and(|s| s.is_refresh);
    vars::set_value(v, if refresh { b"1" } else { b"" });
    NGX_OK
}

/* ------------------------------------------------------------------- filters */

/// The capture state of `r` if it is one of this module's lookup subrequests.
///
/// Recognised by its post-subrequest handler, which (unlike module contexts) survives an
/// internal redirect of the subrequest, e.g. by `error_page` when Redis is down.
fn capture_of<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestState> {
    // SAFETY: r is live; a subrequest's post_subrequest record is null or valid, and
    // lookup_done is only ever given a RequestState as data.
    unsafe {
        if (*r).main == r || (*r).post_subrequest.is_null() {
            return None;
        }
        let ps = &*(*r).post_subrequest;
        let ours = ps
            .handler
            .is_some_and(|h| core::ptr::fn_addr_eq(h, lookup_done as LookupDoneFn));
        (ours && !ps.data.is_null()).then(|| &mut *(ps.data as *mut RequestState))
    }
}

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls filters with a live request.
    if unsafe { (*r).main } == r {
        if let Some(state) = existing_state(r).filter(|s| s.is_refresh) {
            warn_if_refresh_was_a_hit(state);
        }
    }
    if let Some(state) = capture_of(r) {
        // SAFETY: live subrequest.
        unsafe {
            state.capture.status = (*r).headers_out.status;
            (*r).set_header_sent(1);
        }
        return NGX_OK;
    }
    // SAFETY: the saved next filter of the chain, set in postconfiguration.
    unsafe { NEXT_HEADER_FILTER.map_or(NGX_ERROR, |next| next(r)) }
}

pub unsafe extern "C" fn body_filter(
    r: *mut ngx_http_request_t,
    chain: *mut ngx_chain_t,
) -> ngx_int_t {
    if let Some(state) = capture_of(r) {
        let mut cl = chain;
        // SAFETY: walks the chain handed to the filter; memory buffers are readable.
        unsafe {
            while !cl.is_null() {
                let b = (*cl).buf;
                if (*b).in_file() == 0 || (*b).memory() != 0 || (*b).temporary() != 0 {
                    let len = (*b).last.offset_from((*b).pos) as usize;
                    if len > 0 {
                        let bytes = core::slice::from_raw_parts((*b).pos, len);
                        let room = CAPTURE_LIMIT.saturating_sub(state.capture.body.len());
                        if bytes.len() > room {
                            state.capture.overflow = true;
                        }
                        state
                            .capture
                            .body
                            .extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                    (*b).pos = (*b).last;
                }
                if (*b).in_file() != 0 {
                    (*b).file_pos = (*b).file_last;
                }
                cl = (*cl).next;
            }
        }
        return NGX_OK;
    }
    // SAFETY: the saved next filter of the chain, set in postconfiguration.
    unsafe { NEXT_BODY_FILTER.map_or(NGX_ERROR, |next| next(r, chain)) }
}

/// A refresh that srcache answered from the cache refreshes nothing: say how to fix the
/// configuration (once per interval).
fn warn_if_refresh_was_a_hit(state: &RequestState) {
    let name = b"srcache_fetch_status";
    let mut key = ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: a live main request; nginx looks the variable up by name (not found: empty).
    let hit = unsafe {
        let hash = ngx::ffi::ngx_hash_key(key.data, key.len);
        let v = ngx::ffi::ngx_http_get_variable(state.r, &mut key, hash);
        !v.is_null()
            && (*v).valid() != 0
            && (*v).not_found() == 0
            && core::slice::from_raw_parts((*v).data, (*v).len() as usize) == b"HIT"
    };
    if hit {
        // SAFETY: the request is live while its state is.
        let req = unsafe { &*state.r };
        log_limited(
            log_of(req),
            NGX_LOG_WARN,
            "refresh-hit",
            &format!(
                "stale_cache: the refresh of \"{}\" was answered from the cache, so nothing was \
                 refreshed; skip srcache_fetch for refreshes with \"srcache_fetch_skip \
                 $stale_cache_skip_fetch;\" (or the \"if ($http_x_skip_fetch != TRUE)\" line)",
                String::from_utf8_lossy(str_bytes(&req.unparsed_uri))
            ),
        );
    }
}

/// Puts the capture filters at the top of the output chains.
pub fn install_filters() {
    // SAFETY: called once from postconfiguration, single-threaded, like every nginx filter.
    unsafe {
        NEXT_HEADER_FILTER = ngx::ffi::ngx_http_top_header_filter;
        ngx::ffi::ngx_http_top_header_filter = Some(header_filter);
        NEXT_BODY_FILTER = ngx::ffi::ngx_http_top_body_filter;
        ngx::ffi::ngx_http_top_body_filter = Some(body_filter);
    }
}
