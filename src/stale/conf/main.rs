//! The http-level configuration of the stale-cache layer: the lock zones and the hot zone,
//! the `$cache_*` variable indexes, the refresh secret, and the check of the refresh
//! addresses against the `listen`s.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_uint_t, NGX_LOG_EMERG};
use ngx::http::{HttpModule, HttpModuleMainConf};

use crate::nginx::util::{conf_args, conf_error, str_bytes, CONF_ERROR, CONF_OK};
use crate::nginx::zone::Zone;
use crate::settings::Var;
use crate::stale::hot::region::{self as hot, HotZone};
use crate::stale::sender::RefreshTarget;
use crate::stale::{main_conf, StaleCacheModule};

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
    /// Some location has `stale_cache_purge` with methods (its PRECONTENT handler is
    /// registered only then).
    pub purges: bool,
    /// Every `stale_cache_refresh_address`, as written, checked against the `listen`s.
    pub refresh_addresses: Vec<(RefreshTarget, String)>,
    /// `stale_cache_hot_zone NAME SIZE`: the hot tier's zone, if any.
    pub hot: Option<HotZone>,
    /// Whether any location has a role for srcache (`crate::stale::role`).
    pub roles: crate::stale::role::Roles,
    /// `stale_cache_local_zone NAME SIZE`, or the default one (see `add_default_local_zone`):
    /// where responses are kept for reuse on this node while Redis is away.
    pub local: Option<HotZone>,
    /// `stale_cache_local_zone` was given (a zone, or `off`): no default zone.
    pub local_set: bool,
}

/// The default `stale_cache_local_zone` (see docs/directives.md for why this size).
pub const DEFAULT_LOCAL_ZONE: (&str, usize) = ("stale_cache_local", 4 * 1024 * 1024);

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            zones: Vec::new(),
            vars: [0; Var::COUNT],
            secret: process_secret(),
            in_use: false,
            purges: false,
            refresh_addresses: Vec::new(),
            hot: None,
            roles: Default::default(),
            local: None,
            local_set: false,
        }
    }
}

// SAFETY: create_main_conf (HttpModule's default) allocates exactly this type for this module.
unsafe impl HttpModuleMainConf for StaleCacheModule {
    type MainConf = MainConf;
}

/// Checks every `stale_cache_refresh_address` against the `listen` addresses of this nginx
/// (called from postconfiguration, before nginx merges the listeners): it must be one of them
/// (or served by a wildcard listener of its port), and a plain HTTP one.
pub fn check_refresh_addresses(
    cf: *mut ngx_conf_t,
    cmcf: &ngx::ffi::ngx_http_core_main_conf_t,
) -> Result<(), ()> {
    // SAFETY: postconfiguration runs inside `http` with a valid configuration context.
    let mcf = main_conf(unsafe { &*cf });
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
        seed: Default::default(),
        lane: Default::default(),
        layout_seen: Default::default(),
        memos: Default::default(),
    });
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
    let init = Some(hot::init_hot_zone as _);
    // nginx's zone is small (mutex and bookkeeping); the table has a region of SIZE bytes of
    // its own (see `hot::HotZone`).
    let nginx_size = Some(hot::nginx_zone_size());
    let (name, size, shm) = match add_shm_zone(cf, cmd, 1024 * 1024, "64m", taken, init, nginx_size)
    {
        Ok(zone) => zone,
        Err(answer) => return answer,
    };
    // SAFETY: as above.
    let Some(mcf) = StaleCacheModule::main_conf_mut(unsafe { &*cf }) else {
        return CONF_ERROR;
    };
    let hot = mcf.hot.insert(hot::HotZone::new(name, shm, size));
    // The zone's initialiser reads its size from here (the main conf lives as long as the
    // cycle).
    // SAFETY: the zone nginx returned above, valid for the cycle.
    unsafe { (*shm).data = hot as *mut HotZone as *mut c_void };
    CONF_OK
}

