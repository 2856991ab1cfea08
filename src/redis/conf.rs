//! Configuration of a native Redis location: its settings, their defaults and merge, and the
//! module type that reaches them. A leaf of the folder: the directives that fill it are in
//! `directives`, the module descriptor in `module`.

use core::mem;
use core::ptr;

use ngx::ffi::{
    ngx_http_complex_value_t, ngx_http_request_t, ngx_http_upstream_conf_t,
    ngx_http_upstream_srv_conf_t, ngx_msec_t, NGX_CONF_BITMASK_SET, NGX_HTTP_UPSTREAM_FT_ERROR,
    NGX_HTTP_UPSTREAM_FT_INVALID_HEADER, NGX_HTTP_UPSTREAM_FT_TIMEOUT,
};
use ngx::http::{HttpModuleLocationConf, Merge, MergeConfigError};

use crate::nginx::conf::{merge, Marker, Unset};

/// The Redis locations as an nginx HTTP module (its descriptor is in `module`).
pub struct RedisModule;

// The location configuration type nginx allocates for this module.
// SAFETY: create_loc_conf (HttpModule's default) allocates exactly a RedisConf.
unsafe impl HttpModuleLocationConf for RedisModule {
    type LocationConf = RedisConf;
}

/// The location's settings, valid for the whole configuration cycle (ngx's accessor).
pub fn conf_of(r: &ngx_http_request_t) -> &'static RedisConf {
    RedisModule::location_conf(r).expect("every location has a RedisConf")
}

/// Defaults of the Redis locations: Redis on loopback answers in well under a millisecond, so
/// waiting seconds (redis2's default is 60 s) only turns an outage into piled-up requests.
pub const DEFAULT_CONNECT_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_SEND_TIMEOUT_MS: ngx_msec_t = 250;
pub const DEFAULT_READ_TIMEOUT_MS: ngx_msec_t = 500;
pub const DEFAULT_BACKOFF_MS: ngx_msec_t = 1000;

/// How a Redis location turns replies into a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
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
    /// `stale_cache_redis_reply` (unset: see `default_reply_mode`).
    pub reply: Option<ReplyMode>,
    pub backoff: Unset<ngx_msec_t>,
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
        upstream.local = Marker::UNSET;
        upstream.socket_keepalive = Marker::UNSET;
        upstream.next_upstream_tries = Marker::UNSET;
        upstream.connect_timeout = Marker::UNSET;
        upstream.send_timeout = Marker::UNSET;
        upstream.read_timeout = Marker::UNSET;
        upstream.next_upstream_timeout = Marker::UNSET;
        upstream.buffer_size = Marker::UNSET;
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
            reply: None,
            backoff: Unset::default(),
            uses_request_body: false,
            has_pass: false,
            watch: ptr::null_mut(),
        }
    }
}

impl RedisConf {
    /// How replies become the response (set by the merge).
    pub fn reply_mode(&self) -> ReplyMode {
        self.reply.unwrap_or(ReplyMode::Raw)
    }

    /// `stale_cache_redis_backoff` (set by the merge).
    pub fn backoff(&self) -> ngx_msec_t {
        self.backoff.or(DEFAULT_BACKOFF_MS)
    }
}

impl Merge for RedisConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        let (p, c) = (&prev.upstream, &mut self.upstream);
        merge(
            &mut c.connect_timeout,
            p.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT_MS,
        );
        merge(&mut c.send_timeout, p.send_timeout, DEFAULT_SEND_TIMEOUT_MS);
        merge(&mut c.read_timeout, p.read_timeout, DEFAULT_READ_TIMEOUT_MS);
        merge(&mut c.next_upstream_timeout, p.next_upstream_timeout, 0);
        self.backoff.merge(prev.backoff, DEFAULT_BACKOFF_MS);
        // SAFETY: ngx_pagesize is set once at startup, before configuration is read.
        let page = unsafe { ngx::ffi::ngx_pagesize };
        merge(&mut c.buffer_size, p.buffer_size, page);
        merge(&mut c.next_upstream_tries, p.next_upstream_tries, 0);
        merge(&mut c.local, p.local, ptr::null_mut());
        merge(&mut c.socket_keepalive, p.socket_keepalive, 0);
        // INVALID_HEADER: a cluster's redirection (`-MOVED`, `-ASK`) is a next try; a reply
        // that does not parse ends the tries itself (peer.tries = 0, see `reply`).
        c.next_upstream = (NGX_CONF_BITMASK_SET
            | NGX_HTTP_UPSTREAM_FT_ERROR
            | NGX_HTTP_UPSTREAM_FT_TIMEOUT
            | NGX_HTTP_UPSTREAM_FT_INVALID_HEADER) as usize;
        if c.upstream.is_null() {
            c.upstream = p.upstream;
        }
        if self.watch.is_null() {
            self.watch = prev.watch;
        }
        if self.reply.is_none() {
            self.reply = Some(default_reply_mode(&self.commands));
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
