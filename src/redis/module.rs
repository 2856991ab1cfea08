//! `ngx_http_stale_cache_redis_module`: the directive table of the native Redis locations.

use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_msec_slot, ngx_conf_set_size_slot, ngx_http_module_t, ngx_module_t,
    ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_2MORE, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};
use ngx::http::HttpModule;
use ngx::ngx_string;

use super::conf::{
    merge_loc_conf, set_redis_command, set_redis_pass, set_redis_reply, set_redis_variable,
    set_redis_watch, RedisConf,
};

/// The Redis locations as an nginx HTTP module.
pub struct RedisModule;

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

unsafe extern "C" fn preconfiguration(cf: *mut ngx::ffi::ngx_conf_t) -> ngx::ffi::ngx_int_t {
    match super::variables::declare(cf) {
        Some(()) => crate::nginx::util::OK,
        None => crate::nginx::util::ERROR,
    }
}

const ANY_LEVEL: ngx_uint_t = (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as _;
const LOCATION: ngx_uint_t = NGX_HTTP_LOC_CONF as _;
const TAKE1: ngx_uint_t = NGX_CONF_TAKE1 as _;

type SetFn = unsafe extern "C" fn(
    *mut ngx::ffi::ngx_conf_t,
    *mut ngx_command_t,
    *mut core::ffi::c_void,
) -> *mut core::ffi::c_char;

/// A directive stored in the location configuration, by its own handler or by one of
/// nginx's slot setters at `offset`.
const fn directive(name: ngx_str_t, type_: ngx_uint_t, set: SetFn, offset: usize) -> ngx_command_t {
    ngx_command_t {
        name,
        type_,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset,
        post: ptr::null_mut(),
    }
}

const fn msec(name: ngx_str_t, offset: usize) -> ngx_command_t {
    directive(name, ANY_LEVEL | TAKE1, ngx_conf_set_msec_slot, offset)
}

static mut COMMANDS: [ngx_command_t; 11] = [
    directive(
        ngx_string!("stale_cache_redis_pass"),
        LOCATION | TAKE1,
        set_redis_pass,
        0,
    ),
    directive(
        ngx_string!("stale_cache_redis_command"),
        LOCATION | NGX_CONF_1MORE as ngx_uint_t,
        set_redis_command,
        0,
    ),
    directive(
        ngx_string!("stale_cache_redis_reply"),
        LOCATION | TAKE1,
        set_redis_reply,
        0,
    ),
    msec(
        ngx_string!("stale_cache_redis_connect_timeout"),
        offset_of!(RedisConf, upstream.connect_timeout),
    ),
    msec(
        ngx_string!("stale_cache_redis_send_timeout"),
        offset_of!(RedisConf, upstream.send_timeout),
    ),
    msec(
        ngx_string!("stale_cache_redis_read_timeout"),
        offset_of!(RedisConf, upstream.read_timeout),
    ),
    msec(
        ngx_string!("stale_cache_redis_backoff"),
        offset_of!(RedisConf, backoff),
    ),
    directive(
        ngx_string!("stale_cache_redis_buffer_size"),
        ANY_LEVEL | TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(RedisConf, upstream.buffer_size),
    ),
    directive(
        ngx_string!("stale_cache_redis_watch"),
        ANY_LEVEL | TAKE1,
        set_redis_watch,
        0,
    ),
    ngx_command_t {
        name: ngx_string!("stale_cache_redis_variable"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE) as ngx_uint_t,
        set: Some(set_redis_variable),
        conf: 0,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_stale_cache_redis_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as *mut _,
    // SAFETY: taking the address of a static is sound; nginx only reads the directive table,
    // from the single configuration thread.
    commands: unsafe { &raw mut COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};
