//! The background refresh of a stale key: preparing it while the stale hit's request is in
//! the access phase (a replay of that request, and where to send it), sending it when the
//! request is over, and releasing the refresh lock with its outcome.

use core::cell::{Cell, RefCell};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::collections::HashMap;

use core::ptr;

use ngx::ffi::{
    ngx_event_t, ngx_http_request_t, ngx_read_file, ngx_str_t, ngx_table_elt_t, NGX_LOG_ERR,
    NGX_LOG_WARN,
};

use super::conf::StaleCacheConf;
use super::sender::{self, RefreshOutcome, RefreshTarget};
use super::waiters::{HeldLock, RefreshPolicy};
use crate::collapse::RefreshEnd;
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::timer::Timer;
use crate::nginx::util::{cycle_log, live_headers, request_log, str_bytes};
use crate::policy::CacheStatus;
use crate::replay::Replay;
use crate::resp::Escaped;
use crate::settings::Settings;
use crate::stale::StaleCacheModule;
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf, NgxHttpCoreModule};

/// The header the module's own refresh requests carry the per-start secret in.
pub const SECRET_HEADER: &str = "X-Stale-Cache-Refresh";
/// The largest request body a refresh replays.
const MAX_REPLAY_BODY: usize = 1 << 20;

/// A refresh to start once the client's request is finished.
pub struct PendingRefresh {
    request: Vec<u8>,
    uri: String,
    target: RefreshTarget,
    timeout: u64,
    lock: HeldLock,
    /// What its end leaves behind (backoff, stale-if-error).
    policy: RefreshPolicy,
    slot: Slot,
    /// It revalidates a stored response (stale_cache_http): a 304 refreshed the entry.
    revalidates: bool,
}

thread_local! {
    /// Refreshes of this worker prepared or in flight (each holds a `Slot`).
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
    /// Stale hits served without a refresh because of the limit, for the log line.
    static SKIPPED: Cell<u64> = const { Cell::new(0) };
}

/// One of this worker's `stale_cache_refresh_limit` refreshes; given back when dropped,
/// however the refresh ends.
pub struct Slot(());

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.set(IN_FLIGHT.get().saturating_sub(1));
    }
}

/// A slot for a refresh of `key`, or `None` (counted, logged once per interval) when the
/// worker has `stale_cache_refresh_limit` refreshes in flight: the stale copy is served
/// without one, so many stale keys cannot turn into as many connections.
pub fn take_slot(req: &ngx_http_request_t, scf: &StaleCacheConf, key: &[u8]) -> Option<Slot> {
    let n = IN_FLIGHT.get();
    if n >= scf.refresh_limit {
        SKIPPED.set(SKIPPED.get() + 1);
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "refresh-limit",
            Every::Interval,
            format_args!(
                "stale_cache: {} refreshes in flight in this worker (stale_cache_refresh_limit \
                 {}): stale hit of \"{}\" served without a refresh ({} such hits so far)",
                n,
                scf.refresh_limit,
                Short(key),
                SKIPPED.get()
            ),
        );
        return None;
    }
    IN_FLIGHT.set(n + 1);
    Some(Slot(()))
}

/// Why a stale hit starts no refresh.
#[derive(Debug)]
pub enum RefreshError {
    /// The client's listener cannot take a plain HTTP/1.1 refresh and none is configured.
    NoPlainListener,
    /// The body is over MAX_REPLAY_BODY or its temp file cannot be read.
    BodyNotReplayable,
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefreshError::NoPlainListener => {
                "the client came over TLS, HTTP/2 or the PROXY protocol, so the refresh cannot \
                 reuse its listener; set \"stale_cache_refresh_address\" to a plain HTTP \
                 listener (e.g. 127.0.0.1:8080 or unix:/run/nginx-refresh.sock)"
            }
            RefreshError::BodyNotReplayable => {
                "the request body is too large to replay (over 1 MiB) or unreadable; no \
                 refresh for this stale entry"
            }
        })
    }
}

