//! Configuration of the stale-cache layer: the http-level zones and secret, the per-location
//! switches, and their directives. Bad literal `$cache_*` values fail `nginx -t` here.

use core::cell::Cell;
use core::ffi::{c_char, c_void};
use core::mem;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_parse_url, ngx_uint_t, ngx_url_t, NGX_LOG_EMERG, NGX_LOG_NOTICE,
    NGX_LOG_WARN,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError};

use super::locations::reaches_a_location;
use super::module::StaleCacheModule;
use super::sender::RefreshTarget;
use crate::collapse::{UseStale, BACKOFF_BASE_MS, BACKOFF_CAP_MS};
use crate::nginx::util::{conf_args, conf_error, str_bytes, CONF_ERROR, CONF_OK};
use crate::nginx::zone::Zone;
use crate::settings::{check_literal, Var, DEFAULT_SKIP_FETCH};

/// Indexes of the `$cache_*` variables, in `Var::ALL` order.
pub type VarIndexes = [ngx_uint_t; Var::COUNT];

/// The module's http-level configuration.
pub struct MainConf {
    pub zones: Vec<Zone>,
    pub vars: VarIndexes,
    /// The per-start secret the refresh requests carry (hex); never logged.
    pub secret: String,
    /// Some location has `stale_cache on` (POST_READ work is skipped otherwise).
    pub in_use: bool,
    /// Every `stale_cache_refresh_address`, as written, checked against the `listen`s.
    pub refresh_addresses: Vec<(RefreshTarget, String)>,
    /// `stale_cache_hot_zone NAME SIZE`: the hot tier's zone, if any.
    pub hot: Option<super::hot::HotZone>,
    /// Whether any location has a role for srcache (`super::role`).
    pub roles: super::role::Roles,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            zones: Vec::new(),
            vars: [0; Var::COUNT],
            secret: process_secret(),
            in_use: false,
            refresh_addresses: Vec::new(),
            hot: None,
            roles: Default::default(),
        }
    }
}

/// Settings of the stale-cache layer of a location (`stale_cache*`).
pub struct StaleCacheConf {
    /// `stale_cache on|off` (nginx flag; unset is -1).
    pub enabled: isize,
    /// `stale_cache_memo on|off`.
    pub memo: isize,
    /// `stale_cache_skip_header NAME`: the skip header hidden from clients' requests.
    pub skip_header: Option<Vec<u8>>,
    /// `stale_cache_refresh_address`: where refresh requests go instead of the listener the
    /// client came in on.
    pub refresh_target: Option<RefreshTarget>,
    /// `stale_cache_use_stale`: which refresh failures the error grace band answers with the
    /// stored copy (None: unset, merged to the default).
    pub use_stale: Option<UseStale>,
    /// `stale_cache_refresh_backoff BASE [CAP]` in ms (None: unset).
    pub refresh_backoff: Option<(u64, u64)>,
    /// `stale_cache_refresh_credentials on|off`: replay Cookie and Authorization.
    pub refresh_credentials: isize,
    /// `stale_cache_refresh_limit N`: refreshes in flight per worker.
    pub refresh_limit: usize,
    /// `stale_cache_purge`: the methods that purge the URL's entry (empty: `off`).
    pub purge_methods: Option<Vec<Vec<u8>>>,
    /// `stale_cache_hot on|off`: fresh hits may be answered from the hot zone.
    pub hot: isize,
    /// `stale_cache_hot_max_age TIME` in ms (u64::MAX: unset).
    pub hot_max_age_ms: u64,
    /// `stale_cache_hot_max_size SIZE`: the largest stored response kept (usize::MAX: unset).
    pub hot_max_size: usize,
    /// `stale_cache_role`: this location's role for srcache (not inherited).
    pub role: super::role::Declared,
}

/// A hot copy is served for at most this long after it was copied from Redis.
pub const DEFAULT_HOT_MAX_AGE_MS: u64 = 1000;
/// The largest stored response (status line, headers and body) the hot tier keeps.
pub const DEFAULT_HOT_MAX_SIZE: usize = 256 * 1024;

