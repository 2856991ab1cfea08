//! Collapsing while Redis is away (down, in backoff, lookups failing or timing out): the
//! lock zone still lets one request per key on this node go to the backend, and what srcache
//! then tried to store (and Redis refused) is kept in this node's shared memory, the local
//! zone (`stale_cache_local_zone`, or the hot zone), for the response's fresh period. The
//! key's waiters, and the requests after them within that period, are answered from it
//! through srcache's fetch, as the hot tier answers (`hot::subrequest`): `LOCAL`.
//!
//! One call site keeps a copy: `keep_refused_store`, from the store subrequest's answer, for
//! any store that did not store (Redis down, in backoff, or refusing).
//!
//! Whether Redis is away is decided in one place, `saw`, from what its callers report: a TTL
//! lookup's answer or failure, a store that did not store.

use core::cell::Cell;

use ngx::ffi::{ngx_http_request_t, NGX_LOG_ERR, NGX_LOG_NOTICE};

use super::error::StaleError;
use super::hot::{self, local_zone};
use super::state::RequestState;
use crate::hotcache::{Plan, Stored};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, update_clock};
use crate::policy::CacheStatus;

/// How long this worker skips the TTL lookup after one failed (one request probes then).
pub const PROBE_EVERY_MS: u64 = 1_000;

/// How long after Redis was last seen away fills keep their response on this node even
/// when Redis stored it: the workers learn that Redis is back one by one (each has its own
/// backoff), and those still finding it away are answered from the copy meanwhile.
pub const RECENTLY_AWAY_MS: u64 = 10_000;

thread_local! {
    /// When this worker's last TTL lookup failed and when it last let one through while
    /// away (0: the lookups answer).
    static AWAY: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// When this worker last found Redis away.
    static LAST_AWAY: Cell<u64> = const { Cell::new(0) };
}

/// What a request met of Redis, as its callers report it; `saw` decides what it means.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// The TTL lookup answered.
    LookupAnswered,
    /// The TTL lookup failed with this error.
    LookupFailed(&'a StaleError),
    /// srcache's store ran for a complete answer and did not store (its location failed:
    /// Redis down or refusing; with redis2/HttpRedis this is how the layer learns it before a
    /// lookup fails).
    StoreNotStored,
    /// srcache's fetch of an entry the layer expected got no answer from Redis (no
    /// connection, a broken one, a timeout), for a worker whose requests were fresh by the
    /// memo and so made no lookup to learn it from.
    FetchUnreachable,
}

/// Whether what was met says Redis is away (`None`: it says Redis answers).
fn means_away(seen: Seen<'_>) -> Option<bool> {
    match seen {
        Seen::LookupAnswered => None,
        Seen::LookupFailed(error) => Some(error.redis_away()),
        Seen::StoreNotStored | Seen::FetchUnreachable => Some(true),
    }
}

/// The one place that decides whether what request `r` met of Redis means Redis is away for
/// this worker, and records it. True when it is and this node collapses in its place (a
/// local or hot zone): the caller goes local.
pub fn saw(r: &ngx_http_request_t, seen: Seen<'_>, now: u64) -> bool {
    match means_away(seen) {
        None => {
            // Redis is back.
            if AWAY.get().0 != 0 {
                AWAY.set((0, 0));
            }
            false
        }
        Some(true) if enabled(r) => {
            AWAY.set((now.max(1), now));
            LAST_AWAY.set(now);
            true
        }
        Some(_) => false,
    }
}

/// The TTL lookup of `req` failed and the request goes on collapsing on this node (one line
/// per interval per worker, with the lookup failures').
pub fn log_away(req: &ngx_http_request_t) {
    log::limited(
        request_log(req),
        NGX_LOG_ERR,
        "lookup",
        Every::Interval,
        format_args!(
            "stale_cache: TTL lookup failed for \"{}\"; Redis is away: collapsing on this node \
             (one request per key goes to the backend, the others are answered from this \
             node's memory)",
            crate::resp::Escaped(str_bytes(&req.uri))
        ),
    );
}

/// Whether Redis's absence is met on this node (a local or hot zone to keep copies in);
/// without one the layer steps aside as before (`ERROR`) while Redis is away.
pub fn enabled(r: &ngx_http_request_t) -> bool {
    local_zone(r).is_some()
}

/// Whether this worker's last TTL lookup failed (`$stale_cache_redis_away`).
pub fn lookups_failing() -> bool {
    AWAY.get().0 != 0
}

/// Whether Redis is away for this worker: its last TTL lookup failed, or its native Redis
/// locations are in backoff.
pub fn away() -> bool {
    let away = AWAY.get().0 != 0 || crate::redis::any_group_down();
    if away {
        LAST_AWAY.set(now_ms());
    }
    away
}

/// Whether this worker found Redis away in the last `RECENTLY_AWAY_MS`.
pub fn recently_away(now: u64) -> bool {
    away() || now.saturating_sub(LAST_AWAY.get()) < RECENTLY_AWAY_MS && LAST_AWAY.get() != 0
}

/// Whether the TTL lookup is skipped now: Redis is away and another request probed it less
/// than `PROBE_EVERY_MS` ago (this one then probes).
pub fn skip_lookup(now: u64) -> bool {
    let (since, probed) = AWAY.get();
    if since == 0 {
        return false;
    }
    if now.saturating_sub(probed) < PROBE_EVERY_MS {
        return true;
    }
    AWAY.set((since, now));
    false
}

