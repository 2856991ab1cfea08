//! `stale_cache_http`, invalidation on this node: what the node itself holds of an
//! invalidated URL goes before the `DEL` is even sent, and the URL is not answered from the
//! cache here until the `DEL` has been confirmed (RFC 9111 4.4).
//!
//! Redis is not the only place an entry lives: the freshness memo says "fresh" without a
//! lookup, and while Redis is away (a timeout puts the worker in backoff) a fill's refused
//! store is kept in the local zone and served from there (`LOCAL`). An invalidation that
//! only deleted the Redis keys left both, and when Redis was away the `DEL` was refused as
//! well: the next request was served the old response.
//!
//! So, in the unsafe request's header filter, for each invalidated key: the zone forgets
//! its memo (and pass mark), the local/hot copy is dropped, and the key is passed for
//! [`PENDING_PASS_MS`] (requests go to the origin, and their stored answer replaces the
//! entry and ends the mark). At the request's end the mark is lifted when the `DEL`
//! answered; when it failed the mark stays, so this node keeps going to the origin until an
//! answer is stored or the mark runs out. It stays too when a fill of the key was under way:
//! that fill's store may land after the `DEL` (srcache's store holds back only the last,
//! empty, buffer of a response larger than `postpone_output`, so its client may already
//! have sent the unsafe request), putting the old answer back in Redis; the fill's end then
//! leaves the mark, and the next answer stored replaces the old one.

use ngx::ffi::{ngx_http_request_t, NGX_LOG_ERR};

use super::conf::StaleCacheConf;
use super::hot;
use super::state::RequestState;
use crate::locktable::LockKind;
use crate::nginx::log::{limited, Every, Short};
use crate::nginx::util::{now_ms, request_log};
use crate::nginx::zone::{self, ZoneRef};
use crate::stale::main_conf;

/// How long an invalidated key stays passed on this node when its `DEL` did not answer
/// (Redis away or refusing), unless a stored answer ends it first.
pub const PENDING_PASS_MS: u64 = 60_000;

/// The zone of `state`'s `$cache_lock`, when its settings were read.
fn lock_zone(state: &RequestState, req: &ngx_http_request_t) -> Option<ZoneRef> {
    if let Some(zone) = state.zone() {
        return Some(zone);
    }
    let settings = state.settings_if_read()?;
    zone::find(&main_conf(req).zones, &settings.lock_zone).map(ZoneRef::new)
}

/// Before the `DEL` of `keys` is sent: this node forgets them (memo, pass mark, local or hot
/// copy) and passes them until the `DEL` is confirmed ([`ended`]).
pub fn begin(state: &mut RequestState, req: &ngx_http_request_t, keys: Vec<Vec<u8>>) {
    let zone = lock_zone(state, req);
    let now = now_ms();
    for key in &keys {
        if let Some(zone) = zone {
            zone.with_key(key, |t, fp| {
                t.forget(fp, now);
                t.pass_set(fp, PENDING_PASS_MS, now);
            });
        }
        hot::forget(req, key);
    }
    state.set_invalidated(keys);
}

/// The request's end: its invalidation answered, so the keys' marks go (the next request
/// looks them up and finds them missing); otherwise they stay, and the failure is logged.
pub fn ended(state: &RequestState, req: &ngx_http_request_t) {
    let keys = state.invalidated();
    let Some(first) = keys.first() else {
        return;
    };
    let capture = state.capture();
    if !capture.answered_ok() {
        limited(
            request_log(req),
            NGX_LOG_ERR,
            "invalidation failed",
            Every::Interval,
            format_args!(
                "stale_cache: the invalidation of \"{}\" failed (status {}): this node sends \
                 its requests to the origin until one is stored, for {} s at most; Redis may \
                 still hold the old entry",
                Short(first),
                if capture.failed_rc != 0 {
                    capture.failed_rc as usize
                } else {
                    capture.status
                },
                PENDING_PASS_MS / 1000
            ),
        );
        return;
    }
    let Some(zone) = lock_zone(state, req) else {
        return;
    };
    let now = now_ms();
    for key in keys {
        zone.with_key(key, |t, fp| {
            // A fill still under way may store after the DEL (its client had the answer
            // before the store landed): the mark stays, and a later stored answer ends it.
            // (A refresh's lock is not one: a refresh that invalidates its own URL holds it.)
            if t.lock_state(fp, now)
                .is_none_or(|l| l.kind != LockKind::Fill)
            {
                t.pass_clear(fp, now);
            }
        });
    }
}

/// Whether `key`, filled by `req`, was passed in `zone` while the fill ran: in the
/// `stale_cache_http` mode only, where an invalidation that came meanwhile passes it (fills
/// do not start on passed keys); its answer may predate the invalidation, so its store does
/// not count as one (the mark stays) and a refused store is not kept on this node. Outside
/// the mode nothing invalidates, and fills end as they always did.
pub fn passed(req: &ngx_http_request_t, zone: ZoneRef, key: &[u8]) -> bool {
    if !StaleCacheConf::http_mode_in(req) {
        return false;
    }
    let now = now_ms();
    zone.with_key(key, |t, fp| t.pass_left_ms(fp, now))
        .flatten()
        .is_some()
}