impl Default for StaleCacheConf {
    fn default() -> Self {
        StaleCacheConf {
            enabled: -1,
            memo: -1,
            skip_header: None,
            refresh_target: None,
            use_stale: None,
            refresh_backoff: None,
            refresh_credentials: -1,
            refresh_limit: usize::MAX,
            purge_methods: None,
            hot: -1,
            hot_max_age_ms: u64::MAX,
            hot_max_size: usize::MAX,
            role: Default::default(),
        }
    }
}

/// Refreshes in flight per worker unless `stale_cache_refresh_limit` says otherwise. Each
/// costs up to four connections of the worker (to the listener, the request it becomes, the
/// backend, Redis), so 32 stay far below the usual 768-1024 `worker_connections`.
pub const DEFAULT_REFRESH_LIMIT: usize = 32;

impl StaleCacheConf {
    pub fn replays_credentials(&self) -> bool {
        self.refresh_credentials == 1
    }

    pub fn enabled(&self) -> bool {
        self.enabled == 1
    }

    pub fn memo_enabled(&self) -> bool {
        self.memo != 0
    }

    pub fn refresh_backoff(&self) -> (u64, u64) {
        self.refresh_backoff
            .unwrap_or((BACKOFF_BASE_MS, BACKOFF_CAP_MS))
    }

    pub fn use_stale(&self) -> UseStale {
        self.use_stale.unwrap_or(UseStale::DEFAULT)
    }

    pub fn hot_enabled(&self) -> bool {
        self.hot == 1
    }

    pub fn hot_max_age_ms(&self) -> u64 {
        self.hot_max_age_ms
    }

    pub fn hot_max_size(&self) -> usize {
        self.hot_max_size
    }

    pub fn skip_header_name(&self) -> &[u8] {
        self.skip_header.as_deref().unwrap_or(DEFAULT_SKIP_FETCH)
    }
}

impl Merge for StaleCacheConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        if self.enabled == -1 {
            self.enabled = if prev.enabled == -1 { 0 } else { prev.enabled };
        }
        if self.memo == -1 {
            self.memo = if prev.memo == -1 { 1 } else { prev.memo };
        }
        if self.skip_header.is_none() {
            self.skip_header = prev.skip_header.clone();
        }
        if self.refresh_target.is_none() {
            self.refresh_target = prev.refresh_target.clone();
        }
        if self.refresh_backoff.is_none() {
            self.refresh_backoff = prev.refresh_backoff;
        }
        if self.use_stale.is_none() {
            self.use_stale = Some(prev.use_stale.unwrap_or(UseStale::DEFAULT));
        }
        if self.refresh_credentials == -1 {
            self.refresh_credentials = prev.refresh_credentials.max(0);
        }
        if self.refresh_limit == usize::MAX {
            self.refresh_limit = if prev.refresh_limit == usize::MAX {
                DEFAULT_REFRESH_LIMIT
            } else {
                prev.refresh_limit
            };
        }
        if self.purge_methods.is_none() {
            self.purge_methods = prev.purge_methods.clone();
        }
        if self.hot == -1 {
            self.hot = prev.hot.max(0);
        }
        if self.hot_max_age_ms == u64::MAX {
            self.hot_max_age_ms = if prev.hot_max_age_ms == u64::MAX {
                DEFAULT_HOT_MAX_AGE_MS
            } else {
                prev.hot_max_age_ms
            };
        }
        if self.hot_max_size == usize::MAX {
            self.hot_max_size = if prev.hot_max_size == usize::MAX {
                DEFAULT_HOT_MAX_SIZE
            } else {
                prev.hot_max_size
            };
        }
        Ok(())
    }
}

// SAFETY: create_main_conf and create_loc_conf (HttpModule's defaults) allocate exactly these
// types for this module.
unsafe impl HttpModuleMainConf for StaleCacheModule {
    type MainConf = MainConf;
}
// SAFETY: as above.
unsafe impl HttpModuleLocationConf for StaleCacheModule {
    type LocationConf = StaleCacheConf;
}

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
    super::role::merged(cfr, conf.role, &super::module::main_conf(cfr).roles);
    if conf.hot_enabled() {
        // SAFETY: merge runs inside `http` with a valid configuration context.
        if super::module::main_conf(unsafe { &*cf }).hot.is_none() {
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
        warn_persist_without_expire(cf);
        if let Err(message) = check_literal_variables(cf) {
            ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "stale_cache: {}", message);
            return CONF_ERROR;
        }
    }
    CONF_OK
}

