//! `stale_cache_http`, Vary: the variant lookup and the variables that name a request's
//! variant (`crate::http::vary` has the rules).
//!
//! - `$stale_cache_http_variant`: this request's variant suffix once the lookup found that
//!   its URL varies, else empty; appended to the entry's Redis key by the TTL and fetch
//!   locations;
//! - `$stale_cache_http_store_variant` / `$stale_cache_http_vary`: the variant suffix and the
//!   normalised Vary names of the response being stored, for the store location;
//! - `$stale_cache_http_purge_script`: the purge of a URL with all its variants.

use ngx::ffi::{ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_variable_value_t};
use ngx::http::HttpModuleLocationConf;

use super::error::StaleError;
use super::http_mode::{list_lines, response_headers};
use super::lookup;
use super::state::{self, Next, Phase, RequestState};
use crate::http::vary;
use crate::nginx::log::{debug, Short};
use crate::nginx::util::{pool_str, request_log, str_bytes, AGAIN};
use crate::nginx::vars::{
    add_output_variable, set_not_found, set_value, set_value_in_pool, value_slot, VAR_OK,
};
use crate::replay::key_argument;
use crate::stale::StaleCacheModule;

pub fn declare(cf: *mut ngx_conf_t) -> Option<()> {
    add_output_variable(cf, "stale_cache_http_variant", Some(variant_variable))?;
    add_output_variable(
        cf,
        "stale_cache_http_store_variant",
        Some(store_variant_variable),
    )?;
    add_output_variable(cf, "stale_cache_http_vary", Some(vary_variable))?;
    add_output_variable(
        cf,
        "stale_cache_http_purge_script",
        Some(purge_script_variable),
    )
}

/// The URL varies on `names`: look this request's variant up (the same TTL location, whose
/// keys end with `$stale_cache_http_variant`).
pub fn look_up_variant(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    names: &[u8],
) -> Result<Next, StaleError> {
    let names = String::from_utf8_lossy(names);
    let variant = vary::variant(&names, list_lines(&req.headers_in.headers));
    debug!(
        request_log(req),
        "stale_cache: \"{}\" varies on {}: variant {}",
        Short(&state.settings().key),
        Short(names.as_bytes()),
        variant
    );
    state.set_variant(variant);
    let (ttl_uri, args) = {
        let settings = state.settings();
        (settings.ttl_uri.clone(), key_argument(&settings.key))
    };
    lookup::start(state.capture_mut(), req, &ttl_uri, &args)?;
    state.enter(Phase::LookingUp);
    Ok(Next::Return(AGAIN))
}

fn set_text(r: &ngx_http_request_t, v: &mut ngx_variable_value_t, text: &str) {
    if text.is_empty() {
        set_value(v, b"");
        return;
    }
    match pool_str(r.pool, text.as_bytes()) {
        Some(s) => set_value_in_pool(v, str_bytes(&s)),
        None => set_not_found(v),
    }
}

unsafe extern "C" fn variant_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    set_text(r, v, &state::variant_of(r).unwrap_or_default());
    VAR_OK
}

/// The response's normalised Vary names, when the mode is on and the response has a status.
fn response_vary(r: &ngx_http_request_t) -> Option<String> {
    StaleCacheModule::location_conf(r)?.http()?;
    if r.headers_out.status == 0 {
        return None;
    }
    let lines = list_lines(response_headers(r))
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
        .map(|(_, v)| v);
    Some(vary::names(lines))
}

unsafe extern "C" fn store_variant_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    let names = response_vary(r).unwrap_or_default();
    // SAFETY: a live request's `main` is its live main request, whose headers are read.
    let main = unsafe { &*r.main };
    let variant = vary::variant(&names, list_lines(&main.headers_in.headers));
    set_text(r, v, &variant);
    VAR_OK
}

unsafe extern "C" fn vary_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    set_text(r, v, &response_vary(r).unwrap_or_default());
    VAR_OK
}

unsafe extern "C" fn purge_script_variable(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_value(unsafe { value_slot(v) }, vary::PURGE_SCRIPT.as_bytes());
    VAR_OK
}
