//! The stale-while-revalidate and request-collapsing layer (`stale_cache*`), the drop-in for
//! lua-resty-cache. A request's way through it:
//!
//! 1. `phases::post_read_handler`: recognise the module's own refreshes, hide the skip header;
//! 2. `phases::preaccess_handler` runs the request's state machine (`state::Phase`), whose
//!    steps are in `decide` (settings, memo, lock, wait, stale), `lookup` (TTL/PERSIST/EXPIRE
//!    subrequests, whose answers `filters` captures) and `waiters` (waiting for a fill,
//!    waking, releasing locks);
//! 3. `after_fetch::precontent_handler`, reached only when srcache did not serve the request:
//!    an entry the layer expected but srcache missed makes the request join collapsing;
//!    (`hot`: a fresh hit of a hot key has srcache's fetch subrequest answered from the hot
//!    zone, or fills it from that fetch's output; srcache's subrequests are known by their
//!    location's role, `role`;)
//! 4. `state`'s pool cleanup ends the request: releases its locks and starts its refresh
//!    (`refresh` prepares it, `sender` sends it on a connection of its own).
//!
//! The rules themselves are pure and unit-tested outside nginx: `crate::policy` (fresh, stale,
//! miss), `crate::collapse` (locks and waiting), `crate::settings`, `crate::replay`.

mod after_fetch;
pub mod conf;
mod decide;
mod error;
mod filters;
mod hot;
mod lease;
mod literals;
mod locations;
mod lookup;
mod metrics;
pub mod module;
mod phases;
mod purge;
mod refresh;
mod role;
mod sender;
mod state;
mod variables;
mod waiters;

/// Whether request `r` is answered from the hot zone (`$stale_cache_redis_down` asks).
pub fn hot_will_serve(r: &ngx::ffi::ngx_http_request_t) -> bool {
    hot::will_serve(r)
}
