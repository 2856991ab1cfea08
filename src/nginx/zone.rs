//! `stale_cache_zone NAME SIZE`: the shared-memory lock table all workers use, guarded by
//! the zone's nginx shared mutex.

use core::ffi::c_void;

use ngx::ffi::{ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t};

use crate::locktable::{Fingerprint, LayoutError, LockTable};
use crate::metrics::{self, Count, Counters, Lane, Lanes, Snapshot, Tally};

const NGX_OK: ngx_int_t = 0;
const NGX_ERROR: ngx_int_t = -1;

/// A configured zone: its name (what `$cache_lock` names) and nginx's shm zone.
pub struct Zone {
    pub name: Vec<u8>,
    pub shm: *mut ngx_shm_zone_t,
    /// The table's fingerprint seed, read once per worker so keys hash outside the mutex.
    pub seed: crate::nginx::shm::SeedCache,
    /// This worker's counters lane (`metrics::Lane`), claimed at its first count.
    pub lane: LaneCache,
    /// Whether this process has seen the table's layout accepted (`LockTable::attach`): later
    /// calls check only what operations change (`LockTable::reattach`).
    pub layout_seen: core::cell::Cell<bool>,
    /// The freshness memos this worker read from the table (`crate::memocache`).
    pub memos: crate::memocache::MemoCache,
}

/// A worker's claim on a zone's counters lane: which process claimed (a configuration made
/// in the master is inherited by every worker, each of which must claim its own), the lane
/// (null: none was free), and when a worker without one asks again.
#[derive(Default)]
pub struct LaneCache(core::cell::Cell<LaneClaim>);

#[derive(Clone, Copy)]
struct LaneClaim {
    owner: u64,
    shared: *const Counters,
    /// Null: none was free.
    lane: *const Lane,
    retry_at: u64,
}

impl Default for LaneClaim {
    fn default() -> Self {
        LaneClaim {
            owner: 0,
            shared: core::ptr::null(),
            lane: core::ptr::null(),
            retry_at: 0,
        }
    }
}

/// How often a worker that found every lane taken (old workers still draining after a
/// reload) asks again.
const LANE_RETRY_MS: u64 = 1000;

impl Zone {
    /// The fingerprint of `key` in this zone's table; `None` before the zone is mapped.
    pub fn fingerprint(&self, key: &[u8]) -> Option<Fingerprint> {
        let seed = self.seed.get(|| self.with_table(|t| t.seed()))?;
        Some(Fingerprint::of(seed, key))
    }

    /// The zone's counters block and lanes (used without the mutex); `None` before the zone
    /// is mapped.
    fn blocks(&self) -> Option<(&Counters, &Lanes)> {
        // SAFETY: `shm` is the zone nginx created for this configuration (see with_table).
        let data = unsafe { (*self.shm).data };
        if data.is_null() {
            return None;
        }
        // SAFETY: a non-null `data` is the block init_zone made, whose counters and lanes it
        // laid out (or checked, on reuse) before any worker ran; the block stays mapped for
        // the cycle.
        unsafe {
            let counters = counters_of(data as *mut u8);
            Some((&*counters, &*lanes_of(counters)))
        }
    }

