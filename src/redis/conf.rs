//! Configuration of a native Redis location and its directives.

use core::ffi::{c_char, c_void};
use core::mem;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_http_upstream_add, ngx_http_upstream_conf_t,
    ngx_http_upstream_srv_conf_t, ngx_msec_t, ngx_parse_url, ngx_url_t, NGX_CONF_BITMASK_SET,
    NGX_HTTP_UPSTREAM_FT_ERROR, NGX_HTTP_UPSTREAM_FT_TIMEOUT, NGX_LOG_EMERG,
};
use ngx::http::{HttpModuleLocationConf, Merge, MergeConfigError, NgxHttpCoreModule};

use super::module::RedisModule;
use crate::keyderive::Transform;
use crate::nginx::util::{conf_args, conf_error, pool_str, str_bytes, CONF_ERROR, CONF_OK};

/// Defaults of the Redis locations: Redis on loopback answers in well under a millisecond, so
/// waiting seconds (redis2's default is 60 s) only turns an outage into piled-up requests.
pub const DEFAULT_CONNECT_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_SEND_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_READ_TIMEOUT_MS: ngx_msec_t = 500;
pub const DEFAULT_BACKOFF_MS: ngx_msec_t = 1000;

const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_SIZE: usize = usize::MAX;
const UNSET_UINT: usize = usize::MAX;
const UNSET_PTR: usize = usize::MAX;

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
    /// `stale_cache_redis_watch`: the server group `$stale_cache_redis_down` reports on;
    /// null means any group a Redis location uses.
    pub watch: *mut ngx_http_upstream_srv_conf_t,
}

impl Default for RedisConf {
    fn default() -> Self {
        // SAFETY: ngx_http_upstream_conf_t is a plain C struct; all-zero is its "calloc" state,
        // which is how nginx's own modules start it before setting the unset markers.
        let mut upstream: ngx_http_upstream_conf_t = unsafe { mem::zeroed() };
        upstream.local = UNSET_PTR as *mut _;
        upstream.socket_keepalive = UNSET_PTR as _;
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
        // intercept_404 (a bitfield, see crate::nginx::bits) stays 0 from the zeroed start.
        upstream.pass_request_headers = 0;
        upstream.pass_request_body = 0;
        upstream.force_ranges = 1;
        RedisConf {
            upstream,
            commands: Vec::new(),
            reply: ReplyMode::Unset,
            backoff: UNSET_MSEC,
            uses_request_body: false,
            has_pass: false,
            watch: ptr::null_mut(),
        }
    }
}

fn merge_value<T: Copy + PartialEq>(conf: &mut T, prev: T, unset: T, default: T) {
    if *conf == unset {
        *conf = if prev == unset { default } else { prev };
    }
}

impl Merge for RedisConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        let (p, c) = (&prev.upstream, &mut self.upstream);
        merge_value(
            &mut c.connect_timeout,
            p.connect_timeout,
            UNSET_MSEC,
            DEFAULT_CONNECT_TIMEOUT_MS,
        );
        let send = DEFAULT_SEND_TIMEOUT_MS;
        merge_value(&mut c.send_timeout, p.send_timeout, UNSET_MSEC, send);
        let read = DEFAULT_READ_TIMEOUT_MS;
        merge_value(&mut c.read_timeout, p.read_timeout, UNSET_MSEC, read);
        merge_value(
            &mut c.next_upstream_timeout,
            p.next_upstream_timeout,
            UNSET_MSEC,
            0,
        );
        merge_value(
            &mut self.backoff,
            prev.backoff,
            UNSET_MSEC,
            DEFAULT_BACKOFF_MS,
        );
        // SAFETY: ngx_pagesize is set once at startup, before configuration is read.
        let page = unsafe { ngx::ffi::ngx_pagesize };
        merge_value(&mut c.buffer_size, p.buffer_size, UNSET_SIZE, page);
        merge_value(
            &mut c.next_upstream_tries,
            p.next_upstream_tries,
            UNSET_UINT,
            0,
        );
        merge_value(&mut c.local, p.local, UNSET_PTR as *mut _, ptr::null_mut());
        if c.socket_keepalive == UNSET_PTR as _ {
            c.socket_keepalive = 0;
        }
        c.next_upstream = (NGX_CONF_BITMASK_SET
            | NGX_HTTP_UPSTREAM_FT_ERROR
            | NGX_HTTP_UPSTREAM_FT_TIMEOUT) as usize;
        if c.upstream.is_null() {
            c.upstream = p.upstream;
        }
        if self.watch.is_null() {
            self.watch = prev.watch;
        }
        if self.reply == ReplyMode::Unset {
            self.reply = default_reply_mode(&self.commands);
        }
        Ok(())
    }
}

