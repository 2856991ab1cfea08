//! `stale_cache_zone NAME SIZE`: the shared-memory lock table all workers use, guarded by
//! the zone's nginx shared mutex.

use core::ffi::c_void;

use ngx::ffi::{
    ngx_int_t, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_pool_t,
};

use core::cell::Cell;

use crate::locktable::{Fingerprint, LockTable};

const NGX_OK: ngx_int_t = 0;
const NGX_ERROR: ngx_int_t = -1;

/// A configured zone: its name (what `$cache_lock` names) and nginx's shm zone.
pub struct Zone {
    pub name: Vec<u8>,
    pub shm: *mut ngx_shm_zone_t,
    /// The table's fingerprint seed, read once per worker so keys hash outside the mutex.
    pub seed: Cell<Option<u64>>,
}

impl Zone {
    /// The fingerprint of `key` in this zone's table; `None` before the zone is mapped.
    pub fn fingerprint(&self, key: &[u8]) -> Option<Fingerprint> {
        let seed = match self.seed.get() {
            Some(seed) => seed,
            None => {
                let seed = self.with_table(|t| t.seed())?;
                self.seed.set(Some(seed));
                seed
            }
        };
        Some(Fingerprint::of(seed, key))
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

    /// Runs `f` on the table with the zone's mutex held; `None` before the zone is mapped.
    pub fn with_table<R>(&self, f: impl FnOnce(&mut LockTable) -> R) -> Option<R> {
        // SAFETY: `shm` is the zone nginx created for this configuration; `data` is set by
        // init_zone to the table region (null until then), `shm.addr` is its slab pool.
        unsafe {
            let zone = &*self.shm;
            if zone.data.is_null() {
                return None;
            }
            let pool = zone.shm.addr as *mut ngx_slab_pool_t;
            ngx_shmtx_lock(&mut (*pool).mutex);
            let (region, len) = table_region(zone.data as *mut u8);
            let result = LockTable::attach_raw(region, len)
                .ok()
                .map(|mut t| f(&mut t));
            ngx_shmtx_unlock(&mut (*pool).mutex);
            result
        }
    }
}

/// The zone block starts with the table's length; the table follows, aligned.
const PREFIX: usize = 64;

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
        // module version reads the same layout (else the reload fails and says why).
        // SAFETY: `data` is the block this function made for the previous cycle.
        let (region, len) = unsafe { table_region(data as *mut u8) };
        // SAFETY: the block stays mapped; no worker of the new cycle runs yet.
        if let Err(e) = unsafe { LockTable::attach_raw(region, len) } {
            ngx::ngx_log_error!(
                ngx::ffi::NGX_LOG_EMERG,
                zone.shm.log,
                "stale_cache: zone \"{}\" from the running configuration has another layout \
                 ({}); restart nginx instead of reloading it",
                String::from_utf8_lossy(crate::nginx::util::str_bytes(&zone.shm.name)),
                e
            );
            return NGX_ERROR;
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
    let table_len = bytes - PREFIX;
    // SAFETY: `region` is a fresh, page-aligned allocation of `bytes` bytes owned by this
    // zone: the prefix holds the length, the table the rest.
    unsafe {
        (region as *mut usize).write(table_len);
        if LockTable::init_raw(region.add(PREFIX), table_len, random_seed()).is_err() {
            return NGX_ERROR;
        }
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

/// A seed for the key fingerprints, so keys chosen by clients cannot be made to collide on
/// purpose; the same for all workers since it is stored in the zone.
fn random_seed() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut bytes).is_ok() {
            return u64::from_ne_bytes(bytes);
        }
    }
    // Fallback: time and pid; still differs per start.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Zone lookup by name among the configured ones.
pub fn find<'a>(zones: &'a [Zone], name: &[u8]) -> Option<&'a Zone> {
    zones.iter().find(|z| z.name == name)
}