    /// Where this worker counts in the zone: its lane, claimed at the first count, else the
    /// shared atomics. `None` before the zone is mapped.
    #[inline]
    pub fn counters(&self) -> Option<Tally<'_>> {
        let pid = crate::nginx::util::worker_pid();
        let claim = self.lane.0.get();
        if claim.owner == pid && !claim.lane.is_null() {
            // SAFETY: the blocks this process claimed its lane in (below), mapped for the
            // cycle.
            return Some(unsafe {
                Tally {
                    shared: &*claim.shared,
                    lane: Some(&*claim.lane),
                }
            });
        }
        let (shared, lanes) = self.blocks()?;
        if claim.owner == pid && crate::nginx::util::now_ms() < claim.retry_at {
            return Some(Tally { shared, lane: None });
        }
        let lane = lanes.claim(pid, |p| {
            u32::try_from(p).map_or(true, crate::nginx::process::owner_alive)
        });
        self.lane.0.set(LaneClaim {
            owner: pid,
            shared,
            lane: lane.map_or(core::ptr::null(), |l| l as *const Lane),
            retry_at: crate::nginx::util::now_ms() + LANE_RETRY_MS,
        });
        Some(Tally { shared, lane })
    }

    /// The zone's counter values: the shared block plus every lane.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let (shared, lanes) = self.blocks()?;
        Some(shared.snapshot_with(lanes))
    }

    /// The table's memo epoch, read without the mutex: what a copy of a memo is good under
    /// (`crate::memocache`). `None` before the zone is mapped.
    #[inline]
    pub fn memo_epoch(&self) -> Option<u32> {
        // SAFETY: `shm` is the zone nginx created for this configuration (see with_table).
        let data = unsafe { (*self.shm).data };
        if data.is_null() {
            return None;
        }
        // SAFETY: a non-null `data` is the block init_zone made and prefixed with the table,
        // whose header it laid out (or checked) before any worker ran; mapped for the cycle.
        Some(unsafe { LockTable::memo_epoch_raw(table_region(data as *mut u8).0) })
    }

    /// Runs `f` on the table and `key`'s fingerprint, hashed before the mutex is taken.
    pub fn with_key<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&mut LockTable, Fingerprint) -> R,
    ) -> Option<R> {
        let fp = self.fingerprint(key)?;
        self.with_table(|t| f(t, fp))
    }

    /// Runs `f` on the table with the zone's mutex held; `None` before the zone is mapped,
    /// and when the table is unusable: the caller then works without the zone (fails open).
    /// A table found damaged (a worker died in the middle of an update), before `f` or by
    /// it, is emptied on the spot and logged; `f`'s answer from a damaged table is dropped.
    pub fn with_table<R>(&self, f: impl FnOnce(&mut LockTable) -> R) -> Option<R> {
        // SAFETY: `shm` is the zone nginx created for this configuration; it lives as long as
        // the cycle whose configuration holds this Zone.
        let zone = unsafe { &*self.shm };
        if zone.data.is_null() {
            return None;
        }
        // SAFETY: a non-null `data` was set by init_zone to the block it allocated and
        // prefixed with the table's length.
        let (region, len) = unsafe { table_region(zone.data as *mut u8) };
        crate::nginx::shm::with_table(
            zone,
            // SAFETY: the region stays mapped for the cycle, and the mutex with_table holds
            // makes this worker its only user while `run_locked` runs.
            || unsafe { run_locked(region, len, &self.layout_seen, f) },
            |log, why| {
                ngx::ngx_log_error!(
                    ngx::ffi::NGX_LOG_WARN,
                    log,
                    "stale_cache: zone \"{}\" was damaged ({}), probably by a worker that \
                     died while updating it; emptied it (locks and memos held then are \
                     forgotten)",
                    String::from_utf8_lossy(&self.name),
                    why
                );
            },
        )
    }
}

/// `f` on the table in `region`, rebuilding it if it is or becomes damaged. Returns `f`'s
/// answer (`None` when the table is unusable or `f` found it damaged) and the damage found.
///
/// # Safety
/// As for [`LockTable::attach_raw`]: `region` valid for `len` bytes, zone mutex held.
unsafe fn run_locked<R>(
    region: *mut u8,
    len: usize,
    layout_seen: &core::cell::Cell<bool>,
    f: impl FnOnce(&mut LockTable) -> R,
) -> (Option<R>, Option<LayoutError>) {
    // SAFETY: (caller) valid region, mutex held.
    let attached = unsafe {
        if layout_seen.get() {
            LockTable::reattach_raw(region, len)
        } else {
            LockTable::attach_raw(region, len)
        }
    };
    match attached {
        Ok(mut table) => {
            layout_seen.set(true);
            let result = f(&mut table);
            let Some(why) = table.damage() else {
                return (Some(result), None);
            };
            // SAFETY: (caller) as above; `table`, the only other view, is not used again.
            let _ = unsafe { LockTable::rebuild_raw(region, len) };
            (None, Some(why))
        }
        Err(why @ LayoutError::Corrupt(_)) => {
            // Marked damaged by a worker that died before rebuilding it.
            // SAFETY: (caller) as above; attach made no view.
            match unsafe { LockTable::rebuild_raw(region, len) } {
                Ok(mut table) => (Some(f(&mut table)), Some(why)),
                Err(_) => (None, Some(why)),
            }
        }
        Err(_) => (None, None),
    }
}

