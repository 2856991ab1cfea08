//! The stale-while-revalidate and request-collapsing layer (`stale_cache*`), the drop-in for
//! lua-resty-cache, as the nginx HTTP module `ngx_http_stale_cache_module`.
//!
//! This file is the module itself: its descriptor, its configuration callbacks (which declare
//! the variables and install the phase handlers and filters) and the access to its main
//! configuration. The files below it are the layer's floors:
//!
//! - `driver`: the nginx callbacks of a request (phase handlers, wake-ups, subrequest ends)
//!   turned into one step loop over the request's `state`, which asks the pure rules
//!   (`crate::flow`, `crate::policy`, `crate::collapse`) what to do;
//! - the rooms that act and return, never calling back up: `lookup` (TTL/PERSIST/EXPIRE and
//!   lease subrequests), `waiters` (held locks and waiting requests), `lease` (the fleet
//!   lease), `refresh` and `sender` (the background refresh, `store`: one whose store was refused), `hot` (the hot tier), `purge`;
//! - `filters` (the output filters, one dispatch; srcache's subrequests known by their
//!   location's `role`; `age_header`: `stale_cache_http`'s Age), `variables`, `metrics`,
//!   `error`, `conf`.

mod age_header;
pub mod conf;
mod decide;
mod directives;
mod driver;
mod error;
mod filters;
mod hot;
mod http_mode;
mod http_request;
mod invalidation;
mod lease;
mod literals;
mod local;
mod locations;
mod lookup;
mod memo_age;
mod metrics;
mod preset;
mod purge;
mod refresh;
mod role;
mod sender;
mod state;
mod store;
mod variables;
mod vary;
mod waiters;

use ngx::ffi::{
    ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t, ngx_http_phases_NGX_HTTP_LOG_PHASE,
    ngx_http_phases_NGX_HTTP_POST_READ_PHASE, ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
    ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE, ngx_int_t, ngx_module_t, NGX_HTTP_MODULE,
};
use ngx::http::{HttpModule, HttpModuleMainConf, NgxHttpCoreModule};

use crate::nginx::util::{ERROR, OK};

/// Whether request `r` is answered from the hot zone (`$stale_cache_redis_down` asks).
pub fn hot_will_serve(r: &ngx::ffi::ngx_http_request_t) -> bool {
    hot::will_serve(r)
}

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
        // SAFETY: as above.
        let purges = main_conf(unsafe { &*cf }).purges;
        let handlers: [(u32, ngx_http_handler_pt, bool); 5] = [
            (
                ngx_http_phases_NGX_HTTP_POST_READ_PHASE,
                Some(driver::post_read_handler),
                true,
            ),
            (
                ngx_http_phases_NGX_HTTP_PREACCESS_PHASE,
                Some(driver::preaccess_handler),
                true,
            ),
            (
                ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
                Some(driver::precontent_handler),
                true,
            ),
            (
                ngx_http_phases_NGX_HTTP_LOG_PHASE,
                Some(driver::log_handler),
                true,
            ),
            // Every request pays for a handler in its phases: this one only where a
            // location purges.
            (
                ngx_http_phases_NGX_HTTP_PRECONTENT_PHASE,
                Some(purge::precontent_handler),
                purges,
            ),
        ];
        for (phase, handler, _) in handlers.into_iter().filter(|h| h.2) {
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
        if conf::check_refresh_addresses(cf, cmcf).is_err() {
            return ERROR;
        }
        filters::install();
        state::set_end_handler(driver::end_of_request);
        // SAFETY: as above.
        let mcf = main_conf(unsafe { &*cf });
        role::check(cf, mcf.in_use, &mcf.roles);
        if conf::add_default_local_zone(cf).is_none() {
            return ERROR;
        }
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
    create_loc_conf: Some(conf::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_stale_cache_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as *mut _,
    // SAFETY: taking the address of a static is sound; nginx only reads the directive table,
    // from the single configuration thread.
    commands: unsafe { &raw mut directives::COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// The module's main configuration, once configuration is done (or while it is read).
pub fn main_conf(o: &impl ngx::http::HttpModuleConfExt) -> &conf::MainConf {
    StaleCacheModule::main_conf(o).expect("the stale_cache main conf exists inside http")
}

/// The worker is exiting: the zones may be unmapped before what still holds a lock is
/// dropped, so no lock is released from here on (they expire).
unsafe extern "C" fn exit_process(_cycle: *mut ngx::ffi::ngx_cycle_t) {
    waiters::worker_exiting();
}
