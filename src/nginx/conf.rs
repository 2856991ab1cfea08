//! Location configuration and the directive handlers of the native Redis locations.

use core::ffi::{c_char, c_void};
use core::mem;
use core::ptr;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t, ngx_http_core_module,
    ngx_http_upstream_add, ngx_http_upstream_conf_t, ngx_msec_t, ngx_parse_url, ngx_url_t,
    NGX_CONF_BITMASK_SET, NGX_HTTP_UPSTREAM_FT_ERROR, NGX_HTTP_UPSTREAM_FT_TIMEOUT, NGX_LOG_EMERG,
};
use ngx::ngx_conf_log_error;

use super::refresh::RefreshTarget;
use super::util::{conf_args, pool_str, str_bytes, CONF_ERROR, CONF_OK};
use super::vars::VarIndexes;
use super::zone::Zone;
use crate::settings::{check_literal, Var};
use ngx::ffi::ngx_http_request_t;

/// Defaults of the Redis locations: Redis on loopback answers in well under a millisecond, so
/// waiting seconds (redis2's default is 60 s) only turns an outage into piled-up requests.
pub const DEFAULT_CONNECT_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_SEND_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_READ_TIMEOUT_MS: ngx_msec_t = 500;
pub const DEFAULT_BACKOFF_MS: ngx_msec_t = 1000;

const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_SIZE: usize = usize::MAX;
const UNSET_UINT: usize = usize::MAX;

/// How a Redis location turns replies into a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
    Unset,
    /// HttpRedis-compatible: the last reply's value is the body; nil is 404; an error is 502.
    Value,
    /// redis2-compatible: 200 with every reply's raw RESP bytes, concatenated.
    Raw,
}

/// One argument of a configured Redis command.
pub enum RedisArg {
    Literal(Vec<u8>),
    /// Contains variables; evaluated per request.
    Complex(*mut ngx_http_complex_value_t),
    /// Exactly `$request_body`: the body buffers are sent as they are, without a copy.
    RequestBody,
}

/// Settings of a native Redis location (`stale_cache_redis_*`).
pub struct RedisConf {
    /// nginx's upstream settings: server group, timeouts, buffer size.
    pub upstream: ngx_http_upstream_conf_t,
    pub commands: Vec<Vec<RedisArg>>,
    pub reply: ReplyMode,
    pub backoff: ngx_msec_t,
    pub uses_request_body: bool,
    /// `stale_cache_redis_pass` appears in this very location (not inherited).
    pub has_pass: bool,
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
}

pub struct LocConf {
    pub redis: RedisConf,
    pub stale: StaleCacheConf,
}

/// The module's http-level configuration.
pub struct MainConf {
    pub zones: Vec<Zone>,
    pub vars: VarIndexes,
    /// The per-start secret the refresh requests carry (hex); never logged.
    pub secret: String,
    /// Some location has `stale_cache on` (POST_READ work is skipped otherwise).
    pub in_use: bool,
}

impl LocConf {
    pub fn enabled(&self) -> bool {
        self.stale.enabled == 1
    }

    pub fn memo_enabled(&self) -> bool {
        self.stale.memo != 0
    }

    pub fn skip_header_name(&self) -> &[u8] {
        self.stale
            .skip_header
            .as_deref()
            .unwrap_or(crate::settings::DEFAULT_SKIP_FETCH)
    }