/// Checks what a location's Redis directives say together; an error message otherwise.
pub fn check(conf: &RedisConf) -> Result<(), &'static str> {
    match (conf.has_pass, conf.commands.is_empty()) {
        (true, true) => Err("\"stale_cache_redis_pass\" needs at least one \
                             \"stale_cache_redis_command\" in the same location"),
        (false, false) => Err(
            "\"stale_cache_redis_command\" needs \"stale_cache_redis_pass\" \
                               in the same location",
        ),
        _ => Ok(()),
    }
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

/// The location's RedisConf as nginx hands it to a directive handler.
///
/// # Safety
/// `conf` must be what nginx passes to a directive of this module declared with
/// `NGX_HTTP_LOC_CONF_OFFSET`.
unsafe fn conf_mut<'a>(conf: *mut c_void) -> &'a mut RedisConf {
    // SAFETY: (caller) `conf` is the RedisConf create_loc_conf made for the current location,
    // valid for the whole configuration cycle.
    unsafe { &mut *(conf as *mut RedisConf) }
}

/// `stale_cache_redis_pass host:port | unix:/path | upstream_name;`
pub unsafe extern "C" fn set_redis_pass(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, the command and this module's
    // location configuration, all valid during the call.
    let (cfr, cmd, rcf) = unsafe { (&mut *cf, &*cmd, conf_mut(conf)) };
    if rcf.has_pass {
        return conf_error(cf, cmd, "is duplicate");
    }
    let Some(upstream) = server_group(cf, cmd, conf_args(cfr)[1]) else {
        return CONF_ERROR;
    };
    rcf.upstream.upstream = upstream;
    rcf.has_pass = true;

    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cfr) else {
        return CONF_ERROR;
    };
    clcf.handler = Some(super::handler::redis_handler);
    if str_bytes(&clcf.name).last() == Some(&b'/') {
        clcf.set_auto_redirect(1);
    }
    CONF_OK
}

/// The server group named by `address` (`host:port`, `unix:/path` or an `upstream` name):
/// the same group every directive naming the same address gets, which is what lets
/// `stale_cache_redis_watch` find the backoff of the Redis locations' group.
fn server_group(
    cf: *mut ngx_conf_t,
    cmd: &ngx_command_t,
    address: ngx::ffi::ngx_str_t,
) -> Option<*mut ngx_http_upstream_srv_conf_t> {
    // SAFETY: ngx_url_t is a plain C struct whose zero state is "nothing parsed yet".
    let mut url: ngx_url_t = unsafe { mem::zeroed() };
    url.url = address;
    url.set_no_resolve(1);
    // Parse once here only to give a message naming the directive; nginx parses it again.
    let mut probe = url;
    // SAFETY: `probe` is initialised and the configuration's pool is live.
    if unsafe { ngx_parse_url((*cf).pool, &mut probe) } != 0 {
        let reason = if probe.err.is_null() {
            "invalid address".to_string()
        } else {
            // SAFETY: ngx_parse_url sets `err` to a static NUL-terminated message.
            unsafe { core::ffi::CStr::from_ptr(probe.err) }
                .to_string_lossy()
                .into_owned()
        };
        let message = format!(
            "{} in \"{}\" (expected host:port, unix:/path or an upstream name)",
            reason,
            String::from_utf8_lossy(str_bytes(&address))
        );
        conf_error(cf, cmd, &message);
        return None;
    }
    // SAFETY: as above; ngx_http_upstream_add returns the (possibly shared) server group.
    let upstream = unsafe { ngx_http_upstream_add(cf, &mut url, 0) };
    (!upstream.is_null()).then_some(upstream)
}

