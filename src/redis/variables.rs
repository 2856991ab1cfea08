//! The Redis locations' variables: `$stale_cache_redis_down` (for srcache's skip directives
//! during an outage) and the ones `stale_cache_redis_variable` declares to derive keys.

use core::ptr;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_complex_value, ngx_http_complex_value_t,
    ngx_http_request_t, ngx_int_t, ngx_str_t, ngx_uint_t, ngx_variable_value_t,
    NGX_HTTP_VAR_CHANGEABLE, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::http::HttpModuleLocationConf;

use super::backoff::group_down;
use super::conf::RedisModule;
use crate::keyderive::{derive, Transform};
use crate::nginx::util::{pool_str, str_bytes, ERROR, OK};
use crate::nginx::vars::{add_output_variable, set_value, set_value_in_pool, value_slot, VAR_OK};

/// Declares the module's fixed variables (preconfiguration).
pub fn declare(cf: *mut ngx_conf_t) -> Option<()> {
    add_output_variable(cf, "stale_cache_redis_down", Some(down_variable))
}

/// `1` while this worker's Redis locations of the watched group (`stale_cache_redis_watch`;
/// without it, any group) answer 502 from the backoff, empty otherwise. The backoff is per
/// worker, so this is what this worker's Redis locations would do right now. Empty also for
/// a request the hot tier answers (`stale_cache_hot`): srcache's fetch then does not reach
/// Redis, and hot copies are served through an outage within their fresh period.
unsafe extern "C" fn down_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls variable handlers with a live request and the slot to fill.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    let watch = RedisModule::location_conf(r).map_or(ptr::null_mut(), |c| c.watch);
    let down = group_down(watch) && !crate::stale::hot_will_serve(r);
    set_value(v, if down { b"1" } else { b"" });
    VAR_OK
}

/// What one `stale_cache_redis_variable` computes.
struct Derived {
    value: *mut ngx_http_complex_value_t,
    steps: Vec<Transform>,
}

/// Declares `$name` as `value` transformed by `steps`.
pub fn declare_derived(
    cf: *mut ngx_conf_t,
    name: &[u8],
    value: *mut ngx_http_complex_value_t,
    steps: Vec<Transform>,
) -> Result<(), &'static str> {
    // SAFETY: cf is the configuration being parsed; its pool lives as long as the
    // configuration, whose variables point at the allocation.
    let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
    let derived = pool.allocate(Derived { value, steps });
    let mut name = pool_str(pool.as_ptr(), name).ok_or("out of memory")?;
    if derived.is_null() {
        return Err("out of memory");
    }
    // Not cacheable: subrequests share the parent's variable values, and each Redis
    // location evaluates `value` with its own arguments.
    // SAFETY: cf is live; nginx reports a duplicate of a non-changeable variable itself.
    let v = unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t) };
    // SAFETY: a non-null result is the variable nginx registered in the configuration.
    let v = unsafe { v.as_mut() }.ok_or("cannot declare the variable")?;
    if v.flags & NGX_HTTP_VAR_CHANGEABLE as ngx_uint_t != 0 || v.get_handler.is_some() {
        return Err("names a variable that another directive sets");
    }
    v.get_handler = Some(derived_variable);
    v.data = derived as usize;
    Ok(())
}

unsafe extern "C" fn derived_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request, the slot to fill and the `data` declare_derived
    // registered: a Derived in the configuration pool, alive while requests run.
    let (req, v, derived) = unsafe { (&*r, value_slot(v), &*(data as *const Derived)) };
    let mut input = ngx_str_t::default();
    // SAFETY: the complex value was compiled at configuration time; r is live.
    if unsafe { ngx_http_complex_value(r, derived.value, &mut input) } != OK {
        return ERROR;
    }
    let output = derive(str_bytes(&input), &derived.steps);
    let Some(stored) = pool_str(req.pool, &output) else {
        return ERROR;
    };
    set_value_in_pool(v, str_bytes(&stored));
    VAR_OK
}