    /// Where this request's refresh goes: the configured address, or the plain-HTTP
    /// listener the client used (a wildcard one through loopback).
    pub fn refresh_target(&self, r: &ngx_http_request_t) -> Result<RefreshTarget, &'static str> {
        if let Some(target) = &self.stale.refresh_target {
            return Ok(target.clone());
        }
        // SAFETY: a live request has its connection, listener and address configuration.
        unsafe {
            let hc = r.http_connection;
            let plain = hc.is_null() || {
                let addr = &*(*hc).addr_conf;
                addr.ssl() == 0 && addr.http2() == 0 && addr.proxy_protocol() == 0
            };
            if !plain || !r.stream.is_null() || !(*r.connection).ssl.is_null() {
                return Err(
                    "stale_cache: the client came over TLS, HTTP/2 or the PROXY \
                            protocol, so the refresh cannot reuse its listener; set \
                            \"stale_cache_refresh_address\" to a plain HTTP listener \
                            (e.g. 127.0.0.1:8080 or unix:/run/nginx-refresh.sock)",
                );
            }
            let ls = &*(*r.connection).listening;
            let bytes = core::slice::from_raw_parts(ls.sockaddr as *const u8, ls.socklen as usize);
            Ok(loopback_if_wildcard(bytes))
        }
    }
}

/// The listener's address, with a wildcard address replaced by loopback.
fn loopback_if_wildcard(sockaddr: &[u8]) -> RefreshTarget {
    let mut bytes = sockaddr.to_vec();
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]) as i32;
    let name = match family {
        libc_af::INET if bytes.len() >= 8 => {
            if bytes[4..8] == [0, 0, 0, 0] {
                bytes[4..8].copy_from_slice(&[127, 0, 0, 1]);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            format!(
                "{}.{}.{}.{}:{}",
                bytes[4], bytes[5], bytes[6], bytes[7], port
            )
        }
        libc_af::INET6 if bytes.len() >= 24 => {
            if bytes[8..24].iter().all(|&b| b == 0) {
                bytes[23] = 1;
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let mut segs = [0u16; 8];
            for (i, seg) in segs.iter_mut().enumerate() {
                *seg = u16::from_be_bytes([bytes[8 + 2 * i], bytes[9 + 2 * i]]);
            }
            format!("[{}]:{}", std::net::Ipv6Addr::from(segs), port)
        }
        libc_af::UNIX => {
            let path = &bytes[2..];
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            format!("unix:{}", String::from_utf8_lossy(&path[..end]))
        }
        _ => "this server".to_string(),
    };
    RefreshTarget {
        sockaddr: bytes,
        name,
    }
}

/// Address families, as Linux numbers them (sockaddr's first field).
mod libc_af {
    pub const UNIX: i32 = 1;
    pub const INET: i32 = 2;
    pub const INET6: i32 = 10;
}

impl LocConf {
    fn new() -> Self {
        // SAFETY: ngx_http_upstream_conf_t is a plain C struct; all-zero is its "calloc" state,
        // which is how nginx's own modules start it before setting the unset markers.
        let mut upstream: ngx_http_upstream_conf_t = unsafe { mem::zeroed() };
        upstream.local = usize::MAX as *mut _;
        upstream.socket_keepalive = usize::MAX as _;
        upstream.next_upstream_tries = UNSET_UINT;
        upstream.connect_timeout = UNSET_MSEC;
        upstream.send_timeout = UNSET_MSEC;
        upstream.read_timeout = UNSET_MSEC;
        upstream.next_upstream_timeout = UNSET_MSEC;
        upstream.buffer_size = UNSET_SIZE;
        // Fixed for this protocol: stream replies through, never to temp files, and hand
        // Redis's "not found" to the caller (srcache) as a plain 404 rather than an error page.
        upstream.buffering = 0;
        upstream.ignore_client_abort = 0;
        upstream.intercept_errors = 0;
        upstream.set_intercept_404(0);
        upstream.pass_request_headers = 0;
        upstream.pass_request_body = 0;
        upstream.force_ranges = 1;
        LocConf {
            redis: RedisConf {
                upstream,
                commands: Vec::new(),
                reply: ReplyMode::Unset,
                backoff: UNSET_MSEC,
                uses_request_body: false,
                has_pass: false,
            },
            stale: StaleCacheConf {
                enabled: -1,
                memo: -1,
                skip_header: None,
                refresh_target: None,
            },
        }
    }
}

pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes a valid configuration context with a live pool.
    let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
    pool.allocate(LocConf::new()) as *mut c_void
}