/// Prepares the refresh for the refresh lock `lock` this request holds (`grace`: the key is
/// in its error grace band). On failure the reason is logged (rate-limited) and the lock
/// released by its drop: the client still gets the stale copy.
pub fn prepare(
    lock: HeldLock,
    slot: Slot,
    settings: &Settings,
    grace: bool,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    conditional: &[(Vec<u8>, Vec<u8>)],
) -> Option<PendingRefresh> {
    build(lock, slot, settings, grace, req, scf, conditional)
        .inspect_err(|error| {
            log::limited(
                request_log(req),
                NGX_LOG_ERR,
                "refresh",
                Every::Interval,
                format_args!("stale_cache: {error}"),
            )
        })
        .ok()
}

fn is_conditional(name: &[u8]) -> bool {
    [
        &b"if-none-match"[..],
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
    ]
    .iter()
    .any(|c| name.eq_ignore_ascii_case(c))
}

/// The refresh request (a replay of this one) and where it goes.
fn build(
    lock: HeldLock,
    slot: Slot,
    settings: &Settings,
    grace: bool,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    conditional: &[(Vec<u8>, Vec<u8>)],
) -> Result<PendingRefresh, RefreshError> {
    let target = target(scf, req)?;
    let body = if has_body(req) {
        Some(body_bytes(req).ok_or(RefreshError::BodyNotReplayable)?)
    } else {
        None
    };
    // A revalidating refresh (stale_cache_http) sends the stored response's validators in
    // place of the client's.
    let mut header_pairs: Vec<(&[u8], &[u8])> = live_headers(req)
        .map(|h| (str_bytes(&h.key), str_bytes(&h.value)))
        .filter(|(k, _)| conditional.is_empty() || !is_conditional(k))
        .collect();
    header_pairs.extend(conditional.iter().map(|(k, v)| (&k[..], &v[..])));
    let secret = crate::stale::main_conf(req).secret.as_bytes();
    let replay = Replay {
        method: str_bytes(&req.method_name),
        target: str_bytes(&req.unparsed_uri),
        host: replay_host(req, &target),
        headers: &header_pairs,
        body: body.as_deref(),
        skip_header: &settings.skip_fetch,
        secret_header: SECRET_HEADER.as_bytes(),
        secret,
        credentials: scf.replays_credentials(),
    };
    let request = replay.to_bytes();
    Ok(PendingRefresh {
        request,
        uri: String::from_utf8_lossy(str_bytes(&req.unparsed_uri)).into_owned(),
        target,
        timeout: settings.lock_exptime_ms,
        lock,
        policy: RefreshPolicy {
            grace,
            pass_ms: settings.pass_ttl_ms,
            use_stale: scf.use_stale(),
            backoff: scf.refresh_backoff(),
        },
        slot,
        revalidates: !conditional.is_empty(),
    })
}

/// The longest a prepared refresh waits for the stale response to be handed to nginx's
/// output: a slow or stalled client never holds the key's refresh longer than this.
pub const START_BOUND_MS: u64 = 100;

/// A prepared refresh waiting for its start: the stale response handed to nginx's output,
/// `START_BOUND_MS`, or the request's end, whichever comes first.
struct Armed {
    request: usize,
    pending: Option<PendingRefresh>,
}

thread_local! {
    /// This worker's armed refreshes, by the address of their (live) main request.
    static ARMED: RefCell<HashMap<usize, Timer<Armed>>> = RefCell::new(HashMap::new());
}

