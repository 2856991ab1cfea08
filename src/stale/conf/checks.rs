//! The checks of a merged location: the hot zone it needs, and its literal `$cache_*` values
//! (bad ones fail `nginx -t`). `$cache_persist` without `$cache_expire` needs no warning: no
//! PERSIST is sent then (`replay::keep_copy`).

use core::ffi::{c_char, c_void};

use ngx::ffi::{ngx_conf_t, NGX_LOG_EMERG};
use ngx::http::Merge;

use super::location::StaleCacheConf;
use crate::nginx::util::{CONF_ERROR, CONF_OK};
use crate::settings::{check_literal, Var};
use crate::stale::literals::literal_sets;
use crate::stale::locations::reaches_a_location;
use crate::stale::main_conf;

/// Merges a location's settings; where the layer is on, checks its literal `$cache_*` values.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes two StaleCacheConf values made by create_loc_conf, parent and
    // child, distinct allocations valid for the cycle.
    let (prev, conf) = unsafe {
        (
            &*(parent as *const StaleCacheConf),
            &mut *(child as *mut StaleCacheConf),
        )
    };
    if conf.merge(prev).is_err() {
        return CONF_ERROR;
    }
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let cfr = unsafe { &*cf };
    crate::stale::role::merged(cfr, conf.role, &main_conf(cfr).roles);
    if conf.hot_enabled() {
        // SAFETY: merge runs inside `http` with a valid configuration context.
        if main_conf(unsafe { &*cf }).hot.is_none() {
            ngx::ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "stale_cache: \"stale_cache_hot on\" needs a hot zone: add \
                 \"stale_cache_hot_zone hot 64m;\" to the http block"
            );
            return CONF_ERROR;
        }
    }
    if conf.enabled() {
        if let Err(message) = check_literal_variables(cf) {
            ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "stale_cache: {}", message);
            return CONF_ERROR;
        }
    }
    CONF_OK
}

/// Rejects bad `$cache_*` values that the location sets as literals.
fn check_literal_variables(cf: *mut ngx_conf_t) -> Result<(), String> {
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = main_conf(unsafe { &*cf });
    for (index, value) in literal_sets(cf) {
        let Some(var) = Var::ALL.into_iter().find(|v| mcf.vars[v.index()] == index) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        check_literal(var, &value).map_err(|e| e.to_string())?;
        let location_var = matches!(
            var,
            Var::Ttl | Var::Persist | Var::Expire | Var::Purge | Var::Lease
        );
        // SAFETY: merge runs with a valid configuration context.
        let cfr = unsafe { &*cf };
        if location_var && !value.eq_ignore_ascii_case(b"off") && !reaches_a_location(cfr, &value) {
            return Err(format!(
                "{var}: \"{}\" names no location of this server; add \"location = {} {{ \
                 internal; ... }}\" (see nginx-conf/) or fix the URI",
                String::from_utf8_lossy(&value),
                String::from_utf8_lossy(&value)
            ));
        }
        if var == Var::Lock && !mcf.zones.iter().any(|z| z.name == value) {
            let name = String::from_utf8_lossy(&value);
            return Err(format!(
                "$cache_lock: \"{name}\" names no zone; add \"stale_cache_zone {name} 1m;\" to \
                 the http block"
            ));
        }
    }
    Ok(())
}
