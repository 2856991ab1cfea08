//! The location-level directives of the stale-cache layer that need more than nginx's slot
//! setters, and the bounds of the ones that use the shared bounded setters.

use core::ffi::{c_char, c_void};
use core::mem;

use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_parse_url, ngx_url_t};
use ngx::http::HttpModuleMainConf;

use super::location::StaleCacheConf;
use crate::collapse::{UseStale, BACKOFF_CAP_MS};
use crate::nginx::conf::Bounds;
use crate::nginx::util::{conf_args, conf_error, str_bytes, CONF_ERROR, CONF_OK};
use crate::stale::sender::RefreshTarget;
use crate::stale::StaleCacheModule;

/// `stale_cache_refresh_limit N;` — refreshes in flight per worker.
pub static REFRESH_LIMIT: Bounds = Bounds {
    min: 1,
    max: 1_000_000,
    expected: "expected a number of refreshes in flight per worker, 1 or more, up to 1000000",
};

/// `stale_cache_hot_max_age TIME;`
pub static HOT_MAX_AGE: Bounds = Bounds {
    min: 1,
    max: 3_600_000,
    expected: "expected a time like 1s or 500ms, above 0 and up to 1h",
};

/// `stale_cache_hot_max_size SIZE;`
pub static HOT_MAX_SIZE: Bounds = Bounds {
    min: 1,
    max: (1 << 30) - 1,
    expected: "expected a size like 256k, above 0 and below 1g",
};

/// The arguments every directive handler of this module gets, as references.
///
/// # Safety
/// `cf`, `cmd` and `conf` must be what nginx passes to a directive handler of this module;
/// `conf` is only used by location-level directives (a `StaleCacheConf`).
unsafe fn directive_args<'a>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> (&'a ngx_conf_t, &'a ngx_command_t, &'a mut StaleCacheConf) {
    // SAFETY: (caller) all three are valid for the duration of the directive's handling.
    unsafe { (&*cf, &*cmd, &mut *(conf as *mut StaleCacheConf)) }
}

/// `stale_cache on | off;`
pub unsafe extern "C" fn set_stale_cache(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.enabled.is_set() {
        return conf_error(cf, cmd, "is duplicate");
    }
    match str_bytes(&conf_args(cfr)[1]) {
        b"on" => scf.enabled.set(1),
        b"off" => scf.enabled.set(0),
        _ => return conf_error(cf, cmd, "expected \"on\" or \"off\""),
    }
    if scf.enabled() {
        let Some(mcf) = StaleCacheModule::main_conf_mut(cfr) else {
            return CONF_ERROR;
        };
        mcf.in_use = true;
    }
    CONF_OK
}

/// `stale_cache_skip_header NAME;`
pub unsafe extern "C" fn set_skip_header(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_skip_header`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    let value = str_bytes(&conf_args(cfr)[1]).to_vec();
    let token = !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if !token {
        return conf_error(cf, cmd, "expected an HTTP header name such as X-Skip-Fetch");
    }
    scf.skip_header = Some(value);
    CONF_OK
}

/// `stale_cache_refresh_address host:port | unix:/path;`
pub unsafe extern "C" fn set_refresh_address(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_refresh_address`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    let value = conf_args(cfr)[1];
    // SAFETY: ngx_url_t is a plain C struct whose zero state is "nothing parsed yet".
    let mut url: ngx_url_t = unsafe { mem::zeroed() };
    url.url = value;
    // SAFETY: url is initialised; the pool is live; resolves a host name at startup.
    if unsafe { ngx_parse_url(cfr.pool, &mut url) } != 0 || url.naddrs == 0 {
        let message = format!(
            "invalid address \"{}\" (expected host:port or unix:/path of a plain HTTP listener \
             of this nginx)",
            String::from_utf8_lossy(str_bytes(&value))
        );
        return conf_error(cf, cmd, &message);
    }
    // SAFETY: ngx_parse_url filled at least one address, whose sockaddr spans socklen bytes.
    let (addr, sockaddr) = unsafe {
        let addr = &*url.addrs;
        let bytes = core::slice::from_raw_parts(addr.sockaddr as *const u8, addr.socklen as usize);
        (addr, bytes)
    };
    let target = RefreshTarget {
        sockaddr: sockaddr.to_vec(),
        name: String::from_utf8_lossy(str_bytes(&addr.name)).into_owned(),
    };
    let Some(mcf) = StaleCacheModule::main_conf_mut(cfr) else {
        return CONF_ERROR;
    };
    let written = String::from_utf8_lossy(str_bytes(&value)).into_owned();
    mcf.refresh_addresses.push((target.clone(), written));
    scf.refresh_target = Some(target);
    CONF_OK
}

/// `stale_cache_use_stale error | timeout | http_500 | ... | off;`
pub unsafe extern "C" fn set_use_stale(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_use_stale`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.use_stale.is_some() {
        return conf_error(cf, cmd, "is duplicate");
    }
    match UseStale::parse(conf_args(cfr)[1..].iter().map(str_bytes)) {
        Ok(use_stale) => scf.use_stale = Some(use_stale),
        Err(message) => return conf_error(cf, cmd, &message),
    }
    CONF_OK
}

/// `stale_cache_refresh_backoff BASE [CAP];` — how long a key's refreshes pause after a failure
/// (doubling per failure in a row, up to CAP).
pub unsafe extern "C" fn set_refresh_backoff(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_refresh_backoff`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.refresh_backoff.is_some() {
        return conf_error(cf, cmd, "is duplicate");
    }
    let mut times = Vec::new();
    for arg in &conf_args(cfr)[1..] {
        let mut value = *arg;
        // SAFETY: parses a string nginx owns; `0`: the value is in milliseconds.
        let ms = unsafe { ngx::ffi::ngx_parse_time(&mut value, 0) };
        if ms < 0 {
            let message = format!(
                "invalid time \"{}\" (a time like 500ms, 1s or 1m)",
                String::from_utf8_lossy(str_bytes(arg))
            );
            return conf_error(cf, cmd, &message);
        }
        times.push(ms as u64);
    }
    let base = times[0];
    let cap = times.get(1).copied().unwrap_or(BACKOFF_CAP_MS.max(base));
    if cap < base {
        return conf_error(cf, cmd, "the longest backoff is shorter than the first");
    }
    scf.refresh_backoff = Some((base, cap));
    CONF_OK
}
