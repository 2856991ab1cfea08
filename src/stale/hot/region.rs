//! The hot zone's memory: a region of its own (a memfd, or anonymous shared memory), mapped
//! by the master before the workers fork, with nginx's small zone of the same name for the
//! mutex; its initialisation and its hand-over across reloads; locked access to the table.

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, NGX_LOG_DEBUG, NGX_LOG_NOTICE,
    NGX_LOG_WARN,
};

use crate::hotcache::{fingerprint, HotError, HotTable};
use crate::nginx::process::owner_alive;
use crate::nginx::util::{str_bytes, worker_pid, ERROR, OK};
use crate::nginx::{random, shm};

/// `stale_cache_hot_zone NAME SIZE`.
///
/// The table lives in a region of SIZE bytes of its own: a memfd mapped shared before the
/// workers fork (so a response can be sent from it with sendfile, like a file of
/// proxy_cache), or anonymous shared memory where memfd is not available. nginx's zone of
/// the same name is small: it gives the mutex, and across reloads it hands the region
/// (`Mapping`) from one configuration to the next. Each configuration keeps its own copy of
/// the `Mapping` (in `region`, process memory its workers inherit), so a reload that maps a
/// new region never changes what the old workers use.
pub struct HotZone {
    pub name: Vec<u8>,
    pub shm: *mut ngx_shm_zone_t,
    /// The region's size (SIZE).
    pub size: usize,
    /// The table's fingerprint seed, read once per worker.
    seed: crate::nginx::shm::SeedCache,
    /// This process's owner record for pins (`None`: not claimed yet; `Some(None)`: none
    /// free, serve by copying), with the pid it was claimed under.
    owner: Cell<Option<(u32, Option<usize>)>>,
    /// This configuration's region, set by `init_hot_zone` in the master before fork.
    region: Cell<Option<Mapping>>,
    /// `stale_cache_local_zone` (or its default), not the hot tier's.
    pub local: bool,
}

/// Where a region is (same address in the master and every worker). The copy in nginx's
/// zone is only read by the master, to hand the region to the next configuration.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Mapping {
    magic: u64,
    pub(super) region: *mut u8,
    len: usize,
    /// The memfd, or -1 (anonymous memory: no sendfile).
    pub(super) fd: i32,
    /// Bodies may be sent from the file: its blocks are pages that can be detached alone.
    sendfile: bool,
}

const MAPPING_MAGIC: u64 = u64::from_le_bytes(*b"SWRHOTMP");
/// nginx's own zone: the slab pool and the `Mapping`.
pub fn nginx_zone_size() -> usize {
    // SAFETY: read-only global set at startup.
    8 * unsafe { ngx::ffi::ngx_pagesize }
}

impl HotZone {
    pub fn new(name: Vec<u8>, shm: *mut ngx_shm_zone_t, size: usize) -> Self {
        HotZone {
            name,
            shm,
            size,
            seed: Default::default(),
            owner: Cell::new(None),
            region: Cell::new(None),
            local: false,
        }
    }

    pub(super) fn fingerprint(&self, key: &[u8]) -> Option<u64> {
        let seed = self.seed.get(|| self.with_table(|t| t.seed()))?;
        Some(fingerprint(seed, key))
    }

    /// Runs `f` on the table and `key`'s fingerprint under the zone's mutex; `None` before
    /// the zone is mapped or when it is unusable (the caller goes on without the hot tier).
    pub(super) fn with_key<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&mut HotTable, u64) -> R,
    ) -> Option<R> {
        let fp = self.fingerprint(key)?;
        self.with_table(|t| f(t, fp))
    }

    /// This configuration's region, once the zone is initialised.
    pub(super) fn mapping(&self) -> Option<Mapping> {
        self.region.get()
    }

    /// Runs `f` on the table with the zone's mutex held. A table a dead worker left
    /// half-updated is emptied first (logged).
    pub(super) fn with_table<R>(&self, f: impl FnOnce(&mut HotTable) -> R) -> Option<R> {
        let m = self.mapping()?;
        // SAFETY: `shm` is the zone nginx made for this configuration, which outlives it.
        let zone = unsafe { &*self.shm };
        let run = || {
            // SAFETY: the region stays mapped for the process's life and the mutex
            // `with_table` holds makes this process its only writer while this runs; the
            // slice is dropped before the unlock. (Responses being sent read pinned blocks,
            // which no writer touches.)
            let slice = unsafe { core::slice::from_raw_parts_mut(m.region, m.len) };
            match HotTable::attach(slice) {
                Ok(mut t) => (Some(f(&mut t)), None),
                Err(why @ HotError::Damaged(_)) => match HotTable::rebuild(slice) {
                    Ok(mut t) => (Some(f(&mut t)), Some(why)),
                    Err(_) => (None, Some(why)),
                },
                Err(_) => (None, None),
            }
        };
        shm::with_table(zone, run, |log, why| {
            ngx::ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "stale_cache: hot zone \"{}\" was {}, probably by a worker that died while \
                 writing it; emptied it (Redis still has every entry)",
                String::from_utf8_lossy(&self.name),
                why
            );
        })
    }

    /// The table's counters (for `stale_cache_metrics`).
    pub fn stats(&self) -> Option<crate::hotcache::HotStats> {
        self.with_table(|t| t.stats())
    }

    /// This process's owner record, claimed on first use (a record of a process that is
    /// gone is taken over, and its pins dropped).
    pub(super) fn owner(&self, t: &mut HotTable) -> Option<(u32, usize)> {
        let pid = worker_pid() as u32;
        match self.owner.get() {
            Some((claimed_by, owner)) if claimed_by == pid => owner.map(|o| (pid, o)),
            _ => {
                // SAFETY: read-only global of this process.
                let slot = unsafe { ngx::ffi::ngx_process_slot }.max(0) as usize;
                // A new process: drop what processes that died (kill -9) still pinned.
                t.release_dead_owners(owner_alive);
                let owner = t.claim_owner(slot, pid, owner_alive);
                self.owner.set(Some((pid, owner)));
                owner.map(|o| (pid, o))
            }
        }
    }
}

