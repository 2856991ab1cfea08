//! The checks of a merged location: the hot zone it needs, and its literal `$cache_*` values
//! (bad ones fail `nginx -t`). `$cache_persist` without `$cache_expire` needs no warning: no
//! PERSIST is sent then (`replay::keep_copy`).

use core::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;

use ngx::ffi::{ngx_conf_t, NGX_LOG_EMERG, NGX_LOG_WARN};
use ngx::http::Merge;

use super::location::StaleCacheConf;
use crate::nginx::util::{CONF_ERROR, CONF_OK};
use crate::preset::{Literals, Preset};
use crate::settings::{check_literal, parse_duration_secs, Var, DEFAULT_STALE_MS};
use crate::stale::literals::{block_of, for_each_literal, literal_sets, Block};
use crate::stale::locations::reaches_a_location;
use crate::stale::main_conf;
use crate::stale::preset::PresetSlots;

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
    (conf.literals, conf.server_literals) = literals(cf, prev);
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
        if let Err(bad) = check_literal_variables(cf) {
            let line = conf.opened_at.as_ref().and_then(|(file, opened)| {
                let text = std::fs::read(std::ffi::OsStr::from_bytes(file)).ok()?;
                let line = crate::confscan::set_line(
                    &text,
                    *opened,
                    bad.var.name().as_bytes(),
                    &bad.value,
                )?;
                Some((file.as_slice(), line))
            });
            // SAFETY: merge runs inside `http` with a valid configuration context.
            unsafe { log_at(cf, NGX_LOG_EMERG, line, &bad.message) };
            return CONF_ERROR;
        }
        warn_short_store_time(cf, conf);
        // SAFETY: merge runs inside `http` with a valid configuration context.
        let indexes = &main_conf(unsafe { &*cf }).vars;
        conf.preset =
            Preset::new(&conf.literals).and_then(|preset| PresetSlots::new(preset, indexes));
    }
    CONF_OK
}

/// The literal `$cache_*` values the requests of the block being merged run, and those of
/// its server's script: its own script's, then the server's, or for an `if` block its
/// location's (see `Literals::inherit`).
fn literals(cf: *mut ngx_conf_t, parent: &StaleCacheConf) -> (Literals, Literals) {
    let block = block_of(cf);
    if block == Block::Inner {
        return (parent.literals.clone(), parent.server_literals.clone());
    }
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = main_conf(unsafe { &*cf });
    let mut literals = Literals::default();
    for_each_literal(cf, |index, text| {
        if let Some(var) = Var::ALL.into_iter().find(|v| mcf.vars[v.index()] == index) {
            literals.push(var, text.as_ptr() as usize, text);
        }
    });
    if block == Block::Server {
        return (literals.clone(), literals);
    }
    literals.inherit(&parent.server_literals);
    (literals, parent.server_literals.clone())
}

/// An entry stored for no longer than `$cache_stale` + `$cache_stale_if_error` is stale the
/// moment it is stored, so every request refreshes it: warned at `nginx -t`, citing the
/// `srcache_store` line. The store time is read from that line's literal `exptime=N`
/// argument (srcache's own configuration is not this module's to read); the stale window
/// and grace band from their literal `set`s (`$cache_stale` defaults to 100 s). Not an
/// error: a store time passed through a variable, or a store location that ignores
/// `exptime`, is not seen here, and a run-time line says the same thing for each key
/// (`decide::born_stale`).
fn warn_short_store_time(cf: *mut ngx_conf_t, conf: &StaleCacheConf) {
    let Some((file, opened)) = conf.opened_at.as_ref() else {
        return;
    };
    let Ok(text) = std::fs::read(std::ffi::OsStr::from_bytes(file)) else {
        return;
    };
    let Some((store, line)) = crate::confscan::store_exptime(&text, *opened) else {
        return;
    };
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = main_conf(unsafe { &*cf });
    let sets = literal_sets(cf);
    let literal = |var: Var| {
        sets.iter()
            .rev()
            .find(|(index, _)| mcf.vars[var.index()] == *index)
            .map(|(_, v)| v.clone())
    };
    let secs = |v: Option<Vec<u8>>, default_ms: u64| match v {
        Some(v) if v.eq_ignore_ascii_case(b"off") => Some(0),
        Some(v) => parse_duration_secs(&v).ok().map(|ms| ms.div_ceil(1000)),
        None => Some(default_ms.div_ceil(1000)),
    };
    let (Some(stale), Some(grace)) = (
        secs(literal(Var::Stale), DEFAULT_STALE_MS),
        secs(literal(Var::StaleIfError), 0),
    ) else {
        return;
    };
    let needed = stale.saturating_add(grace);
    if store > needed {
        return;
    }
    let message = format!(
        "srcache_store keeps entries for {store} s (exptime={store}) but $cache_stale {stale} + \
         $cache_stale_if_error {grace} = {needed} s: every entry is stale as soon as it is \
         stored, and every request sends a refresh; store for longer than {needed} s, e.g. \
         exptime={} for 5 s of freshness",
        needed + 5
    );
    // SAFETY: merge runs inside `http` with a valid configuration context.
    unsafe { log_at(cf, NGX_LOG_WARN, Some((file, line)), &message) };
}

