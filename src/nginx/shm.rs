//! Locked access to a table in an nginx shared memory zone: the zone's slab pool mutex is
//! held while the table is used, and what went wrong is logged only after the unlock (a log
//! write is a syscall the other workers need not wait for).

use core::ptr;

use ngx::ffi::{ngx_log_t, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_pool_t};

/// Runs `f` with the mutex of `zone`'s slab pool held.
///
/// `zone` must be a zone nginx has mapped and initialised for the running cycle (its slab
/// pool, and so its mutex, is at `shm.addr`); every zone of a configuration is, once its
/// init callback ran.
pub fn locked<R>(zone: &ngx_shm_zone_t, f: impl FnOnce() -> R) -> R {
    // SAFETY: `shm.addr` is the start of the mapped zone, where nginx keeps the slab pool
    // whose mutex all processes share; addr_of_mut makes no reference to shared memory.
    let mutex = unsafe { ptr::addr_of_mut!((*(zone.shm.addr as *mut ngx_slab_pool_t)).mutex) };
    // SAFETY: nginx initialised the mutex with the pool; it is released below on every path
    // (nothing in between unwinds: panics abort), and nginx force-unlocks it if this process
    // dies holding it.
    unsafe { ngx_shmtx_lock(mutex) };
    let result = f();
    // SAFETY: the mutex locked above.
    unsafe { ngx_shmtx_unlock(mutex) };
    result
}

/// Runs `run` (which attaches the table, rebuilds it when it is damaged, and runs the
/// caller's closure on it) with `zone`'s mutex held. `run` answers the closure's result
/// (`None`: the table is unusable) and the damage it found, if any; damage is handed to
/// `damaged` with the zone's log after the unlock. The result is `T` (the caller's closure's
/// answer) as `run` gave it.
pub fn with_table<T, D>(
    zone: &ngx_shm_zone_t,
    run: impl FnOnce() -> (Option<T>, Option<D>),
    damaged: impl FnOnce(*mut ngx_log_t, D),
) -> Option<T> {
    let (result, damage) = locked(zone, run);
    if let Some(why) = damage {
        damaged(zone.shm.log, why);
    }
    result
}

/// A table's fingerprint seed, read from the zone once per worker (under the mutex) so that
/// keys are hashed outside it; the seed never changes for a mapping of the table.
#[derive(Default)]
pub struct SeedCache(core::cell::Cell<Option<u64>>);

impl SeedCache {
    /// The seed, reading it with `read` (which takes the mutex) the first time.
    pub fn get(&self, read: impl FnOnce() -> Option<u64>) -> Option<u64> {
        if let Some(seed) = self.0.get() {
            return Some(seed);
        }
        let seed = read()?;
        self.0.set(Some(seed));
        Some(seed)
    }
}