/// How many refreshes ARMED holds, read without reaching the thread-local (every request's
/// output and end ask, and almost always find none). A worker is one thread: relaxed is
/// enough.
static ARMED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Arms the refresh main request `r` prepared, once the stale path's own steps
/// (PERSIST/EXPIRE) are done: it starts when the stale response has been handed to nginx's
/// output, and within `START_BOUND_MS` at the latest, however slowly the client reads.
pub fn arm(r: *mut ngx_http_request_t, pending: PendingRefresh) {
    let request = r as usize;
    let armed = Armed {
        request,
        pending: Some(pending),
    };
    // Shutting down drops the timer; the request's end still sends the refresh.
    let mut timer = Timer::new(armed, armed_timer, cycle_log(), true);
    timer.arm(START_BOUND_MS);
    if ARMED
        .with(|a| a.borrow_mut().insert(request, timer))
        .is_none()
    {
        ARMED_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the armed refresh of main request `request`, if any.
fn start_armed(request: usize, why: &str) {
    if ARMED_COUNT.load(Ordering::Relaxed) == 0 {
        // Most requests end with no refresh armed: no hashing.
        return;
    }
    // Dropping the timer deletes it.
    let Some(mut timer) = ARMED.with(|a| a.borrow_mut().remove(&request)) else {
        return;
    };
    ARMED_COUNT.fetch_sub(1, Ordering::Relaxed);
    if let Some(pending) = timer.data_mut().pending.take() {
        debug!(cycle_log(), "stale_cache: refresh starts: {}", why);
        send(pending);
    }
}

unsafe extern "C" fn armed_timer(ev: *mut ngx_event_t) {
    // SAFETY: `ev` is the timer of an armed refresh in ARMED (removing it deletes the timer).
    let request = unsafe { Timer::<Armed>::data_of(ev) }.request;
    start_armed(request, "the stale response is still being written");
}

/// The main request's last buffer has been handed to nginx's output.
pub fn output_done(r: &ngx_http_request_t) {
    if ARMED_COUNT.load(Ordering::Relaxed) != 0 {
        start_armed(
            r as *const _ as usize,
            "the stale response was handed to the output",
        );
    }
}

/// The request is over: its refresh starts now if it has not yet.
pub fn request_ended(r: *mut ngx_http_request_t, unarmed: Option<Box<PendingRefresh>>) {
    start_armed(r as usize, "the request ended");
    if let Some(pending) = unarmed {
        send(*pending);
    }
}

/// Sends a prepared refresh; when it ends, releases its lock and its slot.
pub fn send(pending: PendingRefresh) {
    let PendingRefresh {
        request,
        uri,
        target,
        timeout,
        lock,
        policy,
        slot,
        revalidates,
    } = pending;
    debug!(
        crate::nginx::util::cycle_log(),
        "stale_cache: sending the refresh for \"{}\" to {}",
        Short(lock.key()),
        target.name
    );
    lock.zone().count(Counter::RefreshesSent);
    sender::start(
        &target,
        request,
        uri,
        "refresh",
        timeout,
        Box::new(move |outcome: &RefreshOutcome, _ms| {
            let end = match outcome {
                RefreshOutcome::Status(s) if (200..300).contains(s) => RefreshEnd::Stored,
                // The store location merged the 304 into the stored response.
                RefreshOutcome::Status(304) if revalidates => RefreshEnd::Stored,
                RefreshOutcome::Status(s) => RefreshEnd::Status(*s),
                RefreshOutcome::TimedOut(_) => RefreshEnd::Timeout,
                // Whatever answered is not this nginx's stale-cache layer: nothing is known
                // about the backend, and nothing was stored.
                RefreshOutcome::Failed(_) | RefreshOutcome::Unconfirmed(_) => RefreshEnd::Error,
            };
            let end = super::store::refresh_end(end, &lock);
            let counter = if end == RefreshEnd::Stored {
                Counter::RefreshesSucceeded
            } else {
                Counter::RefreshesFailed
            };
            lock.zone().count(counter);
            lock.end_refresh(end, policy);
            drop(slot);
        }),
    );
}

/// The Host the refresh sends: the client's; for a request without one (HTTP/1.0), the
/// server's name, else the address the refresh goes to (HTTP/1.1 requires a Host).
pub(super) fn replay_host<'a>(req: &'a ngx_http_request_t, target: &'a RefreshTarget) -> &'a [u8] {
    let client = str_bytes(&req.headers_in.server);
    if !client.is_empty() {
        return client;
    }
    let server_name =
        NgxHttpCoreModule::server_conf(req).map_or(&[][..], |cscf| str_bytes(&cscf.server_name));
    if !server_name.is_empty() {
        return server_name;
    }
    target.name.as_bytes()
}

pub fn has_body(req: &ngx_http_request_t) -> bool {
    req.headers_in.content_length_n > 0 || req.headers_in.chunked() != 0
}

/// The request body's bytes, from memory and temp-file buffers; `None` when too large.
fn body_bytes(req: &ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: the read body's chain and buffers live in the request pool; file buffers refer
    // to the body's temp file, open while the request lives.
    let Some(body) = (unsafe { req.request_body.as_ref() }) else {
        return Some(out);
    };
    let mut cl = body.bufs;
    // SAFETY: as above, links are valid to the end of the chain.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        let b = unsafe { &*link.buf };
        let in_file = b.in_file() != 0 && b.memory() == 0 && b.temporary() == 0;
        let len = if in_file {
            (b.file_last - b.file_pos) as usize
        } else {
            // SAFETY: a memory buffer's `pos..last` lies within one allocation.
            unsafe { b.last.offset_from(b.pos) as usize }
        };
        if out.len() + len > MAX_REPLAY_BODY {
            return None;
        }
        let start = out.len();
        out.resize(start + len, 0);
        if in_file {
            // SAFETY: reads `len` bytes of the open temp file into the space just made.
            let n = unsafe { ngx_read_file(b.file, out.as_mut_ptr().add(start), len, b.file_pos) };
            if n != len as isize {
                return None;
            }
        } else if len > 0 {
            // SAFETY: as above.
            out[start..].copy_from_slice(unsafe { core::slice::from_raw_parts(b.pos, len) });
        }
        cl = link.next;
    }
    Some(out)
}

/// Where this request's refresh goes: the configured address, or the plain-HTTP listener the
/// client used (a wildcard one through loopback).
pub(super) fn target(
    scf: &StaleCacheConf,
    r: &ngx_http_request_t,
) -> Result<RefreshTarget, RefreshError> {
    if let Some(target) = &scf.refresh_target {
        return Ok(target.clone());
    }
    // SAFETY: a live request has its connection, and an HTTP connection its address
    // configuration.
    let (plain_listener, tls) = unsafe {
        let plain = match r.http_connection.as_ref() {
            None => true,
            Some(hc) => {
                let addr = &*hc.addr_conf;
                addr.ssl() == 0 && addr.http2() == 0 && addr.proxy_protocol() == 0
            }
        };
        (plain, !(*r.connection).ssl.is_null())
    };
    if !plain_listener || !r.stream.is_null() || tls {
        return Err(RefreshError::NoPlainListener);
    }
    // SAFETY: the connection's listener is live; its sockaddr spans socklen bytes.
    let sockaddr = unsafe {
        let ls = &*(*r.connection).listening;
        core::slice::from_raw_parts(ls.sockaddr as *const u8, ls.socklen as usize)
    };
    Ok(sender::loopback_if_wildcard(sockaddr))
}

use super::sender::CONFIRM_HEADER;

/// For main requests, as their header goes out: a refresh's response is marked for the
/// sender, and a refresh that srcache answered from the cache (it refreshes nothing) is
/// reported with how to fix the configuration (once per interval).
pub fn on_response_header(req: &mut ngx_http_request_t, is_refresh: bool) {
    if !is_refresh {
        // srcache stored a refresh's response with the confirmation header in it: a cache
        // hit of that copy must not show it to the client.
        hide_confirm_header(req);
        return;
    }
    // Only a location that runs this layer confirms: a refresh that lands anywhere else (a
    // wrong stale_cache_refresh_address) refreshes nothing.
    if StaleCacheModule::location_conf(req).is_some_and(|c| c.enabled()) {
        add_confirm_header(req);
    }
    if crate::nginx::vars::by_name(req, b"srcache_fetch_status") == Some(b"HIT".as_slice()) {
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "refresh-hit",
            Every::Interval,
            format_args!(
                "stale_cache: the refresh of \"{}\" was answered from the cache, so nothing was \
                 refreshed; skip srcache_fetch for refreshes with \"srcache_fetch_skip \
                 $stale_cache_skip_fetch;\" (or the \"if ($http_x_skip_fetch != TRUE)\" line)",
                Escaped(str_bytes(&req.unparsed_uri))
            ),
        );
    }
}

