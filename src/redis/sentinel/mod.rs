//! Redis Sentinel for the native Redis locations: `stale_cache_redis_sentinel` in an
//! `upstream` block makes that server group's peer the current master of a Sentinel-managed
//! Redis, found and checked by each worker on its own.
//!
//! Why per worker and not in shared memory: a discovery round is three tiny exchanges, so
//! every worker asking the Sentinels once a second costs nothing, needs no lock between
//! processes, and lets the worker that sees a failure (a refused connection, `-READONLY`)
//! react at once without telling the others. Only the counters are shared (`metrics`), so a
//! failover is counted once however many workers see it.
//!
//! Files: this one (the settings, the directive, the registry of this cycle's groups);
//! `balancer` (nginx's peer selection: init_upstream, init_peer, get, free); `discover` (the
//! rounds: Sentinels in turn, `SENTINEL get-master-addr-by-name`, then `ROLE` on the answer);
//! `metrics` (the shared counters and their Prometheus lines). Connections go through
//! `super::side`.

mod balancer;
mod boot;
mod discover;
mod metrics;

use core::ffi::{c_char, c_void};
use std::cell::RefCell;
use std::net::ToSocketAddrs;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_conf_ctx_t, ngx_http_upstream_module,
    ngx_http_upstream_server_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_msec_t,
    ngx_parse_time, ngx_str_t,
};

use super::side::PeerAddr;
use crate::nginx::util::{conf_args, conf_error, str_bytes, CONF_ERROR, CONF_OK, OK};

pub use balancer::master_refused_write;
pub use metrics::render;

/// Credentials for AUTH (`user` empty: the password alone, Redis's `requirepass`).
pub struct Auth {
    user: Vec<u8>,
    password: Vec<u8>,
}

impl Auth {
    /// The AUTH command, or nothing.
    fn command(auth: &Option<Auth>) -> Option<Vec<&[u8]>> {
        auth.as_ref().map(|a| {
            let mut cmd: Vec<&[u8]> = vec![b"AUTH"];
            if !a.user.is_empty() {
                cmd.push(&a.user);
            }
            cmd.push(&a.password);
            cmd
        })
    }
}

/// One `stale_cache_redis_sentinel` group, allocated from the configuration's pool: the
/// settings, and this worker's discovery state (each worker has its own copy after fork).
pub struct Sentinel {
    group: *mut ngx_http_upstream_srv_conf_t,
    upstream_name: String,
    master_name: Vec<u8>,
    sentinels: Vec<PeerAddr>,
    sentinel_auth: Option<Auth>,
    redis_auth: Option<Auth>,
    interval: ngx_msec_t,
    timeout: ngx_msec_t,
    counters: metrics::Shared,
    state: RefCell<discover::State>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let me = self as *const Sentinel;
        REGISTRY.with(|r| r.borrow_mut().retain(|&(_, s)| s != me));
    }
}

thread_local! {
    /// The groups of every live configuration cycle, with their cycle: each removes itself
    /// when its cycle's pool goes (Drop), so only live ones are ever read.
    static REGISTRY: RefCell<Vec<(*mut ngx_cycle_t, *const Sentinel)>> =
        const { RefCell::new(Vec::new()) };
}

/// Runs `f` over the groups of the running cycle, walking the list in place (no allocation:
/// `find` runs per Redis request).
fn with_current<R>(f: impl FnOnce(&mut dyn Iterator<Item = &'static Sentinel>) -> R) -> R {
    // SAFETY: ngx_cycle is the running cycle, set by nginx before any module code runs.
    let cycle = unsafe { ngx::ffi::ngx_cycle } as *mut ngx_cycle_t;
    REGISTRY.with(|r| {
        let list = r.borrow();
        let mut groups = list
            .iter()
            .filter(|&&(c, _)| c == cycle)
            // SAFETY: registered entries are live (see REGISTRY); the cycle's pool owns them.
            .map(|&(_, s)| unsafe { &*s });
        f(&mut groups)
    })
}

/// The groups of the running cycle.
fn current() -> Vec<&'static Sentinel> {
    with_current(|groups| groups.collect())
}

/// The group a Redis location's server group is, if it is Sentinel-managed.
fn find(group: *mut ngx_http_upstream_srv_conf_t) -> Option<&'static Sentinel> {
    // (`find` through `&mut` of the trait object: the object itself is unsized.)
    with_current(|groups| Iterator::find(&mut &mut *groups, |s| s.group == group))
}

/// The workers start discovering at once, so the first requests find a master.
pub unsafe extern "C" fn init_process(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    for s in current() {
        discover::start(s);
    }
    OK
}

