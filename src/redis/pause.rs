//! The pause before a cluster retry after `-TRYAGAIN`/`-CLUSTERDOWN`, a leaf of the folder:
//! the retry connects at once, but its request waits in the upstream's output filter until a
//! timer on the request ends the pause; then the connection's write handler sends it. Redis
//! is never asked to wait (no `WAIT` holding a connection), and the worker never sleeps.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_chain_add_copy, ngx_chain_t, ngx_chain_writer, ngx_event_t, ngx_http_request_t,
    ngx_http_upstream_t, ngx_int_t,
};

use crate::nginx::timer::Timer;
use crate::nginx::util::{request_log, AGAIN, ERROR, OK};

/// A request's pause before its next try (all off for a try without one).
pub struct Pause {
    /// The next try's request waits this long (ms) before it is sent; 0: not at all.
    pub next_ms: u32,
    /// The request whose upstream sends through `output` (set by `install`).
    request: *mut ngx_http_request_t,
    /// What nginx handed over to send while the pause runs.
    held: *mut ngx_chain_t,
    /// Ends the pause: armed while it runs. Its data is the request.
    timer: Option<Timer<*mut ngx_http_request_t>>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            next_ms: 0,
            request: ptr::null_mut(),
            held: ptr::null_mut(),
            timer: None,
        }
    }
}

impl Pause {
    /// A try begins: nothing held from an earlier one (a try may end during its pause).
    pub fn new_try(&mut self) {
        if let Some(timer) = &mut self.timer {
            timer.disarm();
        }
        self.held = ptr::null_mut();
    }

    fn running(&self) -> bool {
        self.timer.as_ref().is_some_and(|t| t.is_armed())
    }
}

/// Sends `u`'s request through `pause` (a cluster request: any try may start with a pause).
/// `pause` must not move while the upstream runs (it lives in the request's ctx).
pub fn install(u: &mut ngx_http_upstream_t, r: *mut ngx_http_request_t, pause: &mut Pause) {
    pause.request = r;
    u.output.output_filter = Some(output);
    u.output.filter_ctx = pause as *mut Pause as *mut c_void;
}

/// The upstream's output filter: nginx's own writer, once the try's pause is over.
unsafe extern "C" fn output(data: *mut c_void, input: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: filter_ctx is the request's Pause (`install`), which outlives its upstream.
    let pause = unsafe { &mut *(data as *mut Pause) };
    // SAFETY: nginx sends a live request's request; its upstream is set.
    let r = unsafe { &mut *pause.request };
    if pause.next_ms > 0 {
        let ms = u64::from(core::mem::take(&mut pause.next_ms));
        let request = pause.request;
        pause
            .timer
            .get_or_insert_with(|| Timer::new(request, resume, request_log(r), false))
            .arm(ms);
    }
    if !input.is_null() && (pause.running() || !pause.held.is_null()) {
        // SAFETY: the request pool is live; the copy links the same buffers.
        if unsafe { ngx_chain_add_copy(r.pool, &mut pause.held, input) } != OK {
            return ERROR;
        }
    }
    if pause.running() {
        return AGAIN;
    }
    let out = if pause.held.is_null() {
        input
    } else {
        core::mem::replace(&mut pause.held, ptr::null_mut())
    };
    // SAFETY: the upstream's writer, set up by nginx for this connection.
    unsafe { ngx_chain_writer(&raw mut (*r.upstream).writer as *mut c_void, out) }
}

/// The pause is over: the connection's write handler (nginx's upstream handler) sends what
/// was held.
unsafe extern "C" fn resume(ev: *mut ngx_event_t) {
    // SAFETY: the event of a Pause's live timer; its data is the request, which outlives it.
    let r = unsafe { *Timer::<*mut ngx_http_request_t>::data_of(ev) };
    // SAFETY: as above.
    let u = unsafe { (*r).upstream };
    if u.is_null() {
        return;
    }
    // SAFETY: the live request's upstream; a try that ended has no connection (nginx clears
    // it when it closes one), and a new try disarms this timer.
    let c = unsafe { (*u).peer.connection };
    if c.is_null() {
        return;
    }
    // SAFETY: the upstream's live connection and its write event.
    unsafe {
        let wev = (*c).write;
        if let Some(handler) = (*wev).handler {
            handler(wev);
        }
    }
}