/// PERSIST without `$cache_expire` can leave a key without expiry (a refresh that fails or
/// stores nothing never gives it back): said at `nginx -t` (warn), and at start (notice).
fn warn_persist_without_expire(cf: *mut ngx_conf_t) {
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = super::module::main_conf(unsafe { &*cf });
    let sets = super::literals::literal_sets(cf);
    let literal = |var: Var| {
        sets.iter()
            .rev()
            .find(|(index, _)| mcf.vars[var.index()] == *index)
            .map(|(_, v)| v.clone())
    };
    let on =
        |v: Option<Vec<u8>>| v.is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case(b"off"));
    if !on(literal(Var::Persist)) || on(literal(Var::Expire)) {
        return;
    }
    // SAFETY: a plain global nginx sets once from its command line.
    let level = if unsafe { ngx::ffi::ngx_test_config } != 0 {
        NGX_LOG_WARN
    } else {
        NGX_LOG_NOTICE
    };
    ngx::ngx_conf_log_error!(
        level,
        cf,
        "stale_cache: $cache_persist without $cache_expire: a key PERSISTed for a refresh that \
         fails or stores nothing keeps no expiry; add \"set $cache_expire /redisexpire;\" and \
         a location answering Redis EXPIRE $key $arg_ttl (see README), and the module will \
         extend the stale copy's expiry instead of removing it"
    );
}

/// Checks every `stale_cache_refresh_address` against the `listen` addresses of this nginx
/// (called from postconfiguration, before nginx merges the listeners): it must be one of them
/// (or served by a wildcard listener of its port), and a plain HTTP one.
pub fn check_refresh_addresses(
    cf: *mut ngx_conf_t,
    cmcf: &ngx::ffi::ngx_http_core_main_conf_t,
) -> Result<(), ()> {
    // SAFETY: postconfiguration runs inside `http` with a valid configuration context.
    let mcf = super::module::main_conf(unsafe { &*cf });
    for (target, written) in &mcf.refresh_addresses {
        let mut best: Option<(bool, &ngx::ffi::ngx_http_listen_opt_t)> = None;
        // SAFETY: during postconfiguration cmcf.ports is null or the array of
        // ngx_http_conf_port_t built from the `listen`s, each with its array of
        // ngx_http_conf_addr_t; every opt.sockaddr spans opt.socklen bytes.
        unsafe {
            let ports: &[ngx::ffi::ngx_http_conf_port_t] =
                cmcf.ports.as_ref().map_or(&[], |a| a.as_slice());
            for port in ports {
                let addrs: &[ngx::ffi::ngx_http_conf_addr_t] = port.addrs.as_slice();
                for addr in addrs {
                    let opt = &addr.opt;
                    let bytes = core::slice::from_raw_parts(
                        opt.sockaddr as *const u8,
                        opt.socklen as usize,
                    );
                    if let Some(exact) = crate::replay::listener_serves(&target.sockaddr, bytes) {
                        if best.is_none_or(|(e, _)| exact && !e) {
                            best = Some((exact, opt));
                        }
                    }
                }
            }
        }
        let problem = match best {
            None => Some("no \"listen\" of this nginx has this address"),
            Some((_, opt)) if opt.ssl() != 0 => Some("its \"listen\" has \"ssl\""),
            Some((_, opt)) if opt.http2() != 0 => Some("its \"listen\" has \"http2\""),
            Some((_, opt)) if opt.proxy_protocol() != 0 => {
                Some("its \"listen\" has \"proxy_protocol\"")
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            ngx::ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"stale_cache_refresh_address\" {}: {}; refreshes must go to a plain HTTP \
                 listener of this nginx serving the same locations",
                written,
                problem
            );
            return Err(());
        }
    }
    Ok(())
}

