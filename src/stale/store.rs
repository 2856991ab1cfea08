//! A refresh whose store Redis refused (`-OOM` when full, `-READONLY` on a replica, ...): the
//! refresh answered 2xx, but nothing new is in Redis, and it must not count as stored.
//!
//! The refresh's own request (handled by this nginx) knows it, from its store subrequest
//! (`StoreOutcome::Refused`); the sender of the refresh sees only the response. So the request
//! marks the key as after a failed refresh (an error mark: the refresh backoff) in its LOG
//! phase, which runs before its connection is closed, and so before the sender sees the
//! response end (it sent `Connection: close`). The sender, finding that mark when the refresh
//! answered 2xx, ends it as not stored (`RefreshEnd::NotStored`): no "just stored" record for
//! the key, the refresh counted failed, the backoff kept (the stale copy is served meanwhile).

use ngx::ffi::{ngx_http_request_t, NGX_LOG_WARN};
use ngx::http::HttpModuleLocationConf;

use super::waiters::HeldLock;
use crate::collapse::{backoff_ms, RefreshEnd};
use crate::nginx::log::{self, Every};
use crate::nginx::util::{now_ms, request_log, str_bytes};
use crate::nginx::zone::ZoneRef;
use crate::resp::Escaped;
use crate::stale::StaleCacheModule;

/// The refresh request `req` for `key` (in `zone`) ended with its store answered `status`
/// (not 2xx): marks the key as after a failed refresh (LOG phase, main request).
pub fn refused_refresh(req: &ngx_http_request_t, zone: ZoneRef, key: &[u8], status: usize) {
    let Some(scf) = StaleCacheModule::location_conf(req) else {
        return;
    };
    let (base, cap) = scf.refresh_backoff();
    let now = now_ms();
    zone.with_key(key, |t, fp| {
        t.error_mark(fp, now, |n| backoff_ms(n, base, cap))
    });
    log::limited(
        request_log(req),
        NGX_LOG_WARN,
        "refresh-store-refused",
        Every::Interval,
        format_args!(
            "stale_cache: the refresh of \"{}\" was not stored (its store location answered \
             {status}): the stale copy stays as it was and the key's refreshes back off",
            Escaped(str_bytes(&req.unparsed_uri))
        ),
    );
}

/// How a refresh ended, seen by its sender: a 2xx whose own request marked the key (see
/// `refused_refresh`) was not stored.
pub fn refresh_end(end: RefreshEnd, lock: &HeldLock) -> RefreshEnd {
    if end != RefreshEnd::Stored {
        return end;
    }
    let now = now_ms();
    let marked = lock
        .zone()
        .with_key(lock.key(), |t, fp| t.error_left_ms(fp, now))
        .flatten();
    if marked.is_some() {
        RefreshEnd::NotStored
    } else {
        end
    }
}