fn merge_msec(conf: &mut ngx_msec_t, prev: ngx_msec_t, default: ngx_msec_t) {
    if *conf == UNSET_MSEC {
        *conf = if prev == UNSET_MSEC { default } else { prev };
    }
}

pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the two LocConf values created by create_loc_conf.
    let (prev, conf) = unsafe { (&*(parent as *const LocConf), &mut *(child as *mut LocConf)) };
    let (p, c) = (&prev.redis.upstream, &mut conf.redis.upstream);

    merge_msec(
        &mut c.connect_timeout,
        p.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT_MS,
    );
    merge_msec(&mut c.send_timeout, p.send_timeout, DEFAULT_SEND_TIMEOUT_MS);
    merge_msec(&mut c.read_timeout, p.read_timeout, DEFAULT_READ_TIMEOUT_MS);
    merge_msec(&mut c.next_upstream_timeout, p.next_upstream_timeout, 0);
    merge_msec(
        &mut conf.redis.backoff,
        prev.redis.backoff,
        DEFAULT_BACKOFF_MS,
    );
    if c.buffer_size == UNSET_SIZE {
        c.buffer_size = if p.buffer_size == UNSET_SIZE {
            // SAFETY: ngx_pagesize is set once at startup, before configuration is read.
            unsafe { ngx::ffi::ngx_pagesize }
        } else {
            p.buffer_size
        };
    }
    if c.next_upstream_tries == UNSET_UINT {
        c.next_upstream_tries = if p.next_upstream_tries == UNSET_UINT {
            0
        } else {
            p.next_upstream_tries
        };
    }
    if c.local == usize::MAX as *mut _ {
        c.local = if p.local == usize::MAX as *mut _ {
            ptr::null_mut()
        } else {
            p.local
        };
    }
    if c.socket_keepalive == usize::MAX as _ {
        c.socket_keepalive = 0;
    }
    c.next_upstream =
        (NGX_CONF_BITMASK_SET | NGX_HTTP_UPSTREAM_FT_ERROR | NGX_HTTP_UPSTREAM_FT_TIMEOUT) as usize;
    if c.upstream.is_null() {
        c.upstream = p.upstream;
    }
    if conf.stale.enabled == -1 {
        conf.stale.enabled = if prev.stale.enabled == -1 {
            0
        } else {
            prev.stale.enabled
        };
    }
    if conf.stale.memo == -1 {
        conf.stale.memo = if prev.stale.memo == -1 {
            1
        } else {
            prev.stale.memo
        };
    }
    if conf.stale.skip_header.is_none() {
        conf.stale.skip_header = prev.stale.skip_header.clone();
    }
    if conf.stale.refresh_target.is_none() {
        conf.stale.refresh_target = prev.stale.refresh_target.clone();
    }
    if conf.stale.enabled == 1 && !check_literal_variables(cf) {
        return CONF_ERROR;
    }
    if conf.redis.reply == ReplyMode::Unset {
        conf.redis.reply = default_reply_mode(&conf.redis.commands);
    }
    if conf.redis.has_pass && conf.redis.commands.is_empty() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"stale_cache_redis_pass\" needs at least one \"stale_cache_redis_command\" in the same location"
        );
        return CONF_ERROR;
    }
    if !conf.redis.has_pass && !conf.redis.commands.is_empty() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"stale_cache_redis_command\" needs \"stale_cache_redis_pass\" in the same location"
        );
        return CONF_ERROR;
    }
    CONF_OK
}

/// Rejects bad `$cache_*` values that the location sets as literals.
fn check_literal_variables(cf: *mut ngx_conf_t) -> bool {
    let mcf = main_conf_of(cf);
    for (index, value) in super::literals::literal_sets(cf) {
        let Some(var) = Var::ALL.into_iter().find(|v| mcf.vars[v.index()] == index) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        if let Err(e) = check_literal(var, &value) {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "stale_cache: {}", e);
            return false;
        }
        if var == Var::Lock && !mcf.zones.iter().any(|z| z.name == value) {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "stale_cache: $cache_lock: \"{}\" names no zone; add \"stale_cache_zone {} 1m;\" \
                 to the http block",
                String::from_utf8_lossy(&value),
                String::from_utf8_lossy(&value)
            );
            return false;
        }
    }
    true
}