/// On reload, checks the table a reused zone carries over in full, rebuilding it when
/// damaged. `Ok(Some(why))`: rebuilt because of `why`; `Err`: another layout or size (the
/// running workers read it with other code, so it must not be touched).
///
/// # Safety
/// As for [`LockTable::attach_raw`]: `region` valid for `len` bytes, zone mutex held.
unsafe fn check_reused(region: *mut u8, len: usize) -> Result<Option<LayoutError>, LayoutError> {
    // SAFETY: (caller) valid region, mutex held.
    let why = match unsafe { LockTable::attach_raw(region, len) } {
        Ok(table) => match table.verify() {
            Ok(()) => return Ok(None),
            Err(why) => why,
        },
        Err(why @ LayoutError::Corrupt(_)) => why,
        Err(other) => return Err(other),
    };
    // SAFETY: (caller) as above; the view made by attach is gone.
    unsafe { LockTable::rebuild_raw(region, len) }?;
    Ok(Some(why))
}

/// The zone block starts with the table's length and the counters' magic; the table follows,
/// aligned, then the counters block.
const PREFIX: usize = 64;

/// The counters block of a zone block made by `init_zone`: after the table.
///
/// # Safety
/// `block` must be the block `init_zone` allocated and prefixed.
unsafe fn counters_of(block: *mut u8) -> *const Counters {
    // SAFETY: (caller) as for table_region; the counters follow the table.
    unsafe {
        let (region, len) = table_region(block);
        region.add(len) as *const Counters
    }
}

/// The lanes after the counters block `counters_of` gives.
///
/// # Safety
/// `counters` must be the counters block of a block `init_zone` of this layout made.
unsafe fn lanes_of(counters: *const Counters) -> *const Lanes {
    // SAFETY: (caller) the lanes end the block, right after the counters.
    unsafe { (counters as *const u8).add(metrics::BLOCK_SIZE) as *const Lanes }
}

/// Whether a block from the running configuration has this build's counters: the magic in
/// its prefix, and a valid block after the table.
///
/// # Safety
/// `block` must be a block `init_zone` (of any build) allocated and prefixed.
unsafe fn has_counters(block: *mut u8) -> bool {
    // SAFETY: (caller) the prefix is PREFIX bytes; older builds left its second word unused
    // (never metrics::MAGIC); only when it is set do the counters follow the table.
    unsafe {
        (block as *const u64).add(1).read() == metrics::MAGIC && (*counters_of(block)).is_valid()
    }
}

/// The table region inside a zone block made by `init_zone`.
///
/// # Safety
/// `block` must be the block `init_zone` allocated and prefixed.
unsafe fn table_region(block: *mut u8) -> (*mut u8, usize) {
    // SAFETY: (caller) the prefix holds the table length written by init_zone.
    unsafe { (block.add(PREFIX), (block as *const usize).read()) }
}

