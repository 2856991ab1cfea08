//! The module definition nginx loads: directive table and configuration callbacks.

use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_msec_slot, ngx_conf_set_size_slot, ngx_http_module_t, ngx_module_t,
    ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};
use ngx::ngx_string;

use super::conf::{
    create_loc_conf, merge_loc_conf, set_redis_command, set_redis_pass, set_redis_reply, LocConf,
};

const HTTP_ANY_CONF: ngx_uint_t = (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as _;
const LOC_ONLY: ngx_uint_t = NGX_HTTP_LOC_CONF as _;

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

const fn msec_directive(name: ngx::ffi::ngx_str_t, offset: usize) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: HTTP_ANY_CONF | NGX_CONF_TAKE1 as ngx_uint_t,
        set: Some(ngx_conf_set_msec_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset,
        post: ptr::null_mut(),
    }
}

static mut COMMANDS: [ngx_command_t; 9] = [
    ngx_command_t {
        name: ngx_string!("stale_cache_redis_pass"),
        type_: LOC_ONLY | NGX_CONF_TAKE1 as ngx_uint_t,
        set: Some(set_redis_pass),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("stale_cache_redis_command"),
        type_: LOC_ONLY | NGX_CONF_1MORE as ngx_uint_t,
        set: Some(set_redis_command),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("stale_cache_redis_reply"),
        type_: LOC_ONLY | NGX_CONF_TAKE1 as ngx_uint_t,
        set: Some(set_redis_reply),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    msec_directive(
        ngx_string!("stale_cache_redis_connect_timeout"),
        offset_of!(LocConf, redis.upstream.connect_timeout),
    ),
    msec_directive(
        ngx_string!("stale_cache_redis_send_timeout"),
        offset_of!(LocConf, redis.upstream.send_timeout),
    ),
    msec_directive(
        ngx_string!("stale_cache_redis_read_timeout"),
        offset_of!(LocConf, redis.upstream.read_timeout),
    ),
    msec_directive(
        ngx_string!("stale_cache_redis_backoff"),
        offset_of!(LocConf, redis.backoff),
    ),
    ngx_command_t {
        name: ngx_string!("stale_cache_redis_buffer_size"),
        type_: HTTP_ANY_CONF | NGX_CONF_TAKE1 as ngx_uint_t,
        set: Some(ngx_conf_set_size_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, redis.upstream.buffer_size),
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_stale_cache_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as *mut _,
    // SAFETY: nginx only reads the directive table, from the single configuration thread.
    commands: unsafe { &raw mut COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};

ngx::ngx_modules!(ngx_http_stale_cache_module);

/// This module's descriptor, for context and configuration look-ups.
pub fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the descriptor's indexes while loading the module, before any
    // request runs; afterwards it is only read.
    let descriptor = &raw const ngx_http_stale_cache_module;
    unsafe { &*descriptor }
}
