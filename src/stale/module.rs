//! `ngx_http_stale_cache_module`: its directive table and configuration callbacks, which
//! declare the variables and install the phase handlers and capture filters.

use core::mem::offset_of;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_LOG_PHASE, ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
    ngx_http_phases_NGX_HTTP_PREACCESS_PHASE, ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE, ngx_int_t,
    ngx_module_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS,
    NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE2, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};
use ngx::http::{HttpModule, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_string;

use super::conf::{
    merge_loc_conf, set_hot_max_age, set_hot_max_size, set_hot_zone, set_refresh_address,
    set_refresh_backoff, set_refresh_limit, set_skip_header, set_stale_cache, set_use_stale,
    set_zone, StaleCacheConf,
};
use super::{after_fetch, filters, metrics, phases, purge, variables};
use crate::nginx::util::{ERROR, OK};

/// The stale-cache layer as an nginx HTTP module.
pub struct StaleCacheModule;

impl HttpModule for StaleCacheModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the descriptor's indexes while loading the module, before any
        // request runs; afterwards it is only read.
        unsafe { &*core::ptr::addr_of!(ngx_http_stale_cache_module) }
    }

    /// Declares the variables before the configuration that uses them is read.
    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        if variables::declare(cf).is_none() {
            return ERROR;
        }
        OK
    }

    /// Registers the phase handlers and the capture filters.
    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: postconfiguration runs inside `http` with a valid configuration context.
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(unsafe { &*cf }) else {
            return ERROR;
        };
        let handlers: [(u32, ngx_http_handler_pt); 5] = [
            (
                ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
                Some(phases::post_read_handler),
            ),
            (
                ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
                Some(phases::preaccess_handler),
            ),
            (
                ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
                Some(after_fetch::precontent_handler),
            ),
            (
                ngx_http_phases_NGX_HTTP_LOG_PHASE,
                Some(phases::log_handler),
            ),
            (
                ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
                Some(purge::precontent_handler),
            ),
        ];
        for (phase, handler) in handlers {
            // SAFETY: the core module initialised the phase arrays before postconfiguration.
            let slot =
                unsafe { ngx::ffi::ngx_array_push(&mut cmcf.phases[phase as usize].handlers) }
                    as *mut ngx_http_handler_pt;
            if slot.is_null() {
                return ERROR;
            }
            // SAFETY: the slot is a fresh, writable element of the handler array.
            unsafe { *slot = handler };
        }
        if super::conf::check_refresh_addresses(cf, cmcf).is_err() {
            return ERROR;
        }
        filters::install();
        // SAFETY: as above.
        super::role::check(
            cf,
            main_conf(unsafe { &*cf }).in_use,
            &main_conf(unsafe { &*cf }).roles,
        );
        OK
    }
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(StaleCacheModule::preconfiguration),
    postconfiguration: Some(StaleCacheModule::postconfiguration),
    create_main_conf: Some(StaleCacheModule::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(StaleCacheModule::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

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

static mut COMMANDS: [ngx_command_t; 17] = [
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
    directive(
        ngx_string!("stale_cache_role"),
        NGX_HTTP_LOC_CONF as ngx_uint_t | NGX_CONF_TAKE1 as ngx_uint_t,
        super::role::set_role,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(StaleCacheConf, role),
    ),
    ngx_command_t::empty(),
];

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_stale_cache_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as *mut _,
    // SAFETY: taking the address of a static is sound; nginx only reads the directive table,
    // from the single configuration thread.
    commands: unsafe { &raw mut COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};

/// The module's main configuration, once configuration is done (or while it is read).
pub fn main_conf(o: &impl ngx::http::HttpModuleConfExt) -> &super::conf::MainConf {
    StaleCacheModule::main_conf(o).expect("the stale_cache main conf exists inside http")
}
