//! The backoff of a Redis server group after an outage, per worker: its locations answer 502
//! at once instead of waiting for a timeout, and one request at a time probes the server.

use std::cell::RefCell;
use std::collections::HashMap;

use ngx::ffi::{
    ngx_http_request_t, ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_msec_t, NGX_LOG_ERR,
};

use super::conf::RedisConf;
use super::ctx::peer_name;
use crate::nginx::log::{limited, Every};
use crate::nginx::util::{current_msec, request_log};

/// A server group's state in this worker after a failure (absent: up).
#[derive(Clone, Copy)]
struct Backoff {
    /// Until then, every location using the group answers 502 without trying.
    until: ngx_msec_t,
    /// Once `until` has passed, one request (the probe) tries the server while the others
    /// still answer 502; set when it started, 0 when none runs.
    probe_since: ngx_msec_t,
    /// How long a probe may run before another may start (a probe whose request never
    /// reached the upstream finalizer must not keep the group down for ever).
    probe_limit: ngx_msec_t,
}

impl Backoff {
    fn probing(&self, now: ngx_msec_t) -> bool {
        self.probe_since != 0 && now.wrapping_sub(self.probe_since) < self.probe_limit
    }

    /// Whether requests are answered 502 without trying the server.
    fn refusing(&self, now: ngx_msec_t) -> bool {
        now < self.until || self.probing(now)
    }
}

thread_local! {
    /// Per worker and Redis server group: after a connect failure or timeout, every location
    /// using the group answers 502 at once (srcache's fetch and store locations share one
    /// outage, and its one log line), then one request at a time probes the server.
    static BACKOFF: RefCell<HashMap<usize, Backoff>> = RefCell::new(HashMap::new());
}

fn group_of(conf: &RedisConf) -> usize {
    conf.upstream.upstream as usize
}

/// What a request to `conf`'s group does now: `None` to answer 502 at once, `Some(probe)` to
/// go to the server (`probe`: it is the one request trying a group in backoff).
pub(super) fn admit(conf: &RedisConf) -> Option<bool> {
    let now = current_msec();
    BACKOFF.with(|b| {
        let mut b = b.borrow_mut();
        let Some(state) = b.get_mut(&group_of(conf)) else {
            return Some(false);
        };
        if state.refusing(now) {
            return None;
        }
        state.probe_since = now.max(1);
        Some(true)
    })
}

/// Whether this worker's Redis locations of `group` (null: of any group) answer 502 without
/// asking Redis right now (`$stale_cache_redis_down`).
pub(super) fn group_down(group: *mut ngx_http_upstream_srv_conf_t) -> bool {
    let now = current_msec();
    BACKOFF.with(|b| {
        let b = b.borrow();
        if group.is_null() {
            b.values().any(|state| state.refusing(now))
        } else {
            b.get(&(group as usize))
                .is_some_and(|state| state.refusing(now))
        }
    })
}

/// A request to the group failed (connect, timeout, deadline): refuse for `backoff`. The
/// failure that ends a working period is logged; a failed probe (the server is still down)
/// is logged once per log interval; the requests in flight with either fail quietly
/// (nginx's own line for each is at info, see redis_handler).
pub(super) fn start_backoff(r: &ngx_http_request_t, u: &ngx_http_upstream_t, conf: &RedisConf) {
    let now = current_msec();
    let previous = BACKOFF.with(|b| {
        b.borrow_mut().insert(
            group_of(conf),
            Backoff {
                until: now + conf.backoff(),
                probe_since: 0,
                probe_limit: conf.backoff()
                    + conf.upstream.connect_timeout
                    + conf.upstream.send_timeout
                    + conf.upstream.read_timeout,
            },
        )
    });
    let message = format_args!(
        "stale_cache: redis server {} failed (connection refused, reset or timed out); its \
         locations answer 502 for {} ms at a time until one request gets through",
        peer_name(u),
        conf.backoff()
    );
    match previous {
        None => {
            ngx::ngx_log_error!(NGX_LOG_ERR, request_log(r), "{}", message);
        }
        Some(state) if now >= state.until => limited(
            request_log(r),
            NGX_LOG_ERR,
            "redis still down",
            Every::Interval,
            message,
        ),
        // Already in backoff: a request that was in flight when the server went away.
        Some(_) => {}
    }
}

/// Sentinel found a new master for `group`: the backoff was about the old one.
pub(super) fn end_group_backoff(group: *mut ngx_http_upstream_srv_conf_t) {
    BACKOFF.with(|b| b.borrow_mut().remove(&(group as usize)));
}

/// A request reached the server and got an answer: the group is up again.
pub(super) fn end_backoff(conf: &RedisConf) {
    BACKOFF.with(|b| b.borrow_mut().remove(&group_of(conf)));
}
