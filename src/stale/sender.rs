//! Sending a refresh: an HTTP/1.1 request to this nginx, sent on the event loop after the
//! client's response is complete, on a connection of its own (the client's keep-alive
//! connection never waits for it). srcache stores only main requests, which is why this is a
//! request and not a subrequest.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{ngx_add_timer, ngx_del_timer};
use ngx::ffi::{
    ngx_close_connection, ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_handle_read_event, ngx_handle_write_event, ngx_log_t, ngx_msec_t,
    ngx_peer_connection_t, ngx_str_t, sockaddr, socklen_t, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN,
};

use crate::nginx::log::{self, Every};
use crate::nginx::util::{current_msec, cycle_log, AGAIN, OK};
use crate::replay::{head_has_header, parse_status_line};

/// How much of a refresh's response is kept: its status line and headers.
const HEAD_LIMIT: usize = 8192;

/// Where refresh requests go: this nginx's own listener, or `stale_cache_refresh_address`.
#[derive(Clone)]
pub struct RefreshTarget {
    /// A `struct sockaddr` of `sockaddr.len()` bytes.
    pub sockaddr: Vec<u8>,
    pub name: String,
}

/// How a refresh ended, for the lock release and the log.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The response's status code (the refresh request ran to completion), confirmed by this
    /// nginx's stale-cache layer.
    Status(u16),
    /// A status without the layer's confirmation header: whatever answered is not a
    /// stale-cache location of this nginx (a wrong `stale_cache_refresh_address`).
    Unconfirmed(u16),
    /// No answer within the refresh's time: the backend may be slow, or down.
    TimedOut(&'static str),
    Failed(&'static str),
}

/// The header a refresh's response carries when this nginx's stale-cache layer handled it as a
/// refresh; a 2xx without it counts as failed (a foreign server answered).
pub const CONFIRM_HEADER: &str = "X-Stale-Cache-Refreshed";

type OnDone = Box<dyn FnOnce(&RefreshOutcome, ngx_msec_t)>;

struct Refresh {
    peer: ngx_peer_connection_t,
    target: RefreshTarget,
    peer_name: ngx_str_t,
    request: Vec<u8>,
    sent: usize,
    /// The start of the response, enough for its status line and headers.
    head: Vec<u8>,
    deadline: ngx_msec_t,
    started: ngx_msec_t,
    /// For the log lines: the refreshed URI and what the request is for.
    uri: String,
    what: &'static str,
    log: *mut ngx_log_t,
    on_done: Option<OnDone>,
}

/// Starts a refresh; `on_done` runs exactly once, when it ends or fails.
pub fn start(
    target: &RefreshTarget,
    request: Vec<u8>,
    uri: String,
    what: &'static str,
    timeout: u64,
    on_done: OnDone,
) {
    let timeout = timeout as ngx_msec_t;
    // The cycle's log outlives every refresh.
    let log = cycle_log();
    let now = current_msec();
    let mut refresh = Box::new(Refresh {
        // SAFETY: a zeroed peer connection is nginx's initial state for it.
        peer: unsafe { core::mem::zeroed() },
        target: target.clone(),
        peer_name: ngx_str_t::default(),
        request,
        sent: 0,
        head: Vec::with_capacity(512),
        deadline: now + timeout,
        started: now,
        uri,
        what,
        log,
        on_done: Some(on_done),
    });
    let r = &mut *refresh;
    r.peer_name = ngx_str_t {
        len: r.target.name.len(),
        data: r.target.name.as_ptr() as *mut u8,
    };
    r.peer.sockaddr = r.target.sockaddr.as_ptr() as *mut sockaddr;
    r.peer.socklen = r.target.sockaddr.len() as socklen_t;
    r.peer.name = &mut r.peer_name;
    r.peer.get = Some(ngx_event_get_peer);
    r.peer.log = log;
    r.peer.set_log_error(1); // NGX_ERROR_ERR
    r.peer.tries = 1;

    // SAFETY: the peer connection is fully initialised above and lives in the Box, whose
    // address stays fixed until `finish` frees it.
    let rc = unsafe { ngx_event_connect_peer(&mut r.peer) };
    if rc != OK && rc != AGAIN {
        let raw = Box::into_raw(refresh);
        // SAFETY: `raw` was just leaked from a Box and is finished exactly once.
        unsafe { finish(raw, RefreshOutcome::Failed("cannot connect")) };
        return;
    }
    let raw = Box::into_raw(refresh);
    // SAFETY: on OK/AGAIN nginx set up `peer.connection` with its two events.
    unsafe {
        let c = (*raw).peer.connection;
        (*c).data = raw as *mut c_void;
        (*c).log = log;
        (*(*c).read).log = log;
        (*(*c).write).log = log;
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        ngx_add_timer((*c).write, timeout);
        if rc == OK {
            on_write((*c).write);
        }
    }
}

/// The refresh a connection event belongs to.
///
/// # Safety
/// `ev` must be an event of a connection created by `start`.
unsafe fn refresh_of(ev: *mut ngx_event_t) -> (*mut Refresh, *mut ngx_connection_t) {
    // SAFETY: (caller) the event's data is our connection, whose data is the Refresh.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        ((*c).data as *mut Refresh, c)
    }
}