/// `value` for a location whose only command is a literal GET (the srcache fetch location),
/// `raw` otherwise.
fn default_reply_mode(commands: &[Vec<RedisArg>]) -> ReplyMode {
    match commands {
        [only] => match only.first() {
            Some(RedisArg::Literal(name)) if name.eq_ignore_ascii_case(b"get") => ReplyMode::Value,
            _ => ReplyMode::Raw,
        },
        _ => ReplyMode::Raw,
    }
}

/// The location's LocConf as nginx hands it to a directive handler.
fn loc_conf<'a>(conf: *mut c_void) -> &'a mut LocConf {
    // SAFETY: directives of this module are declared with NGX_HTTP_LOC_CONF_OFFSET, so `conf`
    // is the LocConf that create_loc_conf made for the current location.
    unsafe { &mut *(conf as *mut LocConf) }
}

fn directive_name(cmd: *mut ngx_command_t) -> String {
    // SAFETY: nginx passes the command being parsed, whose name is a static string.
    String::from_utf8_lossy(str_bytes(unsafe { &(*cmd).name })).into_owned()
}

/// `stale_cache_redis_pass host:port | unix:/path | upstream_name;`
pub unsafe extern "C" fn set_redis_pass(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let cfr = unsafe { &mut *cf };
    if lcf.redis.has_pass {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"{}\" directive is duplicate",
            directive_name(cmd)
        );
        return CONF_ERROR;
    }
    let address = conf_args(cfr)[1];

    // SAFETY: ngx_url_t is a plain C struct whose zero state is "nothing parsed yet".
    let mut url: ngx_url_t = unsafe { mem::zeroed() };
    url.url = address;
    url.set_no_resolve(1);
    // Parse once here only to give a message naming the directive; nginx parses it again.
    // SAFETY: `url` is initialised and `cf.pool` is live.
    let mut probe = url;
    if unsafe { ngx_parse_url(cfr.pool, &mut probe) } != 0 {
        let reason = if probe.err.is_null() {
            "invalid address".to_string()
        } else {
            // SAFETY: ngx_parse_url sets `err` to a static NUL-terminated message.
            unsafe { core::ffi::CStr::from_ptr(probe.err) }
                .to_string_lossy()
                .into_owned()
        };
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"{}\": {} in \"{}\" (expected host:port, unix:/path or an upstream name)",
            directive_name(cmd),
            reason,
            String::from_utf8_lossy(str_bytes(&address))
        );
        return CONF_ERROR;
    }

    // SAFETY: as above; ngx_http_upstream_add returns the (possibly shared) server group.
    let upstream = unsafe { ngx_http_upstream_add(cf, &mut url, 0) };
    if upstream.is_null() {
        return CONF_ERROR;
    }
    lcf.redis.upstream.upstream = upstream;
    lcf.redis.has_pass = true;

    // SAFETY: cf.ctx is the http configuration context of the location being parsed.
    unsafe {
        let ctx = cfr.ctx as *mut ngx_http_conf_ctx_t;
        let clcf =
            *(*ctx).loc_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_loc_conf_t;
        (*clcf).handler = Some(super::redis::redis_handler);
        let name = str_bytes(&(*clcf).name);
        if name.last() == Some(&b'/') {
            (*clcf).set_auto_redirect(1);
        }
    }
    CONF_OK
}