/// Removes this layer's confirmation header from a response that is not a refresh's.
fn hide_confirm_header(req: &mut ngx_http_request_t) {
    // SAFETY: a live request's headers_out list, walked part by part; its elements are valid.
    unsafe {
        let mut part: *mut ngx::ffi::ngx_list_part_t = &mut req.headers_out.headers.part;
        while let Some(p) = part.as_mut() {
            let elts = p.elts as *mut ngx_table_elt_t;
            for i in 0..p.nelts {
                let h = &mut *elts.add(i);
                if h.hash != 0 && str_bytes(&h.key).eq_ignore_ascii_case(CONFIRM_HEADER.as_bytes())
                {
                    // A hash of 0 marks a deleted header: it is not sent.
                    h.hash = 0;
                }
            }
            part = p.next;
        }
    }
}

fn add_confirm_header(req: &mut ngx_http_request_t) {
    // SAFETY: a live request's headers_out list; the pushed element is fresh pool memory
    // that is fully written below, with static name and value strings.
    unsafe {
        let h = ngx::ffi::ngx_list_push(&mut req.headers_out.headers) as *mut ngx_table_elt_t;
        let Some(h) = h.as_mut() else {
            return;
        };
        h.hash = 1;
        h.key = ngx_str_t {
            len: CONFIRM_HEADER.len(),
            data: CONFIRM_HEADER.as_ptr() as *mut u8,
        };
        h.value = ngx_str_t {
            len: 1,
            data: c"1".as_ptr() as *mut u8,
        };
        h.lowcase_key = ptr::null_mut();
    }
}

