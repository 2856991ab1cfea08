//! An entry that is stale the moment it is stored: its store time is no longer than
//! `$cache_stale` + `$cache_stale_if_error`, so every request finds it stale and sends a
//! refresh. `nginx -t` warns when it can see the store time (a literal `exptime=`); this
//! catches the rest at run time, once per key (per worker), on the TTL answer right after a
//! store of this node.

use std::cell::RefCell;
use std::collections::HashSet;

use ngx::ffi::{ngx_http_request_t, NGX_LOG_WARN};

use crate::nginx::log::{self, Every, Short};
use crate::nginx::util::request_log;
use crate::nginx::zone::ZoneRef;
use crate::settings::Settings;

/// Keys already reported by this worker; bounded, after which the rate limit alone applies.
const REMEMBERED: usize = 1024;

thread_local! {
    static REPORTED: RefCell<HashSet<Vec<u8>>> = RefCell::new(HashSet::new());
}

/// A TTL answer of `ttl` seconds said stale (or grace band) at `now`: if a fill or refresh of
/// this node stored the key moments ago, the store time is too short; say so with the fix.
pub fn check(req: &ngx_http_request_t, zone: ZoneRef, settings: &Settings, ttl: i64, now: u64) {
    if ttl < 0 {
        return; // no expiry, or missing: nothing about the store time
    }
    let Some(Some(stored_at)) = zone.with_key(&settings.key, |t, fp| t.last_store_ms(fp, now))
    else {
        return;
    };
    let first = REPORTED.with(|r| {
        let mut r = r.borrow_mut();
        if r.contains(settings.key.as_slice()) {
            return false;
        }
        if r.len() < REMEMBERED {
            r.insert(settings.key.to_vec());
        }
        true
    });
    if !first {
        return;
    }
    let needed = settings.stale_secs.saturating_add(settings.grace_secs);
    log::limited(
        request_log(req),
        NGX_LOG_WARN,
        "born-stale",
        Every::Interval,
        format_args!(
            "stale_cache: \"{}\" was stored {} ms ago and is already stale (Redis TTL {ttl} s; \
             fresh only above $cache_stale {} + $cache_stale_if_error {} = {needed} s): every \
             request refreshes it; store entries for longer than {needed} s (srcache_store's \
             exptime, e.g. exptime={})",
            Short(&settings.key),
            now.saturating_sub(stored_at),
            settings.stale_secs,
            settings.grace_secs,
            needed + 5
        ),
    );
}
