//! The hot tier (`stale_cache_hot_zone`, `stale_cache_hot`): the exact bytes srcache's fetch
//! got from Redis for keys that proved hot, kept in shared memory (`crate::hotcache`) and
//! handed to srcache's next fetch of the key instead of asking Redis.
//!
//! Serving goes through srcache's own parsing: the fetch subrequest srcache makes is answered
//! by this module's content handler with the stored bytes (200, the value as body), exactly
//! what the Redis location would have answered, so srcache sends the same status, headers and
//! body, and stores nothing (a fetch hit). The fetch subrequest is recognised as the first
//! subrequest after the decision, before the response header, without a body, whose
//! arguments are `$cache_key` (raw, as the documented `srcache_fetch GET /redis $cache_key`
//! sends it) or contain it escaped (`key=$escaped_key`).
//!
//! Filling: a fresh hit of a key seen fresh before within its fresh period lets the output of
//! its fetch subrequest (a 200 from the Redis location) be copied into the zone, up to
//! `stale_cache_hot_max_size`.

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_int_t, ngx_palloc, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock,
    ngx_slab_alloc, ngx_slab_pool_t, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::module::{main_conf, StaleCacheModule};
use super::state::{self, RequestState};
use crate::hotcache::{fingerprint, HotError, HotTable, Plan, Stored};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, DECLINED, ERROR, OK};
use crate::policy::CacheStatus;
use crate::replay::key_argument;

/// `stale_cache_hot_zone NAME SIZE`.
pub struct HotZone {
    pub name: Vec<u8>,
    pub shm: *mut ngx_shm_zone_t,
    /// The table's fingerprint seed, read once per worker.
    seed: Cell<Option<u64>>,
}

/// The block starts with the region's length; the table follows.
const PREFIX: usize = 64;

impl HotZone {
    pub fn new(name: Vec<u8>, shm: *mut ngx_shm_zone_t) -> Self {
        HotZone {
            name,
            shm,
            seed: Cell::new(None),
        }
    }

    fn fingerprint(&self, key: &[u8]) -> Option<u64> {
        let seed = match self.seed.get() {
            Some(seed) => seed,
            None => {
                let seed = self.with_table(|t| t.seed())?;
                self.seed.set(Some(seed));
                seed
            }
        };
        Some(fingerprint(seed, key))
    }

    /// Runs `f` on the table and `key`'s fingerprint under the zone's mutex; `None` before
    /// the zone is mapped or when it is unusable (the caller goes on without the hot tier).
    fn with_key<R>(&self, key: &[u8], f: impl FnOnce(&mut HotTable, u64) -> R) -> Option<R> {
        let fp = self.fingerprint(key)?;
        self.with_table(|t| f(t, fp))
    }

    /// Runs `f` on the table with the zone's mutex held. A table a dead worker left
    /// half-updated is emptied first (logged).
    fn with_table<R>(&self, f: impl FnOnce(&mut HotTable) -> R) -> Option<R> {
        // SAFETY: `shm` is the zone nginx created for this configuration; it lives as long as
        // the cycle whose configuration holds this HotZone.
        let zone = unsafe { &*self.shm };
        if zone.data.is_null() {
            return None;
        }
        // SAFETY: a non-null `data` is the block init_hot_zone made and prefixed.
        let (region, len) = unsafe { region_of(zone.data as *mut u8) };
        // SAFETY: `shm.addr` is the start of the mapped zone, where nginx keeps the slab pool
        // whose mutex all workers share; addr_of_mut makes no reference to shared memory.
        let mutex = unsafe { ptr::addr_of_mut!((*(zone.shm.addr as *mut ngx_slab_pool_t)).mutex) };
        // SAFETY: nginx initialised the mutex with the pool; it is released below on every
        // path (nothing in between unwinds: panics abort).
        unsafe { ngx_shmtx_lock(mutex) };
        // SAFETY: the region stays mapped for the cycle and the mutex makes this process its
        // only user until the unlock below; the slice is dropped before it.
        let slice = unsafe { core::slice::from_raw_parts_mut(region, len) };
        let (result, damage) = match HotTable::attach(slice) {
            Ok(mut t) => (Some(f(&mut t)), None),
            Err(why @ HotError::Damaged(_)) => match HotTable::rebuild(slice) {
                Ok(mut t) => (Some(f(&mut t)), Some(why)),
                Err(_) => (None, Some(why)),
            },
            Err(_) => (None, None),
        };
        // SAFETY: the mutex locked above.
        unsafe { ngx_shmtx_unlock(mutex) };
        if let Some(why) = damage {
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                zone.shm.log,
                "stale_cache: hot zone \"{}\" was {}, probably by a worker that died while \
                 writing it; emptied it (Redis still has every entry)",
                String::from_utf8_lossy(&self.name),
                why
            );
        }
        result
    }
}