/// Adds nginx's small zone for the local zone's table named `name` whose
/// region is `size` bytes, and records it in `slot`; the zone's initialiser finds its size
/// there (the main conf lives as long as the cycle).
fn add_region_zone(
    cf: *mut ngx_conf_t,
    name: Vec<u8>,
    size: usize,
    slot: &mut Option<HotZone>,
) -> Option<()> {
    let mut ngx_name = ngx::ffi::ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    let tag = StaleCacheModule::module() as *const _ as *mut c_void;
    // SAFETY: cf is valid; nginx copies nothing of the name beyond the cycle's life of the
    // configuration, whose pool keeps `name` (moved into the HotZone below) alive.
    let shm =
        unsafe { ngx::ffi::ngx_shared_memory_add(cf, &mut ngx_name, hot::nginx_zone_size(), tag) };
    // SAFETY: a non-null result is the zone nginx keeps for this cycle.
    let zone = unsafe { shm.as_mut() }?;
    zone.init = Some(hot::init_hot_zone as _);
    let table = slot.insert(HotZone::new(name, shm, size));
    table.local = true;
    zone.data = table as *mut HotZone as *mut c_void;
    Some(())
}

/// `stale_cache_local_zone NAME SIZE | off;` — where this node keeps responses for reuse
/// while Redis is away (on by default, see `add_default_local_zone`).
pub unsafe extern "C" fn set_local_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the command being parsed, valid during the call.
    let cmd = unsafe { &*cmd };
    // SAFETY: as above.
    let args = conf_args(unsafe { &*cf });
    // SAFETY: as above.
    let Some(mcf) = StaleCacheModule::main_conf_mut(unsafe { &*cf }) else {
        return CONF_ERROR;
    };
    if mcf.local_set {
        return conf_error(cf, cmd, "is duplicate (one local zone per http block)");
    }
    mcf.local_set = true;
    let name = str_bytes(&args[1]).to_vec();
    if args.len() == 2 {
        if name == b"off" {
            return CONF_OK;
        }
        return conf_error(
            cf,
            cmd,
            "takes a name and a size (like \"local 4m\"), or \"off\"",
        );
    }
    let valid_name = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(b));
    if !valid_name {
        return conf_error(
            cf,
            cmd,
            "the zone name must be letters, digits, '_', '-' or '.'",
        );
    }
    if mcf.zones.iter().any(|z| z.name == name) || mcf.hot.as_ref().is_some_and(|h| h.name == name)
    {
        return conf_error(
            cf,
            cmd,
            "names another zone; give the local zone its own name",
        );
    }
    let mut size_arg = args[2];
    // SAFETY: parses the argument string nginx owns.
    let size = unsafe { ngx::ffi::ngx_parse_size(&mut size_arg) };
    let min = 1024 * 1024;
    if size < 0 || (size as usize) < min {
        let message = format!(
            "invalid size \"{}\" (a size like 4m; at least {min} bytes)",
            String::from_utf8_lossy(str_bytes(&size_arg)),
        );
        return conf_error(cf, cmd, &message);
    }
    match add_region_zone(cf, name, size as usize, &mut mcf.local) {
        Some(()) => CONF_OK,
        None => CONF_ERROR,
    }
}

/// postconfiguration: without `stale_cache_local_zone`, a location with `stale_cache on`
/// and no hot zone gets the default local zone (the hot zone, when there is one, keeps the
/// local copies too).
pub fn add_default_local_zone(cf: *mut ngx_conf_t) -> Option<()> {
    // SAFETY: postconfiguration passes the configuration being read.
    let mcf = StaleCacheModule::main_conf_mut(unsafe { &*cf })?;
    if mcf.local_set || !mcf.in_use || mcf.hot.is_some() {
        return Some(());
    }
    let (name, size) = DEFAULT_LOCAL_ZONE;
    add_region_zone(cf, name.as_bytes().to_vec(), size, &mut mcf.local)
}
