//! The native Redis locations (`stale_cache_redis_*`): what srcache's fetch/store locations and
//! the module's own TTL/PERSIST/EXPIRE lookups talk to on stock distro nginx, where redis2 and
//! HttpRedis are not packaged. A module of its own, independent of the stale-cache layer.
//!
//! Floors, each importing only those below it: `conf` (settings, the module type); `ctx` (a
//! request's state) and `backoff`; `reply` and `variables`; `handler`; `directives`; `module`
//! (the descriptor nginx loads). `side` (a one-shot RESP exchange outside requests) and
//! `sentinel` (the Sentinel balancer) sit beside them.

mod backoff;
mod cluster;
mod clusterstate;
pub mod conf;
mod ctx;
mod directives;
pub mod handler;
pub mod module;
mod pause;
mod redirect;
mod refusal;
mod reply;
pub mod role;
pub mod sentinel;
pub mod side;
mod variables;

/// Whether this worker's native Redis locations of any server group answer 502 from the
/// backoff right now (Redis down): the stale layer collapses on this node meanwhile.
pub fn any_group_down() -> bool {
    backoff::group_down(core::ptr::null_mut())
}