/// `stale_cache_redis_watch host:port | unix:/path | upstream_name;` — in the locations that
/// use `$stale_cache_redis_down`: which Redis server group it reports on.
pub unsafe extern "C" fn set_redis_watch(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, the command and this module's
    // location configuration, all valid during the call.
    let (cfr, cmd, rcf) = unsafe { (&*cf, &*cmd, conf_mut(conf)) };
    if !rcf.watch.is_null() {
        return conf_error(cf, cmd, "is duplicate");
    }
    match server_group(cf, cmd, conf_args(cfr)[1]) {
        Some(group) => {
            rcf.watch = group;
            CONF_OK
        }
        None => CONF_ERROR,
    }
}

/// `stale_cache_redis_variable $name value [escape | unescape | md5]...;` (http level):
/// declares `$name`, evaluated per use as `value` with the transformations applied in order.
pub unsafe extern "C" fn set_redis_variable(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed and the command, valid during the
    // call.
    let (cfr, cmd) = unsafe { (&*cf, &*cmd) };
    let args = conf_args(cfr);
    let name = str_bytes(&args[1]);
    let Some(name) = name
        .strip_prefix(b"$")
        .filter(|n| !n.is_empty() && n.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_'))
    else {
        let message = format!(
            "invalid variable name \"{}\" (expected $name)",
            String::from_utf8_lossy(name)
        );
        return conf_error(cf, cmd, &message);
    };
    let mut steps = Vec::new();
    for arg in &args[3..] {
        match Transform::parse(str_bytes(arg)) {
            Some(step) => steps.push(step),
            None => {
                let message = format!(
                    "unknown transformation \"{}\", expected \"escape\", \"unescape\" or \"md5\"",
                    String::from_utf8_lossy(str_bytes(arg))
                );
                return conf_error(cf, cmd, &message);
            }
        }
    }
    let Some(value) = compile_complex_value(cf, &args[2]) else {
        return CONF_ERROR;
    };
    match super::variables::declare_derived(cf, name, value, steps) {
        Ok(()) => CONF_OK,
        Err(message) => conf_error(cf, cmd, message),
    }
}

/// `stale_cache_redis_command NAME [ARG...];` — may be repeated; commands are pipelined.
pub unsafe extern "C" fn set_redis_command(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed and this module's location
    // configuration, both valid during the call.
    let (cfr, rcf) = unsafe { (&mut *cf, conf_mut(conf)) };
    let mut command = Vec::new();
    for value in &conf_args(cfr)[1..] {
        let bytes = str_bytes(value);
        if bytes == b"$request_body" {
            command.push(RedisArg::RequestBody);
            rcf.uses_request_body = true;
        } else if bytes.contains(&b'$') {
            match compile_complex_value(cf, value) {
                Some(cv) => command.push(RedisArg::Complex(cv)),
                None => return CONF_ERROR,
            }
        } else {
            command.push(RedisArg::Literal(bytes.to_vec()));
        }
    }
    rcf.commands.push(command);
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
    // SAFETY: nginx passes the configuration being parsed, the command and this module's
    // location configuration, all valid during the call.
    let (cfr, cmd, rcf) = unsafe { (&*cf, &*cmd, conf_mut(conf)) };
    rcf.reply = match str_bytes(&conf_args(cfr)[1]) {
        b"value" => ReplyMode::Value,
        b"raw" => ReplyMode::Raw,
        other => {
            let message = format!(
                "unknown reply mode \"{}\", expected \"value\" or \"raw\"",
                String::from_utf8_lossy(other)
            );
            return conf_error(cf, cmd, &message);
        }
    };
    CONF_OK
}

/// Merges a location's Redis settings and checks them (nginx's merge_loc_conf).
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes two RedisConf values made by create_loc_conf, parent and child,
    // distinct allocations valid for the cycle.
    let (prev, conf) = unsafe { (&*(parent as *const RedisConf), conf_mut(child)) };
    if conf.merge(prev).is_err() {
        return CONF_ERROR;
    }
    if let Err(message) = check(conf) {
        ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", message);
        return CONF_ERROR;
    }
    CONF_OK
}

// The location configuration type nginx allocates for this module.
// SAFETY: create_loc_conf (HttpModule's default) allocates exactly a RedisConf.
unsafe impl HttpModuleLocationConf for RedisModule {
    type LocationConf = RedisConf;
}
