//! Small wrappers around raw nginx pointers and return codes, shared by both products. Each
//! `unsafe` block states why it is sound; the rest of the code works with the references and
//! Rust values these return.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_connection_t, ngx_http_request_t, ngx_int_t, ngx_list_part_t,
    ngx_log_t, ngx_msec_t, ngx_pnalloc, ngx_pool_t, ngx_str_t, ngx_table_elt_t, NGX_LOG_EMERG,
};

/// nginx's return codes as `ngx_int_t`, from the bindings (which type them as u32/i32).
pub const OK: ngx_int_t = ngx::ffi::NGX_OK as ngx_int_t;
pub const ERROR: ngx_int_t = ngx::ffi::NGX_ERROR as ngx_int_t;
pub const AGAIN: ngx_int_t = ngx::ffi::NGX_AGAIN as ngx_int_t;
pub const DONE: ngx_int_t = ngx::ffi::NGX_DONE as ngx_int_t;
pub const DECLINED: ngx_int_t = ngx::ffi::NGX_DECLINED as ngx_int_t;

/// nginx's "directive accepted" and "configuration failed".
pub const CONF_OK: *mut c_char = ngx::core::NGX_CONF_OK;
pub const CONF_ERROR: *mut c_char = ngx::core::NGX_CONF_ERROR;

/// The directive's arguments, `args[0]` being the directive name.
pub fn conf_args(cf: &ngx_conf_t) -> &[ngx_str_t] {
    // SAFETY: while a directive is being parsed, `cf.args` is a valid array of `ngx_str_t`
    // living in the configuration pool, which outlives the borrow of `cf`.
    unsafe { (*cf.args).as_slice() }
}

/// The name of the directive being parsed, for error messages.
pub fn directive_name(cmd: &ngx_command_t) -> String {
    String::from_utf8_lossy(str_bytes(&cmd.name)).into_owned()
}

/// Fails a directive with `"name": message` at `nginx -t` time.
pub fn conf_error(cf: *mut ngx_conf_t, cmd: &ngx_command_t, message: &str) -> *mut c_char {
    ngx::ngx_conf_log_error!(
        NGX_LOG_EMERG,
        cf,
        "\"{}\": {}",
        directive_name(cmd),
        message
    );
    CONF_ERROR
}

/// Bytes of an `ngx_str_t`, empty for a null data pointer.
pub fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: a non-empty `ngx_str_t` points at `len` readable bytes that live at least as
    // long as the struct itself (nginx strings point into pools or static memory).
    unsafe { core::slice::from_raw_parts(s.data, s.len) }
}

/// Copies `bytes` into `pool` as an `ngx_str_t`; `None` when the pool is exhausted.
pub fn pool_str(pool: *mut ngx_pool_t, bytes: &[u8]) -> Option<ngx_str_t> {
    if bytes.is_empty() {
        return Some(ngx_str_t::default());
    }
    // SAFETY: `pool` is a live nginx pool (callers pass a request's or the configuration's);
    // the copy writes exactly `bytes.len()` bytes into the fresh allocation.
    unsafe {
        let data = ngx_pnalloc(pool, bytes.len()) as *mut u8;
        if data.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
        Some(ngx_str_t {
            len: bytes.len(),
            data,
        })
    }
}

/// nginx's cached millisecond clock, updated once per event-loop iteration.
pub fn current_msec() -> ngx_msec_t {
    // SAFETY: `ngx_current_msec` is a plain global written only by this worker's (single)
    // thread, between event handlers.
    unsafe { ngx::ffi::ngx_current_msec }
}

/// The same clock as u64 milliseconds, the unit of the pure modules and the lock table.
/// It is monotonic and system-wide, so every worker reads the same time base.
pub fn now_ms() -> u64 {
    current_msec() as u64
}

/// Refreshes nginx's cached clock, for times that must be precise (a lock release dates the
/// store waiters are woken for; the cached time can be a whole loop iteration old).
pub fn update_clock() {
    // SAFETY: nginx's own clock update, meant to be called from the event loop's thread.
    unsafe { ngx::ffi::ngx_time_update() };
}