/// nginx's zone initialiser: lays the table out in a fresh zone, or keeps the table of the
/// same zone across a reload.
pub unsafe extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes the zone being initialised (in the master, before workers start).
    let zone = unsafe { &mut *shm_zone };
    if !data.is_null() {
        // Reload with an unchanged size: the old mapping and its table carry over, if this
        // module version reads the same layout (else the reload fails and says why), after a
        // full check: a worker that died mid-update may have left it inconsistent.
        let name = String::from_utf8_lossy(crate::nginx::util::str_bytes(&zone.shm.name));
        // SAFETY: `data` is the block this function (of this or another build) made for the
        // previous cycle.
        if !unsafe { has_counters(data as *mut u8) } {
            ngx::ngx_log_error!(
                ngx::ffi::NGX_LOG_EMERG,
                zone.shm.log,
                "stale_cache: zone \"{}\" from the running configuration has another layout \
                 (no counters block); restart nginx instead of reloading it",
                name
            );
            return NGX_ERROR;
        }
        // SAFETY: as above.
        let (region, len) = unsafe { table_region(data as *mut u8) };
        // On reuse nginx maps the old zone at `shm.addr`, with the slab pool (and its mutex)
        // the previous cycle initialised: the old cycle's workers still use the table, so it
        // is checked under their mutex.
        // SAFETY: the block stays mapped; the mutex is held.
        let checked = crate::nginx::shm::locked(zone, || unsafe { check_reused(region, len) });
        match checked {
            Ok(None) => {}
            Ok(Some(why)) => {
                ngx::ngx_log_error!(
                    ngx::ffi::NGX_LOG_NOTICE,
                    zone.shm.log,
                    "stale_cache: zone \"{}\" failed its check on reload ({}); emptied it",
                    name,
                    why
                );
            }
            Err(e) => {
                ngx::ngx_log_error!(
                    ngx::ffi::NGX_LOG_EMERG,
                    zone.shm.log,
                    "stale_cache: zone \"{}\" from the running configuration has another \
                     layout ({}); restart nginx instead of reloading it",
                    name,
                    e
                );
                return NGX_ERROR;
            }
        }
        zone.data = data;
        return NGX_OK;
    }
    // SAFETY: nginx initialised a slab pool at the start of the zone.
    let pool = unsafe { &mut *(zone.shm.addr as *mut ngx_slab_pool_t) };
    if zone.shm.exists != 0 {
        zone.data = pool.data;
        return NGX_OK;
    }
    // One block for the whole table: everything but a page for nginx's own slab use.
    // SAFETY: ngx_pagesize is set at startup.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    let bytes = pool.pfree.saturating_sub(1) * page;
    if bytes < 4 * page {
        return NGX_ERROR;
    }
    // SAFETY: the pool is live and not yet shared with any worker.
    let region = unsafe { ngx_slab_alloc(pool, bytes) } as *mut u8;
    if region.is_null() {
        return NGX_ERROR;
    }
    let table_len = bytes - PREFIX - metrics::BLOCK_SIZE - metrics::LANES_SIZE;
    // SAFETY: `region` is a fresh, page-aligned allocation of `bytes` bytes owned by this
    // zone: the prefix holds the length and the counters' magic, the table follows, then the
    // counters block (8-aligned: the sizes are multiples of 8) and the lanes, which end the
    // page-aligned block and so start on a cache line (their size is a multiple of 64).
    unsafe {
        (region as *mut usize).write(table_len);
        (region as *mut u64).add(1).write(metrics::MAGIC);
        // A random fingerprint seed, so that keys clients choose cannot be made to collide on
        // purpose; the same for all workers since it is stored in the table.
        let seed = crate::nginx::random::u64();
        if LockTable::init_raw(region.add(PREFIX), table_len, seed).is_err() {
            return NGX_ERROR;
        }
        let counters = region.add(PREFIX + table_len) as *mut Counters;
        counters.write_bytes(0, 1);
        (lanes_of(counters) as *mut Lanes).write_bytes(0, 1);
        (*counters).init();
    }
    pool.data = region as *mut c_void;
    zone.data = region as *mut c_void;
    let slots = LockTable::slots_for_len(table_len);
    let capacity = LockTable::capacity_for_len(table_len);
    ngx::ngx_log_error!(
        ngx::ffi::NGX_LOG_NOTICE,
        zone.shm.log,
        "stale_cache: zone \"{}\": {} slots of {} bytes, room for {} entries (locks and \
         freshness memos together)",
        String::from_utf8_lossy(crate::nginx::util::str_bytes(&zone.shm.name)),
        slots,
        LockTable::bytes_per_slot(),
        capacity
    );
    NGX_OK
}

/// A zone of the main configuration. A copyable handle, so a step can hold it while it
/// changes the request's state; only made from a zone in the configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ZoneRef(core::ptr::NonNull<Zone>);

impl ZoneRef {
    pub fn new(zone: &Zone) -> Self {
        ZoneRef(core::ptr::NonNull::from(zone))
    }

    /// The zone's address, which identifies it among the configured ones.
    pub fn id(self) -> usize {
        self.0.as_ptr() as usize
    }

    /// Adds one to the zone's `counter` (in this worker's lane, no mutex).
    #[inline]
    pub fn count(self, counter: crate::metrics::Counter) {
        if let Some(c) = self.counters() {
            c.incr(counter);
        }
    }
}

impl core::ops::Deref for ZoneRef {
    type Target = Zone;

    fn deref(&self) -> &Zone {
        // SAFETY: made from a zone of a cycle's main configuration, which outlives every
        // request, wait and refresh of that cycle (the only places handles are kept).
        unsafe { self.0.as_ref() }
    }
}

/// Zone lookup by name among the configured ones.
pub fn find<'a>(zones: &'a [Zone], name: &[u8]) -> Option<&'a Zone> {
    zones.iter().find(|z| z.name == name)
}
