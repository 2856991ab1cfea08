//! Filling the hot zone: the output of srcache's fetch subrequest of a key planned to fill
//! (`Plan::Fill`) is copied as it passes the body filter, and stored once complete.

use core::ptr;

use ngx::ffi::{ngx_chain_t, ngx_http_request_t, NGX_LOG_NOTICE};
use ngx::http::HttpModuleLocationConf;

use super::region::detach_pages;
use crate::hotcache::{Plan, Stored};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::process::owner_alive;
use crate::nginx::util::{now_ms, request_log};
use crate::stale::state;
use crate::stale::{main_conf, StaleCacheModule};

/// Body filter tap: copies the output of a fetch subrequest marked to fill the zone, and
/// stores it when it is complete.
///
/// # Safety
/// `chain` must be the valid chain handed to the body filter for the live subrequest `sr`.
pub unsafe fn fetch_output(sr: &ngx_http_request_t, chain: *mut ngx_chain_t) {
    if main_conf(sr).hot.is_none() {
        return;
    }
    let Some(state) = state::find(sr) else {
        return;
    };
    // SAFETY: filters of a subrequest run when no step of its main request does.
    let state = unsafe { &mut *state.as_ptr() };
    let hot = state.hot_mut();
    if hot.plan != Plan::Fill || !ptr::eq(hot.fetch, sr) {
        return;
    }
    // SAFETY: the main request is live while its subrequest runs.
    let main = unsafe { &*sr.main };
    let limit = StaleCacheModule::location_conf(main).map_or(0, |c| c.hot_max_size());
    let mut last = false;
    let mut cl = chain;
    // SAFETY: (caller) valid links and buffers; memory buffers hold `pos..last`.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        let Some(b) = (unsafe { link.buf.as_ref() }) else {
            break;
        };
        if b.in_file() != 0 && b.memory() == 0 && b.temporary() == 0 {
            hot.spoiled = true;
        } else if !hot.spoiled {
            // SAFETY: as above.
            let len = unsafe { b.last.offset_from(b.pos) }.max(0) as usize;
            if hot.bytes.len() + len > limit {
                hot.spoiled = true;
                hot.bytes = Vec::new();
            } else if len > 0 {
                // SAFETY: as above.
                hot.bytes
                    .extend_from_slice(unsafe { core::slice::from_raw_parts(b.pos, len) });
            }
        }
        last |= b.last_in_chain() != 0 || b.last_buf() != 0;
        cl = link.next;
    }
    if !last {
        return;
    }
    hot.plan = Plan::Nothing;
    let bytes = core::mem::take(&mut hot.bytes);
    let usable = sr.headers_out.status == 200 && !hot.spoiled && !bytes.is_empty();
    let fresh_until = hot.fresh_until;
    let key = state.settings().key.as_slice();
    let Some(zone) = main_conf(sr).hot.as_ref() else {
        return;
    };
    let now = now_ms();
    let stored = zone.with_key(key, |t, fp| {
        if usable && now < fresh_until {
            let m = zone.mapping()?;
            let mut stored = t.store(fp, key, &bytes, now, fresh_until, |at, n| {
                detach_pages(&m, at, n)
            });
            if stored == Stored::NoRoom && t.release_dead_owners(owner_alive) > 0 {
                stored = t.store(fp, key, &bytes, now, fresh_until, |at, n| {
                    detach_pages(&m, at, n)
                });
            }
            Some(stored)
        } else {
            t.release_fill(fp, key);
            None
        }
    });
    debug!(
        request_log(sr),
        "stale_cache: hot tier fill of \"{}\" ({} bytes): {:?}",
        Short(key),
        bytes.len(),
        stored
    );
    if let Some(Some(Stored::Stored { evicted })) = stored {
        if evicted > 0 {
            log::limited(
                request_log(sr),
                NGX_LOG_NOTICE,
                "hot-evict",
                Every::Once,
                format_args!(
                    "stale_cache: hot zone \"{}\" is full: evicting the least recently used \
                     responses",
                    String::from_utf8_lossy(&zone.name)
                ),
            );
        }
    }
}