/// The refresh of a connection event, or `None` after finishing it because the event timed
/// out.
///
/// # Safety
/// `ev` must be an event of a live connection created by `start`.
unsafe fn live_refresh(
    ev: *mut ngx_event_t,
    on_timeout: &'static str,
) -> Option<(*mut Refresh, *mut ngx_connection_t)> {
    // SAFETY: (caller) a live event of one of our connections.
    unsafe {
        let (raw, c) = refresh_of(ev);
        // `close`: the worker is shutting down (worker_shutdown_timeout) and asks us to go.
        let failure = if (*c).close() != 0 {
            Some(RefreshOutcome::Failed("worker shutting down"))
        } else if (*ev).timedout() != 0 {
            Some(RefreshOutcome::TimedOut(on_timeout))
        } else {
            None
        };
        if let Some(outcome) = failure {
            // Frees `raw` once; the caller returns without touching it.
            finish(raw, outcome);
            return None;
        }
        Some((raw, c))
    }
}

unsafe extern "C" fn on_write(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this with a write event of a refresh connection.
    let Some((raw, c)) = (unsafe { live_refresh(ev, "timed out connecting or sending") }) else {
        return;
    };
    // SAFETY: the Refresh lives until `finish`.
    let r = unsafe { &mut *raw };
    while r.sent < r.request.len() {
        let rest = &r.request[r.sent..];
        // SAFETY: `c` is the live connection; `send` reads at most `rest.len()` bytes.
        let n = unsafe { (*c).send.unwrap()(c, rest.as_ptr() as *mut u8, rest.len()) };
        if n == AGAIN {
            // SAFETY: live write event.
            if unsafe { ngx_handle_write_event(ev, 0) } != OK {
                // SAFETY: `raw` is live; finished once, then the handler returns.
                unsafe { finish(raw, RefreshOutcome::Failed("cannot wait for the socket")) };
            }
            return;
        }
        if n <= 0 {
            // SAFETY: as above.
            unsafe { finish(raw, RefreshOutcome::Failed("send failed")) };
            return;
        }
        r.sent += n as usize;
    }
    // The whole request is out: wait for the response until the deadline.
    // SAFETY: live events of the live connection.
    unsafe {
        if (*ev).timer_set() != 0 {
            ngx_del_timer(ev);
        }
        (*ev).handler = Some(ignore_event);
        let rev = (*c).read;
        let left = r.deadline.saturating_sub(current_msec()).max(1);
        ngx_add_timer(rev, left);
        if (*rev).ready() != 0 {
            on_read(rev);
        } else if ngx_handle_read_event(rev, 0) != OK {
            finish(raw, RefreshOutcome::Failed("cannot wait for the socket"));
        }
    }
}

unsafe extern "C" fn ignore_event(_ev: *mut ngx_event_t) {}

