//! nginx plumbing both products share: the module list nginx loads, FFI helpers, logging,
//! variables and the lock zone.

pub mod bits;
pub mod conf;
pub mod filter_chain;
pub mod log;
pub mod process;
pub mod random;
pub mod role;
pub mod shm;
pub mod timer;
pub mod util;
pub mod vars;
pub mod zone;

use crate::redis::module::ngx_http_stale_cache_redis_module;
use crate::stale::ngx_http_stale_cache_module;

// One shared object, two nginx modules: the stale/collapse layer and the Redis locations, each
// with its own configuration and directives. These are the symbols `load_module` reads; they
// are written out because ngx 0.5's `ngx_modules!` cannot count more than one module.

/// The modules of this shared object, null-terminated.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx::ffi::ngx_module_t; 3] = [
    &raw const ngx_http_stale_cache_module,
    &raw const ngx_http_stale_cache_redis_module,
    core::ptr::null(),
];

/// Their names, in the same order, null-terminated.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const core::ffi::c_char; 3] = [
    c"ngx_http_stale_cache_module".as_ptr(),
    c"ngx_http_stale_cache_redis_module".as_ptr(),
    core::ptr::null(),
];

/// No ordering constraints (the filters are placed at run time, in postconfiguration).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const core::ffi::c_char; 1] = [core::ptr::null()];