/// Rejects bad `$cache_*` values that the location sets as literals.
fn check_literal_variables(cf: *mut ngx_conf_t) -> Result<(), String> {
    // SAFETY: merge runs inside `http` with a valid configuration context.
    let mcf = super::module::main_conf(unsafe { &*cf });
    for (index, value) in super::literals::literal_sets(cf) {
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

/// The secret refresh requests carry: made once per master process, so a reload (new
/// configuration, new workers) does not invalidate refreshes still under way.
fn process_secret() -> String {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(new_secret).clone()
}

/// 128 random bits as hex: refresh requests prove with it that this nginx sent them.
fn new_secret() -> String {
    let mut bytes = [0u8; 16];
    crate::nginx::random::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

/// A shared memory zone's `NAME SIZE` arguments, checked: the name, and the zone nginx made
/// (or found, on reload) with `init`; `Err` is the directive's error answer.
fn add_shm_zone(
    cf: *mut ngx_conf_t,
    cmd: &ngx_command_t,
    min: usize,
    example: &str,
    taken: impl FnOnce(&MainConf, &[u8]) -> Option<String>,
    init: ngx::ffi::ngx_shm_zone_init_pt,
    nginx_size: Option<usize>,
) -> Result<(Vec<u8>, usize, *mut ngx::ffi::ngx_shm_zone_t), *mut c_char> {
    // SAFETY: nginx passes the configuration being parsed, valid during the directive.
    let cfr = unsafe { &*cf };
    let args = conf_args(cfr);
    let (mut name, mut size_arg) = (args[1], args[2]);
    let name_bytes = str_bytes(&name).to_vec();
    let valid_name = !name_bytes.is_empty()
        && name_bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(b));
    if !valid_name {
        let message = "the zone name must be letters, digits, '_', '-' or '.'";
        return Err(conf_error(cf, cmd, message));
    }
    // SAFETY: parses the argument string nginx owns.
    let size = unsafe { ngx::ffi::ngx_parse_size(&mut size_arg) };
    if size < 0 || (size as usize) < min {
        let message = format!(
            "invalid size \"{}\" (a size like {example}; at least {min} bytes)",
            String::from_utf8_lossy(str_bytes(&size_arg)),
        );
        return Err(conf_error(cf, cmd, &message));
    }
    let Some(mcf) = StaleCacheModule::main_conf(cfr) else {
        return Err(CONF_ERROR);
    };
    if let Some(why) = taken(mcf, &name_bytes) {
        return Err(conf_error(cf, cmd, &why));
    }
    let tag = StaleCacheModule::module() as *const _ as *mut c_void;
    let zone_size = nginx_size.unwrap_or(size as usize);
    // SAFETY: cf is valid; nginx creates (or finds, on reload) the named zone.
    let shm = unsafe { ngx::ffi::ngx_shared_memory_add(cf, &mut name, zone_size, tag) };
    // SAFETY: a non-null result is the zone nginx keeps for this cycle.
    let Some(zone) = (unsafe { shm.as_mut() }) else {
        return Err(CONF_ERROR);
    };
    zone.init = init;
    zone.data = ptr::null_mut();
    Ok((name_bytes, size as usize, shm))
}

/// `stale_cache_zone NAME SIZE;` — the lock zone `$cache_lock` names.
pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the command being parsed, valid during the call (the `conf`
    // argument of an http-level directive is the main conf, not used here).
    let cmd = unsafe { &*cmd };
    // SAFETY: read-only global set at startup.
    let min = 8 * unsafe { ngx::ffi::ngx_pagesize };
    let taken = |mcf: &MainConf, name: &[u8]| {
        mcf.zones.iter().any(|z| z.name == name).then(|| {
            format!(
                "zone \"{}\" is already defined",
                String::from_utf8_lossy(name)
            )
        })
    };
    let init = Some(crate::nginx::zone::init_zone as _);
    let (name, _, shm) = match add_shm_zone(cf, cmd, min, "1m", taken, init, None) {
        Ok(zone) => zone,
        Err(answer) => return answer,
    };
    // SAFETY: as above.
    let Some(mcf) = StaleCacheModule::main_conf_mut(unsafe { &*cf }) else {
        return CONF_ERROR;
    };
    mcf.zones.push(Zone {
        name,
        shm,
        seed: Cell::new(None),
    });
    CONF_OK
}

/// `stale_cache on | off;`
pub unsafe extern "C" fn set_stale_cache(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.enabled != -1 {
        return conf_error(cf, cmd, "is duplicate");
    }
    scf.enabled = match str_bytes(&conf_args(cfr)[1]) {
        b"on" => 1,
        b"off" => 0,
        _ => return conf_error(cf, cmd, "expected \"on\" or \"off\""),
    };
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

/// `stale_cache_refresh_limit N;` — refreshes in flight per worker (at least 1).
pub unsafe extern "C" fn set_refresh_limit(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_refresh_limit`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.refresh_limit != usize::MAX {
        return conf_error(cf, cmd, "is duplicate");
    }
    let value = str_bytes(&conf_args(cfr)[1]);
    match core::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if (1..=1_000_000).contains(&n) => scf.refresh_limit = n,
        _ => {
            return conf_error(
                cf,
                cmd,
                "expected a number of refreshes in flight per worker, 1 or more",
            )
        }
    }
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

/// `stale_cache_hot_zone NAME SIZE;` — the hot tier's shared memory.
pub unsafe extern "C" fn set_hot_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the command being parsed, valid during the call (the `conf`
    // argument of an http-level directive is the main conf, not used here).
    let cmd = unsafe { &*cmd };
    let taken = |mcf: &MainConf, name: &[u8]| {
        if mcf.hot.is_some() {
            Some("is duplicate (one hot zone per http block)".to_string())
        } else if mcf.zones.iter().any(|z| z.name == name) {
            Some("names a stale_cache_zone; give the hot zone its own name".to_string())
        } else {
            None
        }
    };
    let init = Some(super::hot::init_hot_zone as _);
    // nginx's zone is small (mutex and bookkeeping); the table has a region of SIZE bytes of
    // its own (see `hot::HotZone`).
    let nginx_size = Some(super::hot::nginx_zone_size());
    let (name, size, shm) = match add_shm_zone(cf, cmd, 1024 * 1024, "64m", taken, init, nginx_size)
    {
        Ok(zone) => zone,
        Err(answer) => return answer,
    };
    // SAFETY: as above.
    let Some(mcf) = StaleCacheModule::main_conf_mut(unsafe { &*cf }) else {
        return CONF_ERROR;
    };
    let hot = mcf.hot.insert(super::hot::HotZone::new(name, shm, size));
    // The zone's initialiser reads its size from here (the main conf lives as long as the
    // cycle).
    // SAFETY: the zone nginx returned above, valid for the cycle.
    unsafe { (*shm).data = hot as *mut super::hot::HotZone as *mut c_void };
    CONF_OK
}

/// `stale_cache_hot_max_age TIME;`
pub unsafe extern "C" fn set_hot_max_age(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_hot_max_age`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.hot_max_age_ms != u64::MAX {
        return conf_error(cf, cmd, "is duplicate");
    }
    let mut value = conf_args(cfr)[1];
    // SAFETY: parses a string nginx owns; `0`: the value is in milliseconds.
    let ms = unsafe { ngx::ffi::ngx_parse_time(&mut value, 0) };
    if ms <= 0 || ms > 3_600_000 {
        return conf_error(
            cf,
            cmd,
            "expected a time like 1s or 500ms, above 0 and up to 1h",
        );
    }
    scf.hot_max_age_ms = ms as u64;
    CONF_OK
}

/// `stale_cache_hot_max_size SIZE;`
pub unsafe extern "C" fn set_hot_max_size(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive `stale_cache_hot_max_size`.
    let (cfr, cmd, scf) = unsafe { directive_args(cf, cmd, conf) };
    if scf.hot_max_size != usize::MAX {
        return conf_error(cf, cmd, "is duplicate");
    }
    let mut value = conf_args(cfr)[1];
    // SAFETY: parses the argument string nginx owns.
    let size = unsafe { ngx::ffi::ngx_parse_size(&mut value) };
    if size <= 0 || size as usize >= 1 << 30 {
        return conf_error(cf, cmd, "expected a size like 256k, above 0 and below 1g");
    }
    scf.hot_max_size = size as usize;
    CONF_OK
}