unsafe extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this with a read event of a refresh connection.
    let Some((raw, c)) = (unsafe { live_refresh(ev, "timed out waiting for the response") }) else {
        return;
    };
    // SAFETY: the Refresh lives until `finish`.
    let r = unsafe { &mut *raw };
    if r.sent < r.request.len() {
        return; // a read event before the request is out: nothing to read yet
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `c` is live; `recv` writes at most `buf.len()` bytes.
        let n = unsafe { (*c).recv.unwrap()(c, buf.as_mut_ptr(), buf.len()) };
        if n == AGAIN {
            // SAFETY: live read event.
            if unsafe { ngx_handle_read_event(ev, 0) } != OK {
                // SAFETY: `raw` is live; finished once, then the handler returns.
                unsafe { finish(raw, RefreshOutcome::Failed("cannot wait for the socket")) };
            }
            return;
        }
        if n < 0 {
            // SAFETY: `raw` is live; finished once, then the handler returns.
            unsafe { finish(raw, RefreshOutcome::Failed("connection error")) };
            return;
        }
        if n == 0 {
            // The server closes the connection (we sent "Connection: close") only after the
            // request, srcache's store subrequest included, is completely finished.
            let confirmed = head_has_header(&r.head, CONFIRM_HEADER.as_bytes());
            let outcome = match parse_status_line(&r.head) {
                // Only a success needs confirming: an error status is a failure anyway.
                Some(status) if confirmed || !(200..300).contains(&status) => {
                    RefreshOutcome::Status(status)
                }
                Some(status) => RefreshOutcome::Unconfirmed(status),
                None => RefreshOutcome::Failed("no valid HTTP response"),
            };
            // SAFETY: as above.
            unsafe { finish(raw, outcome) };
            return;
        }
        let keep = (HEAD_LIMIT - r.head.len().min(HEAD_LIMIT)).min(n as usize);
        r.head.extend_from_slice(&buf[..keep]);
    }
}

/// Ends a refresh: closes its connection, logs the outcome, runs `on_done`, frees it.
///
/// # Safety
/// `raw` must come from `Box::into_raw` in `start` and not be used after this call.
unsafe fn finish(raw: *mut Refresh, outcome: RefreshOutcome) {
    // SAFETY: (caller) `raw` is the live, uniquely owned Refresh.
    let mut refresh = unsafe { Box::from_raw(raw) };
    let c = refresh.peer.connection;
    if !c.is_null() {
        // SAFETY: the connection is ours and still open; closing also drops its timers.
        unsafe { ngx_close_connection(c) };
        refresh.peer.connection = ptr::null_mut();
    }
    let elapsed = current_msec().saturating_sub(refresh.started);
    let (level, text) = match &outcome {
        RefreshOutcome::Status(s) if (200..300).contains(s) => (NGX_LOG_INFO, format!("{s}")),
        RefreshOutcome::Status(s) => (NGX_LOG_WARN, format!("status {s}")),
        RefreshOutcome::Unconfirmed(s) => (
            NGX_LOG_ERR,
            format!(
                "answered {s} without the {CONFIRM_HEADER} header: the address is not a plain \
                 HTTP listener of this nginx serving this location with stale_cache on; fix \
                 stale_cache_refresh_address"
            ),
        ),
        RefreshOutcome::Failed(why) | RefreshOutcome::TimedOut(why) => {
            (NGX_LOG_ERR, format!("failed: {why}"))
        }
    };
    let args = format_args!(
        "stale_cache: {} of \"{}\" via {} {} in {} ms",
        refresh.what,
        crate::resp::Escaped(refresh.uri.as_bytes()),
        refresh.target.name,
        text,
        elapsed
    );
    if level == NGX_LOG_INFO {
        ngx::ngx_log_error!(level, refresh.log, "{}", args);
    } else {
        // A misconfigured address fails every refresh: one line per interval says so.
        log::limited(refresh.log, level, "refresh-failed", Every::Interval, args);
    }
    if let Some(done) = refresh.on_done.take() {
        done(&outcome, elapsed);
    }
}

/// The target for a listener's address, with a wildcard address replaced by loopback.
pub fn loopback_if_wildcard(sockaddr: &[u8]) -> RefreshTarget {
    let mut bytes = sockaddr.to_vec();
    let family = if bytes.len() >= 2 {
        i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]))
    } else {
        libc::AF_UNSPEC
    };
    let name = match family {
        libc::AF_INET if bytes.len() >= 8 => {
            if bytes[4..8] == [0, 0, 0, 0] {
                bytes[4..8].copy_from_slice(&[127, 0, 0, 1]);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = std::net::Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            format!("{ip}:{port}")
        }
        libc::AF_INET6 if bytes.len() >= 24 => {
            if bytes[8..24].iter().all(|&b| b == 0) {
                bytes[23] = 1;
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[8..24]);
            format!("[{}]:{}", std::net::Ipv6Addr::from(octets), port)
        }
        libc::AF_UNIX => {
            let path = &bytes[2..];
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            format!("unix:{}", String::from_utf8_lossy(&path[..end]))
        }
        _ => "this server".to_string(),
    };
    RefreshTarget {
        sockaddr: bytes,
        name,
    }
}