/// The LOG phase of a main request: reports, once per interval, a refresh that answered 2xx
/// but that srcache did not store, and (once) a method of `$cache_methods` that srcache does
/// not cache, both of which make the module's work useless.
pub fn check_stored(
    req: &mut ngx_http_request_t,
    is_refresh: bool,
    cache_status: Option<CacheStatus>,
) {
    let status = req.headers_out.status;
    let method = str_bytes(&req.method_name);
    // Only a refresh, or a fill of a method srcache may not cache, has anything to report:
    // a fresh hit asks nothing here.
    let filled_other_method =
        matches!(cache_status, Some(CacheStatus::Miss)) && method != b"GET" && method != b"HEAD";
    if !(200..300).contains(&status) || !(is_refresh || filled_other_method) {
        return;
    }
    let stored =
        crate::nginx::vars::by_name(req, b"srcache_store_status") == Some(b"STORE".as_slice());
    if stored {
        return;
    }
    let uri = Escaped(str_bytes(&req.unparsed_uri));
    if is_refresh {
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "refresh-not-stored",
            Every::Interval,
            format_args!(
                "stale_cache: the refresh of \"{uri}\" answered {status} but srcache stored \
                 nothing, so the stale copy was not refreshed; check srcache_store, \
                 srcache_store_statuses, srcache_methods and the response's Cache-Control"
            ),
        );
        return;
    }
    {
        let method = str_bytes(&req.method_name);
        log::limited(
            request_log(req),
            NGX_LOG_WARN,
            "srcache-methods",
            Every::Once,
            format_args!(
                "stale_cache: $cache_methods lists {} but srcache did not store the {} \
                 response of \"{uri}\": srcache caches GET and HEAD only unless \
                 \"srcache_methods\" lists {} too; until then these requests are collapsed \
                 but never cached",
                Escaped(method),
                Escaped(method),
                Escaped(method)
            ),
        );
    }
}
