//! A Redis location whose server refused one of its commands (an error reply: `-OOM`,
//! `-READONLY`, `-LOADING`, `-BUSY`, `-MASTERDOWN`, `-NOSCRIPT`, ...): the location answers
//! 502 (in both reply modes), and the refusal is logged once per interval per location and
//! cause, naming the command and Redis's text, with the count of the lines suppressed since.
//! A refusal says the server is up: it never starts the backoff.

use std::cell::RefCell;
use std::collections::HashMap;

use ngx::ffi::{ngx_http_request_t, ngx_http_upstream_t, NGX_LOG_ERR};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use super::conf::{conf_of, RedisArg};
use super::ctx::peer_name;
use crate::nginx::log::INTERVAL_MS;
use crate::nginx::util::{now_ms, request_log, str_bytes};
use crate::policy::LogLimiter;
use crate::resp::{error_code, Escaped};

thread_local! {
    /// One limiter per (location configuration, cause): bounded by the configuration.
    static LIMITERS: RefCell<HashMap<(usize, &'static str), LogLimiter>> =
        RefCell::new(HashMap::new());
}

/// The name of command `index` (0-based) of `r`'s location, for the log.
fn command_name(r: &ngx_http_request_t, index: usize) -> String {
    let conf = conf_of(r);
    match conf.commands.get(index).and_then(|c| c.first()) {
        Some(RedisArg::Literal(name)) => Escaped(name).to_string().to_ascii_uppercase(),
        _ => "a command".into(),
    }
}

/// Logs that the server refused command `index` (0-based) of `r`'s location with `text`,
/// at most once per interval per location and cause.
pub(super) fn report(r: &ngx_http_request_t, u: &ngx_http_upstream_t, index: usize, text: &[u8]) {
    let conf = conf_of(r);
    let cause = error_code(text);
    if cause == "READONLY" {
        // A demoted master: a Sentinel-managed group looks for the new one at once.
        super::sentinel::master_refused_write(conf.upstream.upstream);
    }
    let key = (conf as *const _ as usize, cause);
    let allowed = LIMITERS.with(|l| {
        l.borrow_mut()
            .entry(key)
            .or_insert_with(|| LogLimiter::new(INTERVAL_MS))
            .allow(now_ms())
    });
    let Some(suppressed) = allowed else {
        return;
    };
    let location = NgxHttpCoreModule::location_conf(r).map_or(&b""[..], |c| str_bytes(&c.name));
    let more = if suppressed > 0 {
        format!(" ({suppressed} similar suppressed)")
    } else {
        String::new()
    };
    ngx::ngx_log_error!(
        NGX_LOG_ERR,
        request_log(r),
        "stale_cache: redis server {} refused {} (command {} of {}) of location \"{}\" with \
         {}: \"{}\"; the location answers 502{}",
        peer_name(u),
        command_name(r, index),
        index + 1,
        conf.commands.len(),
        Escaped(location),
        cause,
        Escaped(text),
        more
    );
}
