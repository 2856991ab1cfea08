//! The hot tier (`stale_cache_hot_zone`, `stale_cache_hot`): the exact bytes srcache's fetch
//! got from Redis for keys that proved hot, kept in shared memory (`crate::hotcache`) and
//! handed to srcache's next fetch of the key instead of asking Redis.
//!
//! The rest of the layer calls this file: `on_fresh` (a fresh hit: plan to serve or fill),
//! `will_serve`, `forget`, `not_served`, `release`; the per-request part of the state is
//! `Hot`. The work is in one file per job:
//! - `region`: the zone's memory (memfd or anonymous mapping), its initialisation and
//!   hand-over across reloads, locked access to the table;
//! - `serve`: srcache's fetch subrequest answered from the zone: the fetch subrequest, known
//!   by its location's role (`crate::stale::role`), gets this module's content handler, which
//!   answers what the Redis location would have (200, the stored value as body), so srcache
//!   parses, sends and stores nothing as on any fetch hit;
//! - `swap`: large bodies sent from the zone in place (pinned), swapped into the main
//!   request's output by the output filters;
//! - `fill`: a fresh hit of a key seen fresh before within its fresh period copies the output
//!   of its fetch subrequest (a 200 from the Redis location) into the zone, up to
//!   `stale_cache_hot_max_size`.

mod fill;
pub mod region;
pub mod request;
mod serve;
mod swap;

use core::ptr;

use ngx::ffi::ngx_http_request_t;

use crate::hotcache::Plan;
use crate::nginx::log::{debug, Short};
use crate::nginx::util::{now_ms, request_log};
use crate::stale::conf::StaleCacheConf;
use crate::stale::main_conf;
use crate::stale::state::RequestState;

pub use fill::fetch_output;
pub use region::local_zone;
pub use serve::subrequest;
pub use swap::{main_body, main_header};

/// A fresh hit (memo or TTL lookup), fresh until `fresh_until`: decides whether srcache's
/// fetch will be answered from the hot zone, or fill it.
pub fn on_fresh(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    fresh_until: u64,
) {
    if !scf.hot_enabled() {
        return;
    }
    let Some(zone) = main_conf(req).hot.as_ref() else {
        return;
    };
    let now = now_ms();
    if fresh_until <= now {
        return;
    }
    let key = state.settings().key.as_slice();
    let max_age = scf.hot_max_age_ms();
    let plan = zone
        .with_key(key, |t, fp| t.plan(fp, key, now, fresh_until, max_age))
        .unwrap_or(Plan::Nothing);
    debug!(
        request_log(req),
        "stale_cache: hot tier for \"{}\": {:?}",
        Short(key),
        plan
    );
    let hot = state.hot_mut();
    hot.plan = plan;
    hot.fresh_until = fresh_until;
}

/// Whether `r`'s fresh hit is to be answered from the hot zone (decided before srcache's
/// fetch): `$stale_cache_redis_down` then lets srcache fetch, since the answer does not come
/// from Redis. Reads one field (variable handlers may run while a step of the request does).
pub fn will_serve(r: &ngx_http_request_t) -> bool {
    // Asked only while Redis is down: the local zone (default on) may serve then too.
    if local_zone(r).is_none() {
        return false;
    }
    let Some(state) = crate::stale::state::find(r) else {
        return false;
    };
    // SAFETY: the state is live while its request is; Copy fields are read through the raw
    // pointer, no reference to the state is made.
    unsafe {
        let hot = RequestState::hot_ptr(state);
        matches!(
            ptr::addr_of!((*hot).plan).read(),
            Plan::Serve | Plan::KeepStore
        )
    }
}

/// Plans to answer srcache's fetch from `key`'s copy on this node (Redis away) if one was
/// stored at or after `since` and its life (fresh period and stale window) is not over;
/// whether it is fresh.
pub fn plan_local(state: &mut RequestState, req: &ngx_http_request_t, since: u64) -> Option<bool> {
    let zone = local_zone(req)?;
    let now = now_ms();
    let settings = state.settings();
    let (key, unfresh_ms) = (
        settings.key.as_slice(),
        (settings.stale_secs + settings.grace_secs) * 1000,
    );
    let (_, fresh) = zone.with_key(key, |t, fp| t.local_len(fp, key, now, since, unfresh_ms))??;
    let hot = state.hot_mut();
    hot.plan = Plan::Serve;
    hot.local = true;
    Some(fresh)
}

/// Keeps `value` as `key`'s copy in `zone` (the local zone or the hot zone), fresh until
/// `fresh_until` (`crate::stale::local`).
pub fn keep(
    zone: &region::HotZone,
    key: &[u8],
    value: &[u8],
    now: u64,
    fresh_until: u64,
) -> Option<crate::hotcache::Stored> {
    let m = zone.mapping()?;
    zone.with_key(key, |t, fp| {
        let put = |t: &mut crate::hotcache::HotTable| {
            t.store(fp, key, value, now, fresh_until, |at, n| {
                region::detach_pages(&m, at, n)
            })
        };
        let mut stored = put(t);
        if stored == crate::hotcache::Stored::NoRoom
            && t.release_dead_owners(crate::nginx::process::owner_alive) > 0
        {
            stored = put(t);
        }
        stored
    })
}

/// Drops the hot copy of `key` on this node (purge, store, a fetch that missed).
pub fn forget(req: &ngx_http_request_t, key: &[u8]) {
    if let Some(zone) = local_zone(req) {
        zone.with_key(key, |t, fp| t.remove(fp, key));
    }
}

/// PRECONTENT: srcache did not send the response from its fetch (a fetch it could not
/// use): the pin is not needed.
pub fn not_served(state: &mut RequestState, req: &ngx_http_request_t) {
    if state
        .hot_mut()
        .in_place
        .as_ref()
        .is_some_and(|ip| !ip.armed)
    {
        release(state, req);
    }
}

/// Ends the request's pin, if any (its end, or srcache not sending it).
pub fn release(state: &mut RequestState, r: &ngx_http_request_t) {
    let Some(ip) = state.hot_mut().in_place.take() else {
        return;
    };
    if let Some(zone) = local_zone(r) {
        zone.with_table(|t| t.unpin(ip.owner, ip.pid, &ip.pin));
    }
}