/// Maps a region of `len` bytes: a memfd (sendfile can read it) or anonymous shared memory.
fn map_region(len: usize, log: *mut ngx::ffi::ngx_log_t) -> Option<(*mut u8, i32)> {
    // SAFETY: a NUL-terminated name; the descriptor is closed on exec (a binary upgrade maps
    // its own).
    let fd = unsafe { libc::memfd_create(c"nginx-stale-cache-hot".as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: a descriptor this function owns.
    if fd >= 0 && unsafe { libc::ftruncate(fd, len as libc::off_t) } == 0 {
        // SAFETY: maps the whole file, shared, for reading and writing.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr != libc::MAP_FAILED {
            return Some((addr as *mut u8, fd));
        }
    }
    let why = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: the descriptor opened above, unused.
        unsafe { libc::close(fd) };
    }
    ngx::ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "stale_cache: hot zone: no memfd ({}); responses are sent from anonymous shared \
         memory, without sendfile",
        why
    );
    // SAFETY: anonymous shared memory, inherited by the workers.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (addr != libc::MAP_FAILED).then_some((addr as *mut u8, -1))
}

/// Whether a stretch of the region can be sent from its file (see `Mapping::sendfile`).
pub(super) fn file_backed(m: &Mapping) -> bool {
    m.fd >= 0 && m.sendfile
}

/// Whether blocks of the region's file can be detached one by one: pages are BLOCK_SIZE
/// (elsewhere a block's page is shared), huge pages are off for it, and punching a hole works.
fn can_detach_blocks(region: *mut u8, len: usize, fd: i32) -> bool {
    // SAFETY: read-only global set at startup.
    if fd < 0 || unsafe { ngx::ffi::ngx_pagesize } != crate::hotcache::BLOCK_SIZE {
        return false;
    }
    // SAFETY: the region just mapped: asks the kernel for normal pages only (a hole punched
    // inside a huge page could be zeroed in place instead of detached).
    let advised = unsafe { libc::madvise(region as *mut c_void, len, libc::MADV_NOHUGEPAGE) };
    // SAFETY: a hole at the end of the region's own file, unused yet.
    let punched = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (len - crate::hotcache::BLOCK_SIZE) as libc::off_t,
            crate::hotcache::BLOCK_SIZE as libc::off_t,
        )
    };
    advised == 0 && punched == 0
}

/// Detaches the pages of a stretch about to be rewritten from the file: data the kernel
/// still sends from them (sendfile) keeps the old pages, the new bytes get new ones.
pub(super) fn detach_pages(m: &Mapping, at: usize, len: usize) {
    if file_backed(m) {
        // SAFETY: a range of the region's own file; only pages no pin holds are punched.
        unsafe {
            libc::fallocate(
                m.fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                len as libc::off_t,
            )
        };
    }
}