/// The log of request `r`'s connection.
pub fn request_log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request always has a live connection with a log.
    unsafe { (*r.connection).log }
}

/// How `r`'s upstream ended, if `r` used one and it has a status yet: the status (502 when
/// the connection failed or broke, 504 on a timeout, else the upstream's own) and whether
/// any byte came back from the upstream. Also readable once `r`, a finished subrequest, is
/// over: its upstream lives in its pool.
pub fn upstream_end(r: &ngx_http_request_t) -> Option<(usize, bool)> {
    // SAFETY: a request's upstream, when set, and the upstream's state, when set, are
    // allocated from the request's pool, which outlives `r`'s borrow.
    let state = unsafe { r.upstream.as_ref()?.state.as_ref()? };
    (state.status != 0).then_some((state.status, state.bytes_received > 0))
}

/// The worker's cycle log, for events that belong to no request.
pub fn cycle_log() -> *mut ngx_log_t {
    ngx::log::ngx_cycle_log().as_ptr()
}

/// This worker's process id.
pub fn worker_pid() -> u64 {
    // SAFETY: `ngx_pid` is set once when the process starts and only read afterwards.
    (unsafe { ngx::ffi::ngx_pid }) as u64
}

/// What timer events that belong to no connection point `data` at: nginx's debug log reads
/// `((ngx_connection_t *) ev->data)->fd` for every timer, so it must be a connection, and
/// fd -1 says "none".
pub fn no_connection() -> *mut c_void {
    thread_local! {
        static NONE: Box<ngx_connection_t> = {
            // SAFETY: a zeroed connection is inert; only its fd is ever read.
            let mut c: Box<ngx_connection_t> = Box::new(unsafe { core::mem::zeroed() });
            c.fd = -1;
            c
        };
    }
    NONE.with(|c| &**c as *const ngx_connection_t as *mut c_void)
}

/// The request's live header entries, walked in place. Unlike `Request::headers_in_iterator`
/// this skips deleted entries (hash 0, how the module hides headers) and yields the entries
/// themselves, so a caller can hide one.
pub fn live_headers(r: &ngx_http_request_t) -> LiveHeaders<'_> {
    LiveHeaders {
        part: &r.headers_in.headers.part,
        index: 0,
        _request: core::marker::PhantomData,
    }
}

pub struct LiveHeaders<'r> {
    part: *const ngx_list_part_t,
    index: usize,
    _request: core::marker::PhantomData<&'r ngx_http_request_t>,
}

impl<'r> Iterator for LiveHeaders<'r> {
    type Item = &'r mut ngx_table_elt_t;

    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: nginx's header list of a request live for 'r: each part holds `nelts`
        // elements and the last part's `next` is null. Each element is yielded once, so no
        // two yielded references alias.
        unsafe {
            while !self.part.is_null() {
                if self.index < (*self.part).nelts {
                    let h = ((*self.part).elts as *mut ngx_table_elt_t).add(self.index);
                    self.index += 1;
                    if (*h).hash != 0 {
                        return Some(&mut *h);
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

/// Resumes a main request parked in a phase handler (`NGX_AGAIN`) by one of our events: it
/// stops watching the client for a hang-up, runs its phases from where they stopped, then the
/// subrequests that posted themselves meanwhile.
///
/// # Safety
/// `r` must be a live main request whose phases stopped in one of this module's handlers,
/// and nothing may borrow its state across the call.
pub unsafe fn resume(r: *mut ngx::ffi::ngx_http_request_t) {
    // SAFETY: (caller) a live request and its connection.
    unsafe {
        (*r).read_event_handler = Some(ngx::ffi::ngx_http_block_reading);
        let c = (*r).connection;
        ngx::ffi::ngx_http_core_run_phases(r);
        ngx::ffi::ngx_http_run_posted_requests(c);
    }
}
