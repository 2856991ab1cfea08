//! `ngx_http_stale_cache_redis_module`: the module descriptor nginx loads, the top of the
//! folder (nothing here imports it).

use ngx::ffi::{ngx_conf_t, ngx_http_module_t, ngx_int_t, ngx_module_t, NGX_HTTP_MODULE};
use ngx::http::HttpModule;

use super::conf::RedisModule;
use super::directives::{merge_loc_conf, COMMANDS};
use crate::nginx::util::{ERROR, OK};

impl HttpModule for RedisModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the descriptor's indexes while loading the module, before any
        // request runs; afterwards it is only read.
        unsafe { &*core::ptr::addr_of!(ngx_http_stale_cache_redis_module) }
    }
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(preconfiguration),
    postconfiguration: None,
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(RedisModule::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    match super::variables::declare(cf) {
        Some(()) => OK,
        None => ERROR,
    }
}

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_stale_cache_redis_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as *mut _,
    // SAFETY: taking the address of a static is sound; nginx only reads the directive table,
    // from the single configuration thread.
    commands: unsafe { &raw mut COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(super::sentinel::init_process),
    ..ngx_module_t::default()
};