/// A copy of the request's key on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    None,
    Fresh,
    /// Past its fresh period, in its stale window.
    Stale,
}

/// Plans to serve the request from its key's copy on this node if there is one stored at or
/// after `since` and its life is not over (srcache's fetch is answered from the zone), and
/// reports it LOCAL; a stale copy is served only if `stale_ok`.
pub fn try_serve(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    since: u64,
    stale_ok: bool,
) -> Copy {
    let found = match hot::plan_local(state, req, since) {
        None => Copy::None,
        Some(true) => Copy::Fresh,
        Some(false) => Copy::Stale,
    };
    debug!(
        request_log(req),
        "stale_cache: local copy of \"{}\": {:?}",
        Short(&state.settings().key),
        found
    );
    match found {
        Copy::None => {}
        Copy::Stale if !stale_ok => {
            let hot = state.hot_mut();
            hot.plan = Plan::Nothing;
            hot.local = false;
        }
        _ => {
            state.hot_mut().local_stale = found == Copy::Stale;
            state.finish(CacheStatus::Local);
        }
    }
    found
}

/// This request may fill its key (Redis away, or a fill lock taken): srcache is to store
/// even while Redis is down (`$stale_cache_redis_down` is empty for it), so what it stores
/// is noted (`hot::subrequest`) and can be kept here (`keep_store`).
pub fn filling(state: &mut RequestState) {
    let hot = state.hot_mut();
    if hot.plan != Plan::Fill {
        hot.plan = Plan::KeepStore;
        hot.local = false;
    }
}

/// The request filled its key (`Plan::KeepStore`) and is over: when Redis is away or was
/// in the last `RECENTLY_AWAY_MS` (this worker's neighbours may still find it away), keeps the response srcache's store carried (srcache's stored form:
/// status line, headers, body) on this node for its fresh period (`exptime=` of the store
/// less the stale window and grace band), so the key's waiters and the next requests are
/// answered from it (`try_serve`). The one place a store turns into local reuse (a
/// store refused for another reason can reach it by the same plan). Returns whether it was
/// kept.
pub fn keep_store(state: &mut RequestState, r: &ngx_http_request_t) -> bool {
    if !recently_away(now_ms()) {
        // Redis has the copy and every worker finds it there (or refused it while up: a
        // store it refuses is not kept here yet).
        return false;
    }
    let Some(zone) = local_zone(r) else {
        return false;
    };
    let Some((body, exptime)) = state.hot_mut().store.as_ref().map(|s| (s.body, s.exptime)) else {
        return false;
    };
    // SAFETY: srcache's store subrequest's body, in the main request's pool, which is
    // still there while the request's cleanups run.
    let Some(body) = (unsafe { body.as_ref() }) else {
        return false;
    };
    let Some(settings) = state.settings_if_read() else {
        return false;
    };
    let key = settings.key.as_slice();
    if state
        .zone()
        .is_some_and(|zone| super::invalidation::passed(r, zone, key))
    {
        // Invalidated meanwhile (an unsafe request's answer): this response may be older.
        return false;
    }
    let Some(fresh_secs) = exptime
        .and_then(|e| e.checked_sub(settings.stale_secs + settings.grace_secs))
        .filter(|&s| s > 0)
    else {
        return false;
    };
    let mut bytes = Vec::new();
    let mut cl = body.bufs;
    // SAFETY: the body's chain: valid links and buffers, memory buffers hold `pos..last`.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        let Some(b) = (unsafe { link.buf.as_ref() }) else {
            break;
        };
        if b.in_file() != 0 && b.memory() == 0 && b.temporary() == 0 {
            return false; // in a temporary file: not kept
        }
        // SAFETY: as above.
        let len = unsafe { b.last.offset_from(b.pos) }.max(0) as usize;
        if len > 0 {
            // SAFETY: as above.
            bytes.extend_from_slice(unsafe { core::slice::from_raw_parts(b.pos, len) });
        }
        cl = link.next;
    }
    if bytes.is_empty() {
        return false;
    }
    // The copy's date decides which waiters may take it (`try_serve`'s `since`, dated by
    // other workers' clocks): the cached clock can be a whole loop iteration old.
    update_clock();
    let now = now_ms();
    // The whole life is kept: fresh for `fresh_secs`, then stale (served while a fill runs).
    let life_ms = exptime.unwrap_or(0) * 1000;
    let stored = hot::keep(zone, key, &bytes, now, now + life_ms);
    debug!(
        request_log(r),
        "stale_cache: refused store of \"{}\" kept on this node ({} bytes, {} s): {:?}",
        Short(key),
        bytes.len(),
        fresh_secs,
        stored
    );
    let Some(Stored::Stored { evicted }) = stored else {
        return false;
    };
    if evicted > 0 {
        log::limited(
            request_log(r),
            NGX_LOG_NOTICE,
            "local-evict",
            Every::Once,
            format_args!(
                "stale_cache: local zone \"{}\" is full: evicting the least recently used \
                 copies",
                String::from_utf8_lossy(&zone.name)
            ),
        );
    }
    true
}
