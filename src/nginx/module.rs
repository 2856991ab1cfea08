//! The module definition nginx loads: directive table and configuration callbacks.

use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_conf_set_msec_slot, ngx_conf_set_size_slot,
    ngx_conf_t, ngx_http_core_main_conf_t, ngx_http_core_module, ngx_http_handler_pt,
    ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG,
    NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};

/// nginx's NGX_CONF_TAKE2 (bindgen skips it).
const NGX_CONF_TAKE2: u32 = 4;
use ngx::ngx_string;

use super::conf::{
    create_loc_conf, create_main_conf, main_conf_of, merge_loc_conf, set_redis_command,
    set_redis_pass, set_redis_reply, set_refresh_address, set_skip_header, set_stale_cache,
    set_zone, LocConf,
};
use super::handler;
use super::vars;

const HTTP_ANY_CONF: ngx_uint_t = (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as _;
const LOC_ONLY: ngx_uint_t = NGX_HTTP_LOC_CONF as _;

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(preconfiguration),
    postconfiguration: Some(postconfiguration),
    create_main_conf: Some(create_main_conf),
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

const fn command(
    name: ngx::ffi::ngx_str_t,
    type_: ngx_uint_t,
    set: unsafe extern "C" fn(
        *mut ngx::ffi::ngx_conf_t,
        *mut ngx_command_t,
        *mut core::ffi::c_void,
    ) -> *mut core::ffi::c_char,
    conf: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_,
        set: Some(set),
        conf,
        offset: 0,
        post: ptr::null_mut(),
    }
}

static mut COMMANDS: [ngx_command_t; 14] = [
    command(
        ngx_string!("stale_cache_zone"),
        NGX_HTTP_MAIN_CONF as ngx_uint_t | NGX_CONF_TAKE2 as ngx_uint_t,
        set_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("stale_cache"),
        HTTP_ANY_CONF | NGX_CONF_TAKE1 as ngx_uint_t,
        set_stale_cache,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    ngx_command_t {
        name: ngx_string!("stale_cache_memo"),
        type_: HTTP_ANY_CONF | NGX_CONF_FLAG as ngx_uint_t,
        set: Some(ngx_conf_set_flag_slot),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: offset_of!(LocConf, stale.memo),
        post: ptr::null_mut(),
    },
    command(
        ngx_string!("stale_cache_skip_header"),
        HTTP_ANY_CONF | NGX_CONF_TAKE1 as ngx_uint_t,
        set_skip_header,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("stale_cache_refresh_address"),
        HTTP_ANY_CONF | NGX_CONF_TAKE1 as ngx_uint_t,
        set_refresh_address,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
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

const NGX_OK: ngx_int_t = 0;
const NGX_ERROR: ngx_int_t = -1;

/// Declares the variables before the configuration that uses them is read.
unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    let Some(indexes) = vars::add_cache_variables(cf) else {
        return NGX_ERROR;
    };
    main_conf_of(cf).vars = indexes;
    let outputs: [(&'static str, ngx::ffi::ngx_http_get_variable_pt); 3] = [
        ("stale_cache_status", Some(handler::status_variable)),
        ("stale_cache_wake_delay", Some(handler::wake_delay_variable)),
        ("stale_cache_skip_fetch", Some(handler::skip_fetch_variable)),
    ];
    for (name, get) in outputs {
        if vars::add_output_variable(cf, name, get).is_none() {
            return NGX_ERROR;
        }
    }
    NGX_OK
}

/// Registers the phase handlers and the capture filters.
unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: inside `http`, the core module's main conf is in cf's context.
    let cmcf = unsafe {
        let ctx = (*cf).ctx as *mut ngx::ffi::ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(ngx_http_core_module.ctx_index)
            as *mut ngx_http_core_main_conf_t)
    };
    let handlers: [(usize, ngx_http_handler_pt); 2] = [
        (
            ngx::ffi::ngx_http_phases_NGX_HTTP_POST_READ_PHASE as usize,
            Some(handler::post_read_handler),
        ),
        (
            ngx::ffi::ngx_http_phases_NGX_HTTP_PREACCESS_PHASE as usize,
            Some(handler::preaccess_handler),
        ),
    ];
    for (phase, h) in handlers {
        // SAFETY: phase arrays are initialised by the core module before postconfiguration.
        let slot = unsafe { ngx::ffi::ngx_array_push(&mut cmcf.phases[phase].handlers) }
            as *mut ngx_http_handler_pt;
        if slot.is_null() {
            return NGX_ERROR;
        }
        // SAFETY: the slot is a fresh element of the handler array.
        unsafe { *slot = h };
    }
    handler::install_filters();
    NGX_OK
}