/// `stale_cache_redis_sentinel master_name host:port... [interval=1s] [timeout=250ms]
/// [password=...] [user=...] [sentinel_password=...] [sentinel_user=...];` in an `upstream`
/// block, before `keepalive`.
pub unsafe extern "C" fn set_sentinel(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed and the command, valid during the
    // call; inside an upstream block cf->ctx is that block's http configuration context.
    let (cfr, cmd) = unsafe { (&*cf, &*cmd) };
    // SAFETY: as above: the upstream module's server configuration is the block's group.
    let group = unsafe {
        let ctx = cfr.ctx as *mut ngx_http_conf_ctx_t;
        *(*ctx).srv_conf.add(ngx_http_upstream_module.ctx_index)
            as *mut ngx_http_upstream_srv_conf_t
    };
    // SAFETY: the group of the block being parsed.
    let uscf = unsafe { &mut *group };
    // SAFETY: the block's array of servers, created with it.
    if unsafe { (*uscf.servers).nelts } != 0 {
        return conf_error(
            cf,
            cmd,
            "finds the server itself: remove the \"server\" lines of its upstream block",
        );
    }
    if uscf.peer.init_upstream.is_some() {
        return conf_error(
            cf,
            cmd,
            "must come before \"keepalive\" and any other balancing directive of the upstream",
        );
    }
    let args = conf_args(cfr);
    let mut s = Settings {
        master_name: str_bytes(&args[1]).to_vec(),
        ..Settings::default()
    };
    for arg in &args[2..] {
        if let Err(message) = s.parse_arg(str_bytes(arg)) {
            return conf_error(cf, cmd, &message);
        }
    }
    if s.sentinels.is_empty() {
        return conf_error(cf, cmd, "needs at least one Sentinel address (host:port)");
    }
    let Some(counters) = metrics::Shared::new() else {
        return conf_error(cf, cmd, "could not map the counters' shared memory");
    };
    // SAFETY: the configuration pool lives as long as the cycle; dropping the value with it
    // takes it out of the registry.
    let pool = unsafe { Pool::from_ngx_pool(cfr.pool) };
    let sentinel = pool.allocate(Sentinel {
        group,
        upstream_name: String::from_utf8_lossy(str_bytes(&uscf.host)).into_owned(),
        master_name: s.master_name,
        sentinels: s.sentinels,
        sentinel_auth: s.sentinel_auth.finish(),
        redis_auth: s.redis_auth.finish(),
        interval: s.interval,
        timeout: s.timeout,
        counters,
        state: RefCell::new(discover::State::default()),
    });
    if sentinel.is_null() {
        return CONF_ERROR;
    }
    REGISTRY.with(|r| r.borrow_mut().push((cfr.cycle, sentinel)));
    // SAFETY: just allocated and initialised above.
    boot::initial_master(unsafe { &*sentinel });
    uscf.peer.data = sentinel as *mut c_void;
    uscf.peer.init_upstream = Some(balancer::init_upstream);
    // nginx refuses an upstream block without servers; this placeholder is never used (the
    // balancer above replaces round robin, which would read it).
    // SAFETY: `servers` is the block's array of ngx_http_upstream_server_t (created with it).
    unsafe {
        let server = ngx::ffi::ngx_array_push(uscf.servers) as *mut ngx_http_upstream_server_t;
        if server.is_null() {
            return CONF_ERROR;
        }
        core::ptr::write_bytes(server, 0, 1);
        (*server).name = ngx::ngx_string!("sentinel");
        (*server).weight = 1;
    }
    CONF_OK
}

#[derive(Default)]
struct AuthArgs {
    user: Option<Vec<u8>>,
    password: Option<Vec<u8>>,
}

impl AuthArgs {
    fn finish(self) -> Option<Auth> {
        self.password.map(|password| Auth {
            user: self.user.unwrap_or_default(),
            password,
        })
    }
}

struct Settings {
    master_name: Vec<u8>,
    sentinels: Vec<PeerAddr>,
    sentinel_auth: AuthArgs,
    redis_auth: AuthArgs,
    interval: ngx_msec_t,
    timeout: ngx_msec_t,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            master_name: Vec::new(),
            sentinels: Vec::new(),
            sentinel_auth: AuthArgs::default(),
            redis_auth: AuthArgs::default(),
            interval: 1000,
            timeout: 250,
        }
    }
}

impl Settings {
    /// One argument after the master name. Messages never repeat a password.
    fn parse_arg(&mut self, arg: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(arg);
        let Some((key, value)) = text.split_once('=') else {
            let addr = text
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    format!("invalid Sentinel address \"{text}\" (expected host:port)")
                })?;
            self.sentinels.push(PeerAddr::new(addr));
            return Ok(());
        };
        let bytes = value.as_bytes().to_vec();
        match key {
            "password" => self.redis_auth.password = Some(bytes),
            "user" => self.redis_auth.user = Some(bytes),
            "sentinel_password" => self.sentinel_auth.password = Some(bytes),
            "sentinel_user" => self.sentinel_auth.user = Some(bytes),
            "interval" | "timeout" => {
                let mut s = ngx_str_t {
                    len: value.len(),
                    data: value.as_ptr() as *mut u8,
                };
                // SAFETY: ngx_parse_time only reads the string.
                let ms = unsafe { ngx_parse_time(&mut s, 0) };
                if ms <= 0 {
                    return Err(format!("invalid time in \"{key}={value}\""));
                }
                if key == "interval" {
                    self.interval = ms as ngx_msec_t;
                } else {
                    self.timeout = ms as ngx_msec_t;
                }
            }
            _ => return Err(format!("unknown parameter \"{key}=\"")),
        }
        Ok(())
    }
}
