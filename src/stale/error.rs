//! Why the layer steps aside for a request, and the one place that turns it into a log line
//! and a fail-open: the request continues as if the layer were off (srcache then decides
//! alone), never a 500 from the module.

use core::fmt;

use ngx::ffi::{ngx_http_request_t, NGX_LOG_ERR, NGX_LOG_WARN};

use crate::nginx::log::{self, Every};
use crate::nginx::util::{request_log, str_bytes};
use crate::policy::{CacheStatus, FailReason};
use crate::settings::SettingsError;

/// What went wrong for one request.
#[derive(Debug)]
pub enum StaleError {
    /// `stale_cache on` but none of `$cache_lock`, `$cache_ttl`, `$cache_key` is set.
    Inactive,
    /// A `$cache_*` value is invalid.
    Settings(SettingsError),
    /// `$cache_lock` names no configured zone.
    NoZone(Vec<u8>),
    /// The TTL lookup failed or answered nonsense.
    Lookup(FailReason),
    /// Redis answered the TTL lookup with an error reply.
    RedisError(Vec<u8>),
    /// nginx could not start a subrequest.
    Subrequest,
    /// The request pool is exhausted.
    NoMemory,
}

impl StaleError {
    /// The rate limiter's kind: one line per interval for each.
    fn kind(&self) -> &'static str {
        match self {
            StaleError::Inactive => "inactive",
            StaleError::Settings(_) => "settings",
            StaleError::NoZone(_) => "zone",
            StaleError::Lookup(_) | StaleError::Subrequest | StaleError::NoMemory => "lookup",
            StaleError::RedisError(_) => "redis-error",
        }
    }

    /// What the request is reported as.
    fn status(&self) -> CacheStatus {
        match self {
            StaleError::Inactive => CacheStatus::Bypass,
            _ => CacheStatus::Error,
        }
    }
}

/// The line for the error log; `uri` names the request where that helps.
struct Line<'a>(&'a StaleError, &'a [u8]);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The decoded URI is the client's: its control bytes (CR, LF, ESC) are escaped.
        let uri = crate::resp::Escaped(self.1);
        match self.0 {
            StaleError::Inactive => f.write_str(
                "\"stale_cache on\" but $cache_lock, $cache_ttl and $cache_key are unset; the \
                 request passes through untouched",
            ),
            StaleError::Settings(e) => write!(f, "{e}; the request passes through untouched"),
            StaleError::NoZone(name) => {
                let name = String::from_utf8_lossy(name);
                write!(
                    f,
                    "$cache_lock names \"{name}\" but no \"stale_cache_zone {name} SIZE;\" is \
                     configured; the request passes through untouched"
                )
            }
            StaleError::RedisError(text) => write!(
                f,
                "the TTL lookup got a redis error: \"{}\"",
                crate::resp::Escaped(text)
            ),
            StaleError::Lookup(reason) => write!(
                f,
                "{reason} for \"{uri}\"; serving without the stale cache layer (check redis \
                 and the $cache_ttl location)"
            ),
            StaleError::Subrequest | StaleError::NoMemory => write!(
                f,
                "{} for \"{uri}\"; serving without the stale cache layer (check redis and the \
                 $cache_ttl location)",
                FailReason::LookupFailed
            ),
        }
    }
}

impl StaleError {
    /// Logs the error (rate-limited per kind) and says what the request is reported as: it
    /// goes on as if the layer were off.
    pub fn log(self, req: &ngx_http_request_t) -> CacheStatus {
        let line = Line(&self, str_bytes(&req.uri));
        log::limited(
            request_log(req),
            NGX_LOG_ERR,
            self.kind(),
            Every::Interval,
            format_args!("stale_cache: {line}"),
        );
        if let StaleError::RedisError(_) = self {
            // The reply is logged above; the request is also logged as a failed lookup.
            return StaleError::Lookup(FailReason::BadReply).log(req);
        }
        self.status()
    }

    /// Whether the TTL lookup says Redis is away: no answer (down, in backoff, timing out), or
    /// a refusal because it does not serve now (loading its data after a restart, a script
    /// running, a replica without its master, a cluster missing a node for some slots after
    /// the cluster locations' own retries), unlike a configuration mistake (`-ERR`,
    /// `-WRONGTYPE`), which fails open.
    pub fn redis_away(&self) -> bool {
        match self {
            StaleError::Lookup(FailReason::LookupFailed) => true,
            StaleError::RedisError(text) => {
                matches!(
                    crate::resp::error_code(text),
                    "LOADING" | "BUSY" | "MASTERDOWN" | "CLUSTERDOWN"
                )
            }
            _ => false,
        }
    }

    /// The rate limiter's kind, also the metrics' error kind.
    pub fn kind_name(&self) -> &'static str {
        self.kind()
    }
}

/// A warning about the configuration noticed at run time, once per interval and kind.
pub fn warn(req: &ngx_http_request_t, kind: &'static str, args: fmt::Arguments<'_>) {
    log::limited(request_log(req), NGX_LOG_WARN, kind, Every::Interval, args);
}