/// The table region inside a block made by `init_hot_zone`.
///
/// # Safety
/// `block` must be the block `init_hot_zone` allocated and prefixed.
unsafe fn region_of(block: *mut u8) -> (*mut u8, usize) {
    // SAFETY: (caller) the prefix holds the region's length.
    unsafe { (block.add(PREFIX), (block as *const usize).read()) }
}

/// nginx's zone initialiser: lays out an empty table, or keeps (after a full check) the
/// table of the same zone across a reload.
pub unsafe extern "C" fn init_hot_zone(
    shm_zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> ngx_int_t {
    // SAFETY: nginx passes the zone being initialised (in the master, before workers start).
    let zone = unsafe { &mut *shm_zone };
    let name = String::from_utf8_lossy(str_bytes(&zone.shm.name)).into_owned();
    // SAFETY: on reuse nginx maps the old zone at `shm.addr` with its slab pool; a new zone
    // has a fresh pool there. addr_of_mut makes no reference.
    let mutex = unsafe { ptr::addr_of_mut!((*(zone.shm.addr as *mut ngx_slab_pool_t)).mutex) };
    let reused = if !data.is_null() {
        Some(data as *mut u8)
    } else if zone.shm.exists != 0 {
        // SAFETY: an existing mapping (Windows-style reuse) keeps the block in pool.data.
        Some(unsafe { (*(zone.shm.addr as *mut ngx_slab_pool_t)).data } as *mut u8)
    } else {
        None
    };
    if let Some(block) = reused {
        // SAFETY: the block this function made for the previous cycle, still mapped.
        let (region, len) = unsafe { region_of(block) };
        // SAFETY: the old cycle's workers still use the table: check it under their mutex.
        unsafe { ngx_shmtx_lock(mutex) };
        // SAFETY: mapped, mutex held; the slice is dropped before the unlock.
        let slice = unsafe { core::slice::from_raw_parts_mut(region, len) };
        let checked = match HotTable::attach(slice) {
            Ok(t) => t.verify(),
            Err(e) => Err(e),
        };
        let outcome = match checked {
            Ok(()) => Ok(None),
            Err(why @ HotError::Damaged(_)) => HotTable::rebuild(slice).map(|_| Some(why)),
            Err(other) => Err(other),
        };
        // SAFETY: the mutex locked above.
        unsafe { ngx_shmtx_unlock(mutex) };
        match outcome {
            Ok(None) => {}
            Ok(Some(why)) => {
                ngx::ngx_log_error!(
                    NGX_LOG_NOTICE,
                    zone.shm.log,
                    "stale_cache: hot zone \"{}\" failed its check on reload ({}); emptied it",
                    name,
                    why
                );
            }
            Err(why) => {
                ngx::ngx_log_error!(
                    ngx::ffi::NGX_LOG_EMERG,
                    zone.shm.log,
                    "stale_cache: hot zone \"{}\" from the running configuration has another \
                     layout ({}); restart nginx instead of reloading it",
                    name,
                    why
                );
                return ERROR;
            }
        }
        zone.data = block as *mut c_void;
        return OK;
    }
    // SAFETY: nginx initialised a slab pool at the start of the zone.
    let pool = unsafe { &mut *(zone.shm.addr as *mut ngx_slab_pool_t) };
    // SAFETY: ngx_pagesize is set at startup.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    let bytes = pool.pfree.saturating_sub(1) * page;
    if bytes < 4 * page {
        return ERROR;
    }
    // SAFETY: the pool is live and not yet shared with any worker.
    let block = unsafe { ngx_slab_alloc(pool, bytes) } as *mut u8;
    if block.is_null() {
        return ERROR;
    }
    let len = bytes - PREFIX;
    // SAFETY: a fresh allocation of `bytes` bytes owned by this zone: the prefix holds the
    // length, the table follows.
    let slice = unsafe {
        (block as *mut usize).write(len);
        core::slice::from_raw_parts_mut(block.add(PREFIX), len)
    };
    let Ok(table) = HotTable::init(slice, random_seed()) else {
        return ERROR;
    };
    let blocks = table.stats().blocks;
    pool.data = block as *mut c_void;
    zone.data = block as *mut c_void;
    ngx::ngx_log_error!(
        NGX_LOG_NOTICE,
        zone.shm.log,
        "stale_cache: hot zone \"{}\": {} blocks of {} bytes ({} KiB of responses)",
        name,
        blocks,
        crate::hotcache::BLOCK_SIZE,
        blocks as usize * crate::hotcache::BLOCK_SIZE / 1024
    );
    OK
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/* ------------------------------------------------------------ per request */

/// The hot tier's part of a request's state.
pub struct Hot {
    pub plan: Plan,
    /// The key's fresh period as the module knows it (memo or TTL lookup), in ms.
    pub fresh_until: u64,
    /// The fetch subrequest being served or filled from, once recognised.
    pub fetch: *mut ngx_http_request_t,
    /// The copy handed to the fetch subrequest (its pool).
    pub served: *mut ngx_buf_t,
    /// The fetch's output, while filling.
    pub bytes: Vec<u8>,
    /// The fill cannot be used (too large, in a file, ...).
    pub spoiled: bool,
}

impl Default for Hot {
    fn default() -> Self {
        Hot {
            plan: Plan::Nothing,
            fresh_until: 0,
            fetch: ptr::null_mut(),
            served: ptr::null_mut(),
            bytes: Vec::new(),
            spoiled: false,
        }
    }
}

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
    let key = &state.settings().key;
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
    state.hot.plan = plan;
    state.hot.fresh_until = fresh_until;
}

/// Drops the hot copy of `key` on this node (purge, store, a fetch that missed).
pub fn forget(req: &ngx_http_request_t, key: &[u8]) {
    if let Some(zone) = main_conf(req).hot.as_ref() {
        zone.with_key(key, |t, fp| t.remove(fp, key));
    }
}

/// Whether `sr` is the fetch subrequest srcache makes for `state`'s request.
fn is_fetch(state: &RequestState, sr: &ngx_http_request_t) -> bool {
    // SAFETY: a live subrequest's main request is live.
    let main = unsafe { &*sr.main };
    // (A subrequest shares its main request's body, so the body says nothing here; srcache's
    // store, which has one, starts only after the header went out.)
    if main.header_sent() != 0 || ptr::eq(sr.post_subrequest, &state.post_subrequest) {
        return false;
    }
    let Some(settings) = state.settings.as_ref() else {
        return false;
    };
    let args = str_bytes(&sr.args);
    if args == settings.key.as_slice() {
        return true;
    }
    let escaped = &key_argument(&settings.key)[4..];
    !escaped.is_empty() && args.windows(escaped.len()).any(|w| w == escaped)
}

/// PREACCESS of a subrequest: srcache's fetch of a request the hot tier serves is answered
/// here (its content handler replaced), or marked to fill the zone.
pub fn subrequest(sr: &mut ngx_http_request_t) -> ngx_int_t {
    let Some(state) = state::find(sr) else {
        return DECLINED;
    };
    // SAFETY: a subrequest's phase runs when no step of its main request does; this is the
    // only borrow of the state until it returns.
    let state = unsafe { &mut *state.as_ptr() };
    if state.hot.plan == Plan::Nothing || !state.hot.fetch.is_null() || !is_fetch(state, sr) {
        return DECLINED;
    }
    state.hot.fetch = sr;
    if state.hot.plan == Plan::Fill {
        return DECLINED;
    }
    // SAFETY: the main request is live while its subrequest runs.
    let main = unsafe { &*sr.main };
    let Some(scf) = StaleCacheModule::location_conf(main) else {
        return DECLINED;
    };
    let key = state.settings().key.clone();
    let (key, max_age, now) = (key.as_slice(), scf.hot_max_age_ms(), now_ms());
    let pool = sr.pool;
    let mut buf: *mut ngx_buf_t = ptr::null_mut();
    let zone = main_conf(sr).hot.as_ref();
    let copied = zone.and_then(|z| {
        z.with_key(key, |t, fp| {
            t.read(fp, key, now, max_age, |len| {
                if len == 0 {
                    return None;
                }
                // SAFETY: the subrequest's live pool; the buffer lives as long as it.
                buf = unsafe { ngx_create_temp_buf(pool, len) };
                // SAFETY: a non-null temp buffer has `len` writable bytes at `pos`.
                unsafe { buf.as_mut() }
                    .map(|b| unsafe { core::slice::from_raw_parts_mut(b.pos, len) })
            })
        })
        .flatten()
    });
    let Some(len) = copied else {
        // Gone or too old since the decision: srcache asks Redis as usual.
        state.hot.plan = Plan::Nothing;
        return DECLINED;
    };
    // SAFETY: the buffer made above, `len` bytes filled.
    unsafe { (*buf).last = (*buf).pos.add(len) };
    state.hot.served = buf;
    state.status = Some(CacheStatus::Hot);
    sr.content_handler = Some(serve_content);
    debug!(
        request_log(sr),
        "stale_cache: \"{}\" answered from the hot tier ({} bytes)",
        Short(key),
        len
    );
    DECLINED
}

/// The fetch subrequest's content handler when the hot tier answers it: a 200 with the
/// stored value as body, as the Redis location would answer.
unsafe extern "C" fn serve_content(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let sr = unsafe { &mut *r };
    let Some(state) = state::find(sr) else {
        return ERROR;
    };
    // SAFETY: as in `subrequest`: no step of the main request runs now.
    let buf = unsafe { (*state.as_ptr()).hot.served };
    // SAFETY: the buffer was made in this subrequest's pool by `subrequest`.
    let Some(b) = (unsafe { buf.as_mut() }) else {
        return ERROR;
    };
    // SAFETY: as above.
    let len = unsafe { b.last.offset_from(b.pos) } as i64;
    sr.headers_out.status = 200;
    sr.headers_out.content_length_n = len;
    // SAFETY: a live subrequest whose headers are set.
    let rc = unsafe { ngx_http_send_header(sr) };
    if rc == ERROR || rc > OK || sr.header_only() != 0 {
        return rc;
    }
    b.set_last_in_chain(1);
    // SAFETY: the subrequest's pool; the chain link lives as long as the request.
    let cl =
        unsafe { ngx_palloc(sr.pool, core::mem::size_of::<ngx_chain_t>()) } as *mut ngx_chain_t;
    if cl.is_null() {
        return ERROR;
    }
    // SAFETY: a fresh allocation of one chain link.
    unsafe {
        cl.write(ngx_chain_t {
            buf,
            next: ptr::null_mut(),
        })
    };
    // SAFETY: a live subrequest and a valid one-link chain.
    unsafe { ngx_http_output_filter(sr, cl) }
}

/// Body filter tap: copies the output of a fetch subrequest marked to fill the zone, and
/// stores it when it is complete.
///
/// # Safety
/// `chain` must be the valid chain handed to the body filter for the live subrequest `sr`.
pub unsafe fn fetch_output(sr: &ngx_http_request_t, chain: *mut ngx_chain_t) {
    let Some(state) = state::find(sr) else {
        return;
    };
    // SAFETY: filters of a subrequest run when no step of its main request does.
    let state = unsafe { &mut *state.as_ptr() };
    if state.hot.plan != Plan::Fill || !ptr::eq(state.hot.fetch, sr) {
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
            state.hot.spoiled = true;
        } else if !state.hot.spoiled {
            // SAFETY: as above.
            let len = unsafe { b.last.offset_from(b.pos) }.max(0) as usize;
            if state.hot.bytes.len() + len > limit {
                state.hot.spoiled = true;
                state.hot.bytes = Vec::new();
            } else if len > 0 {
                // SAFETY: as above.
                state
                    .hot
                    .bytes
                    .extend_from_slice(unsafe { core::slice::from_raw_parts(b.pos, len) });
            }
        }
        last |= b.last_in_chain() != 0 || b.last_buf() != 0;
        cl = link.next;
    }
    if !last {
        return;
    }
    state.hot.plan = Plan::Nothing;
    let bytes = core::mem::take(&mut state.hot.bytes);
    let key = &state.settings().key;
    let Some(zone) = main_conf(sr).hot.as_ref() else {
        return;
    };
    let usable = sr.headers_out.status == 200 && !state.hot.spoiled && !bytes.is_empty();
    let now = now_ms();
    let fresh_until = state.hot.fresh_until;
    let stored = zone.with_key(key, |t, fp| {
        if usable && now < fresh_until {
            Some(t.store(fp, key, &bytes, now, fresh_until))
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
