//! The layer's variables: the `$cache_*` inputs (declared here so an unset one is simply
//! empty, as in the Lua original, instead of an "unknown variable" error) and its outputs
//! (`$stale_cache_status`, `$stale_cache_wake_delay`, `$stale_cache_skip_fetch`).

use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_variable_value_t, NGX_HTTP_VAR_CHANGEABLE,
};
use ngx::http::HttpModuleMainConf;

use super::preset::UNSET_VARIABLE;
use super::state;
use crate::cache_status::{member, Facts};
use crate::nginx::util::pool_str;
use crate::nginx::vars::{
    add_output_variable, add_variable, indexed_value, indexed_value_unless, set_not_found,
    set_value, set_value_in_pool, value_slot, variable_index, VAR_OK,
};
use crate::policy::CacheStatus;
use crate::settings::{RawVars, Var};
use crate::stale::StaleCacheModule;

/// Declares the `$cache_*` inputs as changeable (so `set` works on them), remembering their
/// indexes in the main conf, and the output variables.
pub fn declare(cf: *mut ngx_conf_t) -> Option<()> {
    // SAFETY: preconfiguration runs inside `http` with a valid configuration context.
    let mcf = StaleCacheModule::main_conf_mut(unsafe { &*cf })?;
    for var in Var::ALL {
        add_variable(
            cf,
            var.name(),
            NGX_HTTP_VAR_CHANGEABLE,
            Some(UNSET_VARIABLE),
        )?;
        mcf.vars[var.index()] = variable_index(cf, var.name())?;
    }
    add_output_variable(cf, "stale_cache_status", Some(status_variable))?;
    add_output_variable(cf, "stale_cache_wake_delay", Some(wake_delay_variable))?;
    add_output_variable(cf, "stale_cache_skip_fetch", Some(skip_fetch_variable))?;
    add_output_variable(cf, "stale_cache_rfc9211", Some(rfc9211_variable))?;
    add_output_variable(cf, "stale_cache_redis_away", Some(redis_away_variable))?;
    // The fleet lease's script, for the `$cache_lease` location (see `super::lease`).
    add_output_variable(cf, "stale_cache_lease_script", Some(lease_script))?;
    // The variants purge's script, for a `$cache_purge` location (see `super::purge`).
    add_output_variable(cf, "stale_cache_purge_script", Some(purge_script))?;
    super::http_mode::declare(cf)?;
    Some(())
}

/// The request's `$cache_*` values, borrowed from the request's variable storage.
pub fn read_cache_variables(r: &ngx_http_request_t) -> RawVars<'_> {
    let indexes = &crate::stale::main_conf(r).vars;
    let mut raw = RawVars::new();
    for var in Var::ALL {
        raw.set(
            var,
            indexed_value_unless(r, indexes[var.index()], UNSET_VARIABLE),
        );
    }
    raw
}

/// The request's `$cache_lock` value (which zone it uses), without parsing the rest.
pub fn cache_lock_value(r: &ngx_http_request_t) -> Option<&[u8]> {
    indexed_value(r, crate::stale::main_conf(r).vars[Var::Lock.index()])
}

unsafe extern "C" fn status_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    match state::peek(r).and_then(|s| s.status) {
        Some(status) => set_value(v, status.as_str().as_bytes()),
        None => set_not_found(v),
    }
    VAR_OK
}

unsafe extern "C" fn wake_delay_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    let text = state::peek(r)
        .and_then(|s| s.wake_delay_ms)
        .map(|d| d.to_string());
    // The value is copied into the request's pool so it lives as long as the request.
    match text.and_then(|t| pool_str(r.pool, t.as_bytes())) {
        Some(s) => set_value_in_pool(v, crate::nginx::util::str_bytes(&s)),
        None => set_not_found(v),
    }
    VAR_OK
}

unsafe extern "C" fn skip_fetch_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    // Refreshes, and passed requests (their key's last answer was not stored: in the error
    // grace band srcache would otherwise serve the old copy in place of the backend's).
    let skip = state::peek(r).is_some_and(|s| s.is_refresh || s.status == Some(CacheStatus::Pass));
    set_value(v, if skip { b"1" } else { b"" });
    VAR_OK
}

/// `$stale_cache_redis_away`: `1` while this worker's TTL lookups fail (Redis down, timing
/// out: learned from the lookups themselves, so it works with redis2/HttpRedis locations),
/// empty otherwise and for a request answered from, or filling, this node's local zone
/// (its fetch is answered here; its store is kept here if Redis refuses it). For
/// `srcache_fetch_skip` and `srcache_store_skip`, like `$stale_cache_redis_down`.
unsafe extern "C" fn redis_away_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    let away = super::local::lookups_failing() && !super::hot::will_serve(r);
    set_value(v, if away { b"1" } else { b"" });
    VAR_OK
}

/// `$stale_cache_rfc9211`: this cache's member of an RFC 9211 `Cache-Status` header.
unsafe extern "C" fn rfc9211_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&mut *r, value_slot(v)) };
    let Some((status, ttl, local_stale)) =
        state::peek(r).and_then(|s| Some((s.status?, s.ttl_left, s.local_stale)))
    else {
        set_not_found(v);
        return VAR_OK;
    };
    let srcache_hit = matches!(status, CacheStatus::Bypass | CacheStatus::Error)
        && crate::nginx::vars::by_name(r, b"srcache_fetch_status") == Some(b"HIT".as_slice());
    let facts = Facts {
        ttl,
        response_status: r.headers_out.status,
        srcache_hit,
        local_stale,
    };
    match pool_str(r.pool, member(status, facts).as_str().as_bytes()) {
        Some(s) => set_value_in_pool(v, crate::nginx::util::str_bytes(&s)),
        None => set_not_found(v),
    }
    VAR_OK
}

/// `$stale_cache_lease_script`: the lease script, for the `$cache_lease` location's EVAL.
unsafe extern "C" fn lease_script(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_value(unsafe { value_slot(v) }, crate::lease::SCRIPT.as_bytes());
    VAR_OK
}

/// `$stale_cache_purge_script`: the variants purge, for a `$cache_purge` location's EVAL.
unsafe extern "C" fn purge_script(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_value(
        unsafe { value_slot(v) },
        crate::purge_script::VARIANTS_SCRIPT.as_bytes(),
    );
    VAR_OK
}
