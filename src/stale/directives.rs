//! The directive table of `ngx_http_stale_cache_module` (the setters live in `conf`,
//! `metrics` and `purge`).

use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE2,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_SRV_CONF,
};
use ngx::ngx_string;

use super::conf::{
    set_hot_max_age, set_hot_max_size, set_hot_zone, set_refresh_address, set_refresh_backoff,
    set_refresh_limit, set_skip_header, set_stale_cache, set_use_stale, set_zone, StaleCacheConf,
};
use super::{metrics, purge};

const ANY_LEVEL: ngx_uint_t = (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as _;

type SetFn = unsafe extern "C" fn(
    *mut ngx_conf_t,
    *mut ngx_command_t,
    *mut core::ffi::c_void,
) -> *mut core::ffi::c_char;

const fn directive(
    name: ngx_str_t,
    type_: ngx_uint_t,
    set: SetFn,
    conf: usize,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_,
        set: Some(set),
        conf,
        offset,
        post: ptr::null_mut(),
    }
}

pub static mut COMMANDS: [ngx_command_t; 16] = [
    directive(
        ngx_string!("stale_cache_zone"),
        NGX_HTTP_MAIN_CONF as ngx_uint_t | NGX_CONF_TAKE2 as ngx_uint_t,
        set_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_stale_cache,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_memo"),
        ANY_LEVEL | NGX_CONF_FLAG as ngx_uint_t,
        ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(StaleCacheConf, memo),
    ),
    directive(
        ngx_string!("stale_cache_skip_header"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_skip_header,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_refresh_address"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_refresh_address,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_use_stale"),
        ANY_LEVEL | NGX_CONF_1MORE as ngx_uint_t,
        set_use_stale,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_refresh_credentials"),
        ANY_LEVEL | NGX_CONF_FLAG as ngx_uint_t,
        ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(StaleCacheConf, refresh_credentials),
    ),
    directive(
        ngx_string!("stale_cache_refresh_limit"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_refresh_limit,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_refresh_backoff"),
        ANY_LEVEL | NGX_CONF_TAKE12 as ngx_uint_t,
        set_refresh_backoff,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_metrics"),
        NGX_HTTP_LOC_CONF as ngx_uint_t | NGX_CONF_NOARGS as ngx_uint_t,
        metrics::set_metrics,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_purge"),
        ANY_LEVEL | NGX_CONF_1MORE as ngx_uint_t,
        purge::set_purge,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_hot_zone"),
        NGX_HTTP_MAIN_CONF as ngx_uint_t | NGX_CONF_TAKE2 as ngx_uint_t,
        set_hot_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_hot"),
        ANY_LEVEL | NGX_CONF_FLAG as ngx_uint_t,
        ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(StaleCacheConf, hot),
    ),
    directive(
        ngx_string!("stale_cache_hot_max_age"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_hot_max_age,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx_string!("stale_cache_hot_max_size"),
        ANY_LEVEL | NGX_CONF_TAKE1 as ngx_uint_t,
        set_hot_max_size,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
];