/// nginx's zone initialiser: maps the region and lays out an empty table, or keeps (after a
/// full check) the region of the same zone across a reload.
pub unsafe extern "C" fn init_hot_zone(
    shm_zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
) -> ngx_int_t {
    // SAFETY: nginx passes the zone being initialised (in the master, before workers start).
    let zone = unsafe { &mut *shm_zone };
    let name = String::from_utf8_lossy(str_bytes(&zone.shm.name)).into_owned();
    // SAFETY: the configuration set `data` to its HotZone, which lives as long as the cycle.
    let Some(conf) = (unsafe { (zone.data as *const HotZone).as_ref() }) else {
        return ERROR;
    };
    let size = conf.size;
    // SAFETY: on reuse nginx maps the old zone at `shm.addr` with its slab pool; a new zone
    // has a fresh pool there.
    let pool = unsafe { &mut *(zone.shm.addr as *mut ngx_slab_pool_t) };
    let old = if !data.is_null() {
        data as *mut Mapping
    } else if zone.shm.exists != 0 {
        pool.data as *mut Mapping
    } else {
        ptr::null_mut()
    };
    // SAFETY: a reused zone's data is the Mapping this function wrote for the last cycle.
    if let Some(m) = unsafe { old.as_ref() }.filter(|m| m.magic == MAPPING_MAGIC) {
        if m.len == size {
            // The old cycle's workers still use the table: it is checked under their mutex.
            let outcome = shm::locked(zone, || {
                // SAFETY: the region the master mapped for the last cycle, still mapped; the
                // mutex is held, and the slice is dropped before the unlock.
                let slice = unsafe { core::slice::from_raw_parts_mut(m.region, m.len) };
                match HotTable::attach(slice).and_then(|t| t.verify()) {
                    Ok(()) => Ok(None),
                    Err(why) => HotTable::rebuild(slice).map(|_| Some(why)),
                }
            });
            if let Ok(Some(why)) = outcome {
                ngx::ngx_log_error!(
                    NGX_LOG_NOTICE,
                    zone.shm.log,
                    "stale_cache: hot zone \"{}\" failed its check on reload ({}); emptied it",
                    name,
                    why
                );
            }
            if outcome.is_ok() {
                conf.region.set(Some(*m));
                zone.data = m as *const Mapping as *mut c_void;
                return OK;
            }
        }
        // Another size: a new region, with a Mapping of its own, for the new cycle. The old
        // one stays as it is: the old cycle's workers keep sending from it until they exit,
        // and the old cycle stays the running one if this reload fails. The master keeps its
        // mapping until it exits.
        ngx::ngx_log_error!(
            NGX_LOG_NOTICE,
            zone.shm.log,
            "stale_cache: hot zone \"{}\" resized to {} bytes: starting empty (the old \
             size's memory is given back when nginx restarts)",
            name,
            size
        );
    }
    // SAFETY: the slab pool of the zone (it locks its mutex for the allocation).
    let m = unsafe { ngx_slab_alloc(pool, core::mem::size_of::<Mapping>()) } as *mut Mapping;
    // SAFETY: a fresh allocation for one Mapping, or null.
    let Some(m) = (unsafe { m.as_mut() }) else {
        return ERROR;
    };
    let rc = new_region(zone, conf, m, size, &name);
    if rc == OK {
        pool.data = m as *mut Mapping as *mut c_void;
    }
    rc
}

/// Maps a new region of `size` bytes, lays out an empty table and records it in `m` and in
/// the configuration's `HotZone`.
fn new_region(
    zone: &mut ngx_shm_zone_t,
    conf: &HotZone,
    m: &mut Mapping,
    size: usize,
    name: &str,
) -> ngx_int_t {
    let Some((region, fd)) = map_region(size, zone.shm.log) else {
        return ERROR;
    };
    // SAFETY: the mapping just made, `size` bytes, not shared with any worker yet.
    let slice = unsafe { core::slice::from_raw_parts_mut(region, size) };
    let Ok(table) = HotTable::init(slice, random::u64()) else {
        return ERROR;
    };
    let blocks = table.stats().blocks;
    let sendfile = can_detach_blocks(region, size, fd);
    *m = Mapping {
        magic: MAPPING_MAGIC,
        region,
        len: size,
        fd,
        sendfile,
    };
    conf.region.set(Some(*m));
    zone.data = m as *mut Mapping as *mut c_void;
    // The local zone is there by default: its line is for the curious (debug).
    ngx::ngx_log_error!(
        if conf.local {
            NGX_LOG_DEBUG
        } else {
            NGX_LOG_NOTICE
        },
        zone.shm.log,
        "stale_cache: {} zone \"{}\": {} blocks of {} bytes ({} KiB of responses){}",
        if conf.local { "local" } else { "hot" },
        name,
        blocks,
        crate::hotcache::BLOCK_SIZE,
        blocks as usize * crate::hotcache::BLOCK_SIZE / 1024,
        match (fd >= 0, sendfile) {
            (true, true) => ", in a memfd",
            (true, false) => ", in a memfd (bodies written, not sendfile'd: pages are not 4 KiB)",
            _ => "",
        }
    );
    OK
}

/// The zone where copies are kept while Redis is away: the hot zone when there is one,
/// else the local zone (`stale_cache_local_zone`, on by default).
pub fn local_zone(r: &ngx::ffi::ngx_http_request_t) -> Option<&HotZone> {
    let mcf = crate::stale::main_conf(r);
    mcf.hot.as_ref().or(mcf.local.as_ref())
}
