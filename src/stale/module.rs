//! `ngx_http_stale_cache_module`: its directive table and configuration callbacks, which
//! declare the variables and install the phase handlers and capture filters.

use core::mem::offset_of;

use ngx::ffi::{
    ngx_conf_set_flag_slot, ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_LOG_PHASE, ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
    ngx_http_phases_NGX_HTTP_PREACCESS_PHASE, ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE, ngx_int_t,
    ngx_module_t, NGX_HTTP_MODULE,
};
use ngx::http::{HttpModule, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_string;

use super::conf::{
    merge_loc_conf, set_hot_zone, set_refresh_address, set_refresh_backoff, set_skip_header,
    set_stale_cache, set_use_stale, set_zone, StaleCacheConf, HOT_MAX_AGE, HOT_MAX_SIZE,
    REFRESH_LIMIT,
};
use super::{after_fetch, lookup, metrics, phases, purge, variables};
use crate::directive_table;
use crate::nginx::conf::{
    set_msec_bounded, set_number_bounded, set_size_bounded, Directive, ANY_LEVEL, FLAG, HTTP,
    LOCATION, NOARGS, ONE_OR_MORE, TAKE1, TAKE12, TAKE2,
};
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
        lookup::install_filters();
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

directive_table! {
    static mut COMMANDS = [
        Directive::new(ngx_string!("stale_cache_zone"), HTTP | TAKE2, set_zone).main_conf(),
        Directive::new(ngx_string!("stale_cache"), ANY_LEVEL | TAKE1, set_stale_cache),
        Directive::new(
            ngx_string!("stale_cache_memo"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, memo)),
        Directive::new(
            ngx_string!("stale_cache_skip_header"),
            ANY_LEVEL | TAKE1,
            set_skip_header,
        ),
        Directive::new(
            ngx_string!("stale_cache_refresh_address"),
            ANY_LEVEL | TAKE1,
            set_refresh_address,
        ),
        Directive::new(
            ngx_string!("stale_cache_use_stale"),
            ANY_LEVEL | ONE_OR_MORE,
            set_use_stale,
        ),
        Directive::new(
            ngx_string!("stale_cache_refresh_credentials"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, refresh_credentials)),
        Directive::new(
            ngx_string!("stale_cache_refresh_limit"),
            ANY_LEVEL | TAKE1,
            set_number_bounded,
        )
        .offset(offset_of!(StaleCacheConf, refresh_limit))
        .bounds(&REFRESH_LIMIT),
        Directive::new(
            ngx_string!("stale_cache_refresh_backoff"),
            ANY_LEVEL | TAKE12,
            set_refresh_backoff,
        ),
        Directive::new(
            ngx_string!("stale_cache_metrics"),
            LOCATION | NOARGS,
            metrics::set_metrics,
        ),
        Directive::new(
            ngx_string!("stale_cache_purge"),
            ANY_LEVEL | ONE_OR_MORE,
            purge::set_purge,
        ),
        Directive::new(ngx_string!("stale_cache_hot_zone"), HTTP | TAKE2, set_hot_zone)
            .main_conf(),
        Directive::new(
            ngx_string!("stale_cache_hot"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, hot)),
        Directive::new(
            ngx_string!("stale_cache_hot_max_age"),
            ANY_LEVEL | TAKE1,
            set_msec_bounded,
        )
        .offset(offset_of!(StaleCacheConf, hot_max_age_ms))
        .bounds(&HOT_MAX_AGE),
        Directive::new(
            ngx_string!("stale_cache_hot_max_size"),
            ANY_LEVEL | TAKE1,
            set_size_bounded,
        )
        .offset(offset_of!(StaleCacheConf, hot_max_size))
        .bounds(&HOT_MAX_SIZE),
    ];
}

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