/// `stale_cache_redis_command NAME [ARG...];` — may be repeated; commands are pipelined.
pub unsafe extern "C" fn set_redis_command(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let cfr = unsafe { &mut *cf };
    let mut command = Vec::new();
    for value in &conf_args(cfr)[1..] {
        let bytes = str_bytes(value);
        if bytes == b"$request_body" {
            command.push(RedisArg::RequestBody);
            lcf.redis.uses_request_body = true;
        } else if bytes.contains(&b'$') {
            match compile_complex_value(cf, value) {
                Some(cv) => command.push(RedisArg::Complex(cv)),
                None => return CONF_ERROR,
            }
        } else {
            command.push(RedisArg::Literal(bytes.to_vec()));
        }
    }
    lcf.redis.commands.push(command);
    CONF_OK
}

fn compile_complex_value(
    cf: *mut ngx_conf_t,
    value: &ngx::ffi::ngx_str_t,
) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: cf is valid while parsing; the complex value is allocated from cf's pool and
    // compiled by nginx, which reports its own errors on failure.
    unsafe {
        let pool = (*cf).pool;
        let cv = ngx::ffi::ngx_pcalloc(pool, mem::size_of::<ngx_http_complex_value_t>())
            as *mut ngx_http_complex_value_t;
        let mut source = pool_str(pool, str_bytes(value))?;
        if cv.is_null() {
            return None;
        }
        let mut ccv: ngx_http_compile_complex_value_t = mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut source;
        ccv.complex_value = cv;
        if ngx_http_compile_complex_value(&mut ccv) != 0 {
            return None;
        }
        Some(cv)
    }
}

/// `stale_cache_redis_reply value | raw;`
pub unsafe extern "C" fn set_redis_reply(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let value = conf_args(unsafe { &*cf })[1];
    lcf.redis.reply = match str_bytes(&value) {
        b"value" => ReplyMode::Value,
        b"raw" => ReplyMode::Raw,
        other => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"{}\": unknown reply mode \"{}\", expected \"value\" or \"raw\"",
                directive_name(cmd),
                String::from_utf8_lossy(other)
            );
            return CONF_ERROR;
        }
    };
    CONF_OK
}

/* ------------------------------------------------------- stale cache directives */

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes a valid configuration context with a live pool.
    let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
    pool.allocate(MainConf {
        zones: Vec::new(),
        vars: [0; crate::settings::Var::COUNT],
        secret: process_secret(),
        in_use: false,
    }) as *mut c_void
}

/// The secret refresh requests carry: made once per master process, so a reload (new
/// configuration, new workers) does not invalidate refreshes still under way.
fn process_secret() -> String {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(new_secret).clone()
}

/// 128 random bits as hex: refresh requests prove with it that this nginx sent them.
fn new_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Still unguessable enough to not be worth a startup failure: RandomState is
        // seeded from the OS's random source.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id() as u64);
            chunk.copy_from_slice(&h.finish().to_ne_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The module's main conf while parsing (any context inside `http`).
pub fn main_conf_of<'a>(cf: *mut ngx_conf_t) -> &'a mut MainConf {
    // SAFETY: inside `http`, cf.ctx is an http conf ctx whose main_conf has our slot.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(super::module::module().ctx_index) as *mut MainConf)
    }
}

fn conf_error(cf: *mut ngx_conf_t, cmd: *mut ngx_command_t, message: &str) -> *mut c_char {
    ngx_conf_log_error!(
        NGX_LOG_EMERG,
        cf,
        "\"{}\": {}",
        directive_name(cmd),
        message
    );
    CONF_ERROR
}

