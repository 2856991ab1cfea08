//! Small wrappers around raw nginx pointers. Each `unsafe` block states why it is sound; the
//! rest of the nginx glue works with the references these return.

use core::ffi::c_char;
use core::ptr;

use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_module_t, ngx_msec_t, ngx_pnalloc, ngx_pool_t, ngx_str_t,
};

/// nginx's "return this from a directive handler to fail the configuration".
pub const CONF_ERROR: *mut c_char = usize::MAX as *mut c_char;
/// nginx's "directive accepted".
pub const CONF_OK: *mut c_char = ptr::null_mut();

/// The directive's arguments, `args[0]` being the directive name.
pub fn conf_args(cf: &ngx_conf_t) -> &[ngx_str_t] {
    // SAFETY: while a directive is being parsed, `cf.args` is a valid array of `ngx_str_t`.
    unsafe { (*cf.args).as_slice() }
}

/// Bytes of an `ngx_str_t`, empty for a null data pointer.
pub fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: a non-empty `ngx_str_t` points at `len` readable bytes.
    unsafe { core::slice::from_raw_parts(s.data, s.len) }
}

/// Copies `bytes` into `pool` as an `ngx_str_t`; `None` when the pool is exhausted.
pub fn pool_str(pool: *mut ngx_pool_t, bytes: &[u8]) -> Option<ngx_str_t> {
    if bytes.is_empty() {
        return Some(ngx_str_t::default());
    }
    // SAFETY: `pool` is a live nginx pool; the copy stays within the fresh allocation.
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

/// The location configuration of `module` for request `r`.
///
/// # Safety
/// `T` must be the type `module` allocates for its location configuration.
pub unsafe fn request_loc_conf<'a, T>(r: &ngx_http_request_t, module: &ngx_module_t) -> &'a T {
    // SAFETY: (caller) T matches; loc_conf has an entry per HTTP module, valid for the request.
    unsafe { &*((*r.loc_conf.add(module.ctx_index)) as *const T) }
}

/// nginx's cached millisecond clock, updated once per event-loop iteration.
pub fn current_msec() -> ngx_msec_t {
    // SAFETY: `ngx_current_msec` is a plain global written only by this (single) thread.
    unsafe { ngx::ffi::ngx_current_msec }
}

/// Writes `args` to `log` at `level` when the log is enabled for it.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $log:expr, $($arg:tt)+) => {
        ngx::ngx_log_error!($level, $log, $($arg)+)
    };
}

/// The same clock as u64 milliseconds, the unit of the pure modules and the lock table.
/// It is monotonic and system-wide, so every worker reads the same time base.
pub fn now_ms() -> u64 {
    current_msec() as u64
}