/// A bad literal `$cache_*` value.
struct Bad {
    var: Var,
    value: Vec<u8>,
    message: String,
}

/// Logs `message` at EMERG citing `at` (file, line) instead of nginx's own position, which
/// at merge time is the end of the `http` block.
///
/// # Safety
/// `cf` is nginx's live configuration context.
unsafe fn log_at(cf: *mut ngx_conf_t, level: u32, at: Option<(&[u8], usize)>, message: &str) {
    // SAFETY: (caller) cf is live; configuration runs on one thread, and the file's name and
    // line are put back before returning (`at`'s name outlives the call).
    unsafe {
        let file = (*cf).conf_file;
        // nginx prints the name with `%s`: it needs a terminating NUL.
        let name_z: Option<Vec<u8>> = at.map(|(name, _)| [name, b"\0"].concat());
        let saved = match (at, &name_z, file.is_null()) {
            (Some((name, line)), Some(z), false) => {
                let saved = ((*file).file.name, (*file).line);
                (*file).file.name = ngx::ffi::ngx_str_t {
                    len: name.len(),
                    data: z.as_ptr() as *mut u8,
                };
                (*file).line = line;
                Some(saved)
            }
            _ => None,
        };
        ngx::ngx_conf_log_error!(level, cf, "stale_cache: {}", message);
        if let Some((name, line)) = saved {
            (*file).file.name = name;
            (*file).line = line;
        }
    }
}

/// Rejects bad `$cache_*` values that the location sets as literals.
fn check_literal_variables(cf: *mut ngx_conf_t) -> Result<(), Bad> {
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = main_conf(unsafe { &*cf });
    for (index, value) in literal_sets(cf) {
        let Some(var) = Var::ALL.into_iter().find(|v| mcf.vars[v.index()] == index) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let bad = |message: String| Bad {
            var,
            value: value.clone(),
            message,
        };
        check_literal(var, &value).map_err(|e| bad(e.to_string()))?;
        let location_var = matches!(
            var,
            Var::Ttl | Var::Persist | Var::Expire | Var::Purge | Var::Lease
        );
        // SAFETY: merge runs with a valid configuration context.
        let cfr = unsafe { &*cf };
        if location_var && !value.eq_ignore_ascii_case(b"off") && !reaches_a_location(cfr, &value) {
            return Err(bad(format!(
                "{var}: \"{}\" names no location of this server; add \"location = {} {{ \
                 internal; ... }}\" (see nginx-conf/) or fix the URI",
                String::from_utf8_lossy(&value),
                String::from_utf8_lossy(&value)
            )));
        }
        if var == Var::Lock && !mcf.zones.iter().any(|z| z.name == value) {
            let name = String::from_utf8_lossy(&value);
            let zones = mcf.zones.iter().map(|z| z.name.as_slice());
            // A typo of a zone that exists is far likelier than a zone to create.
            let message = match crate::confscan::nearest(&value, zones) {
                Some(near) => format!(
                    "$cache_lock: \"{name}\" names no zone; did you mean {}?",
                    String::from_utf8_lossy(near)
                ),
                None => format!(
                    "$cache_lock: \"{name}\" names no zone; add \"stale_cache_zone {name} \
                     1m;\" to the http block"
                ),
            };
            return Err(bad(message));
        }
    }
    Ok(())
}
