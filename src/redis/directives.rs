//! The directives of the native Redis locations: their handlers and the module's directive
//! table, and the merge that checks what a location's directives say together.

use core::ffi::{c_char, c_void};
use core::mem;
use core::mem::offset_of;

use ngx::ffi::{
    ngx_command_t, ngx_conf_set_msec_slot, ngx_conf_set_size_slot, ngx_conf_t,
    ngx_http_compile_complex_value, ngx_http_compile_complex_value_t, ngx_http_complex_value_t,
    ngx_http_upstream_add, ngx_http_upstream_srv_conf_t, ngx_parse_url, ngx_str_t, ngx_url_t,
    NGX_LOG_EMERG,
};
use ngx::http::{HttpModuleLocationConf, Merge, NgxHttpCoreModule};
use ngx::ngx_string;

use super::cluster::set_redis_cluster;
use super::conf::{check, RedisArg, RedisConf, ReplyMode};
use super::handler::redis_handler;
use super::variables::declare_derived;
use crate::directive_table;
use crate::keyderive::Transform;
use crate::nginx::conf::{
    Directive, ANY_LEVEL, HTTP, LOCATION, NOARGS, ONE_OR_MORE, TAKE1, TWO_OR_MORE, UPSTREAM,
};
use crate::nginx::util::{conf_args, conf_error, pool_str, str_bytes, CONF_ERROR, CONF_OK};

/// A timeout stored by nginx's own slot setter.
const fn msec(name: ngx_str_t, offset: usize) -> Directive {
    Directive::new(name, ANY_LEVEL | TAKE1, ngx_conf_set_msec_slot).offset(offset)
}

directive_table! {
    pub static mut COMMANDS = [
        Directive::new(ngx_string!("stale_cache_redis_pass"), LOCATION | TAKE1, set_redis_pass),
        Directive::new(
            ngx_string!("stale_cache_redis_command"),
            LOCATION | ONE_OR_MORE,
            set_redis_command,
        ),
        Directive::new(ngx_string!("stale_cache_redis_reply"), LOCATION | TAKE1, set_redis_reply),
        msec(
            ngx_string!("stale_cache_redis_connect_timeout"),
            offset_of!(RedisConf, upstream.connect_timeout),
        ),
        msec(
            ngx_string!("stale_cache_redis_send_timeout"),
            offset_of!(RedisConf, upstream.send_timeout),
        ),
        msec(
            ngx_string!("stale_cache_redis_read_timeout"),
            offset_of!(RedisConf, upstream.read_timeout),
        ),
        msec(ngx_string!("stale_cache_redis_backoff"), offset_of!(RedisConf, backoff)),
        Directive::new(
            ngx_string!("stale_cache_redis_buffer_size"),
            ANY_LEVEL | TAKE1,
            ngx_conf_set_size_slot,
        )
        .offset(offset_of!(RedisConf, upstream.buffer_size)),
        Directive::new(ngx_string!("stale_cache_redis_watch"), ANY_LEVEL | TAKE1, set_redis_watch),
        Directive::new(
            ngx_string!("stale_cache_redis_cluster"),
            UPSTREAM | NOARGS | TAKE1,
            set_redis_cluster,
        )
            .no_conf(),
        Directive::new(
            ngx_string!("stale_cache_redis_variable"),
            HTTP | TWO_OR_MORE,
            set_redis_variable,
        )
        .no_conf(),
        Directive::new(
            ngx_string!("stale_cache_redis_sentinel"),
            (ngx::ffi::NGX_HTTP_UPS_CONF as ngx::ffi::ngx_uint_t) | TWO_OR_MORE,
            super::sentinel::set_sentinel,
        )
        .no_conf(),
    ];
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
    clcf.handler = Some(redis_handler);
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
    address: ngx_str_t,
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
                    "unknown transformation \"{}\", expected \"escape\", \"unescape\", \"md5\" or \"tag\"",
                    String::from_utf8_lossy(str_bytes(arg))
                );
                return conf_error(cf, cmd, &message);
            }
        }
    }
    let Some(value) = compile_complex_value(cf, &args[2]) else {
        return CONF_ERROR;
    };
    match declare_derived(cf, name, value, steps) {
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
    value: &ngx_str_t,
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
        b"value" => Some(ReplyMode::Value),
        b"raw" => Some(ReplyMode::Raw),
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