/// `stale_cache_zone NAME SIZE;` — the lock zone `$cache_lock` names.
pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let args = conf_args(unsafe { &*cf });
    let (mut name, mut size_arg) = (args[1], args[2]);
    let name_bytes = str_bytes(&name).to_vec();
    if name_bytes.is_empty()
        || !name_bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(b))
    {
        return conf_error(
            cf,
            cmd,
            "the zone name must be letters, digits, '_', '-' or '.'",
        );
    }
    // SAFETY: parses the argument string nginx owns.
    let size = unsafe { ngx::ffi::ngx_parse_size(&mut size_arg) };
    // SAFETY: read-only global set at startup.
    let min = 8 * unsafe { ngx::ffi::ngx_pagesize };
    if size < 0 || (size as usize) < min {
        return conf_error(
            cf,
            cmd,
            &format!(
                "invalid size \"{}\" (a size like 1m; at least {} bytes)",
                String::from_utf8_lossy(str_bytes(&size_arg)),
                min
            ),
        );
    }
    let mcf = main_conf_of(cf);
    if mcf.zones.iter().any(|z| z.name == name_bytes) {
        return conf_error(
            cf,
            cmd,
            &format!(
                "zone \"{}\" is already defined",
                String::from_utf8_lossy(&name_bytes)
            ),
        );
    }
    let tag = super::module::module() as *const _ as *mut c_void;
    // SAFETY: cf is valid; nginx creates (or finds, on reload) the named zone.
    let shm = unsafe { ngx::ffi::ngx_shared_memory_add(cf, &mut name, size as usize, tag) };
    if shm.is_null() {
        return CONF_ERROR;
    }
    // SAFETY: the zone nginx just returned.
    unsafe {
        (*shm).init = Some(super::zone::init_zone);
        (*shm).data = ptr::null_mut();
    }
    mcf.zones.push(Zone {
        name: name_bytes,
        shm,
        seed: core::cell::Cell::new(None),
    });
    CONF_OK
}

/// `stale_cache on | off;`
pub unsafe extern "C" fn set_stale_cache(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    if lcf.stale.enabled != -1 {
        return conf_error(cf, cmd, "is duplicate");
    }
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let value = conf_args(unsafe { &*cf })[1];
    lcf.stale.enabled = match str_bytes(&value) {
        b"on" => 1,
        b"off" => 0,
        _ => return conf_error(cf, cmd, "expected \"on\" or \"off\""),
    };
    if lcf.stale.enabled == 1 {
        main_conf_of(cf).in_use = true;
    }
    CONF_OK
}

/// `stale_cache_skip_header NAME;`
pub unsafe extern "C" fn set_skip_header(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let value = str_bytes(&conf_args(unsafe { &*cf })[1]).to_vec();
    let token = !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if !token {
        return conf_error(cf, cmd, "expected an HTTP header name such as X-Skip-Fetch");
    }
    lcf.stale.skip_header = Some(value);
    CONF_OK
}

/// `stale_cache_refresh_address host:port | unix:/path;`
pub unsafe extern "C" fn set_refresh_address(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    let lcf = loc_conf(conf);
    // SAFETY: nginx passes a valid configuration context while parsing a directive.
    let cfr = unsafe { &mut *cf };
    let value = conf_args(cfr)[1];
    // SAFETY: ngx_url_t is a plain C struct whose zero state is "nothing parsed yet".
    let mut url: ngx_url_t = unsafe { mem::zeroed() };
    url.url = value;
    // SAFETY: url is initialised; the pool is live; resolves a host name at startup.
    if unsafe { ngx_parse_url(cfr.pool, &mut url) } != 0 || url.naddrs == 0 {
        return conf_error(
            cf,
            cmd,
            &format!(
                "invalid address \"{}\" (expected host:port or unix:/path of a plain HTTP \
                 listener of this nginx)",
                String::from_utf8_lossy(str_bytes(&value))
            ),
        );
    }
    // SAFETY: ngx_parse_url filled at least one address.
    let addr = unsafe { &*url.addrs };
    // SAFETY: the address's sockaddr spans socklen bytes.
    let bytes =
        unsafe { core::slice::from_raw_parts(addr.sockaddr as *const u8, addr.socklen as usize) };
    lcf.stale.refresh_target = Some(RefreshTarget {
        sockaddr: bytes.to_vec(),
        name: String::from_utf8_lossy(str_bytes(&addr.name)).into_owned(),
    });
    CONF_OK
}
