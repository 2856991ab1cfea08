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

use crate::nginx::bits;
use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_file_t,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_palloc,
    ngx_pcalloc, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_pool_t,
    NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::state::{self, RequestState};
use super::waiters::owner_alive;
use crate::hotcache::{
    blank_line_end, fingerprint, parse_status, HotError, HotTable, Pin, Plan, Stored,
};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, worker_pid, DECLINED, ERROR, OK};
use crate::policy::CacheStatus;
use crate::replay::contains_escaped_key;
use crate::stale::{main_conf, StaleCacheModule};

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
    seed: Cell<Option<u64>>,
    /// This process's owner record for pins (`None`: not claimed yet; `Some(None)`: none
    /// free, serve by copying), with the pid it was claimed under.
    owner: Cell<Option<(u32, Option<usize>)>>,
    /// This configuration's region, set by `init_hot_zone` in the master before fork.
    region: Cell<Option<Mapping>>,
}

/// Where a region is (same address in the master and every worker). The copy in nginx's
/// zone is only read by the master, to hand the region to the next configuration.
#[repr(C)]
#[derive(Clone, Copy)]
struct Mapping {
    magic: u64,
    region: *mut u8,
    len: usize,
    /// The memfd, or -1 (anonymous memory: no sendfile).
    fd: i32,
    /// Bodies may be sent from the file: its blocks are pages that can be detached alone.
    sendfile: bool,
}

const MAPPING_MAGIC: u64 = u64::from_le_bytes(*b"SWRHOTMP");
/// nginx's own zone: the slab pool and the `Mapping`.
pub fn nginx_zone_size() -> usize {
    // SAFETY: read-only global set at startup.
    8 * unsafe { ngx::ffi::ngx_pagesize }
}

/// Bodies from this size on are sent from the zone in place (pinned); smaller ones are
/// copied, which costs less than a pin.
const IN_PLACE_MIN: usize = 8192;
/// Where to look for the end of the stored status line and headers.
const HEADER_SCAN: usize = 16384;
/// Stretches of one response sent in place (a more fragmented copy is copied).
const MAX_RUNS: usize = 64;

impl HotZone {
    pub fn new(name: Vec<u8>, shm: *mut ngx_shm_zone_t, size: usize) -> Self {
        HotZone {
            name,
            shm,
            size,
            seed: Cell::new(None),
            owner: Cell::new(None),
            region: Cell::new(None),
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

    /// This configuration's region, once the zone is initialised.
    fn mapping(&self) -> Option<Mapping> {
        self.region.get()
    }

    /// Runs `f` on the table with the zone's mutex held. A table a dead worker left
    /// half-updated is emptied first (logged).
    fn with_table<R>(&self, f: impl FnOnce(&mut HotTable) -> R) -> Option<R> {
        let m = self.mapping()?;
        // SAFETY: as in `mapping`.
        let zone = unsafe { &*self.shm };
        // SAFETY: `shm.addr` is the start of the mapped zone, where nginx keeps the slab pool
        // whose mutex all workers share; addr_of_mut makes no reference to shared memory.
        let mutex = unsafe { ptr::addr_of_mut!((*(zone.shm.addr as *mut ngx_slab_pool_t)).mutex) };
        // SAFETY: nginx initialised the mutex with the pool; it is released below on every
        // path (nothing in between unwinds: panics abort).
        unsafe { ngx_shmtx_lock(mutex) };
        // SAFETY: the region stays mapped for the process's life and the mutex makes this
        // process its only writer until the unlock below; the slice is dropped before it.
        // (Responses being sent read pinned blocks, which no writer touches.)
        let slice = unsafe { core::slice::from_raw_parts_mut(m.region, m.len) };
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

    /// The table's counters (for `stale_cache_metrics`).
    pub fn stats(&self) -> Option<crate::hotcache::HotStats> {
        self.with_table(|t| t.stats())
    }

    /// This process's owner record, claimed on first use (a record of a process that is
    /// gone is taken over, and its pins dropped).
    fn owner(&self, t: &mut HotTable) -> Option<(u32, usize)> {
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
fn file_backed(m: &Mapping) -> bool {
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
fn detach_pages(m: &Mapping, at: usize, len: usize) {
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
    let mutex = ptr::addr_of_mut!(pool.mutex);
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
            // SAFETY: the old cycle's workers still use the table: check it under their
            // mutex; the slice is dropped before the unlock.
            unsafe { ngx_shmtx_lock(mutex) };
            // SAFETY: the region the master mapped for the last cycle, still mapped; the mutex
            // is held.
            let slice = unsafe { core::slice::from_raw_parts_mut(m.region, m.len) };
            let checked = HotTable::attach(slice).and_then(|t| t.verify());
            let outcome = match checked {
                Ok(()) => Ok(None),
                Err(why) => HotTable::rebuild(slice).map(|_| Some(why)),
            };
            // SAFETY: the mutex locked above.
            unsafe { ngx_shmtx_unlock(mutex) };
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
    let Ok(table) = HotTable::init(slice, random_seed()) else {
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
    ngx::ngx_log_error!(
        NGX_LOG_NOTICE,
        zone.shm.log,
        "stale_cache: hot zone \"{}\": {} blocks of {} bytes ({} KiB of responses){}",
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
    /// What the fetch subrequest answers (its pool): the whole stored response, or for a
    /// response sent in place its status line and headers and the body's first byte.
    pub served: *mut ngx_buf_t,
    /// A response sent in place from the zone.
    pub in_place: Option<InPlace>,
    /// The fetch's output, while filling.
    pub bytes: Vec<u8>,
    /// The fill cannot be used (too large, in a file, ...).
    pub spoiled: bool,
}

/// A response whose body goes out from the zone itself: srcache gets the status line, the
/// headers and a one-byte body (its parsing, headers and status stay srcache's own); this
/// module's filters, first in the chains, then give the response its real length and swap
/// the one byte for the pinned body. Unpinned when the request ends.
pub struct InPlace {
    pin: Pin,
    owner: usize,
    pid: u32,
    /// The body, one buffer per stretch of the zone (main request's pool).
    body: *mut ngx_chain_t,
    body_len: usize,
    /// The stored status, which srcache sets on the main request.
    status: usize,
    /// The header filter gave the response the body's length: the body filter swaps.
    armed: bool,
    /// Another response replaced this one after it was armed (a filter below this module
    /// finalized it: 412, 416, an error page): nothing is swapped.
    replaced: bool,
    swapped: bool,
}

impl Default for Hot {
    fn default() -> Self {
        Hot {
            plan: Plan::Nothing,
            fresh_until: 0,
            fetch: ptr::null_mut(),
            served: ptr::null_mut(),
            in_place: None,
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
    state.hot_mut().plan = plan;
    state.hot_mut().fresh_until = fresh_until;
}

/// The request's state where a hot zone is configured: the filters ask for every response,
/// and without a hot zone they need not look for a state (a walk of the pool's cleanups in
/// locations without the layer).
fn hot_state(r: &ngx_http_request_t) -> Option<core::ptr::NonNull<RequestState>> {
    main_conf(r).hot.as_ref()?;
    state::find(r)
}

/// Whether `r`'s fresh hit is to be answered from the hot zone (decided before srcache's
/// fetch): `$stale_cache_redis_down` then lets srcache fetch, since the answer does not come
/// from Redis. Reads one field (variable handlers may run while a step of the request does).
pub fn will_serve(r: &ngx_http_request_t) -> bool {
    let Some(state) = hot_state(r) else {
        return false;
    };
    // SAFETY: the state is live while its request is; one Copy field is read through the raw
    // pointer, no reference to the state is made.
    unsafe { state::peek_hot_plan(state.as_ptr()) == Plan::Serve }
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
    if bits::header_sent(main) || state.capture().is_record(sr.post_subrequest) {
        return false;
    }
    let Some(settings) = state.settings_if_read() else {
        return false;
    };
    let args = str_bytes(&sr.args);
    if args == settings.key.as_slice() {
        return true;
    }
    contains_escaped_key(args, &settings.key)
}

/// The stretches of a pinned value in the region, as `(offset, len)`.
struct Runs {
    at: [(usize, usize); MAX_RUNS],
    n: usize,
    overflow: bool,
}

impl Runs {
    fn push(&mut self, at: usize, len: usize) {
        if self.n == MAX_RUNS {
            self.overflow = true;
        } else {
            self.at[self.n] = (at, len);
            self.n += 1;
        }
    }
}

/// What the hot tier hands srcache's fetch.
enum Answer {
    /// The whole value, copied into a buffer of the subrequest's pool.
    Copied(usize),
    /// The value pinned in place.
    Pinned(Pin, usize, u32),
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
    if state.hot_mut().plan == Plan::Nothing
        || !state.hot_mut().fetch.is_null()
        || !is_fetch(state, sr)
    {
        return DECLINED;
    }
    state.hot_mut().fetch = sr;
    if state.hot_mut().plan == Plan::Fill {
        return DECLINED;
    }
    // SAFETY: the main request is live while its subrequest runs.
    let main = unsafe { &mut *sr.main };
    let Some(scf) = StaleCacheModule::location_conf(main) else {
        return DECLINED;
    };
    let Some(zone) = main_conf(sr).hot.as_ref() else {
        return DECLINED;
    };
    let (max_age, now) = (scf.hot_max_age_ms(), now_ms());
    let Some(key) = state.settings_if_read().map(|s| s.key.clone()) else {
        return DECLINED;
    };
    let key = key.as_slice();
    let pool = sr.pool;
    let mut buf: *mut ngx_buf_t = ptr::null_mut();
    // In place only while this module's filters come first (they swap the body).
    let in_place_ok = super::filters::filters_first();
    let mut runs = Runs {
        at: [(0, 0); MAX_RUNS],
        n: 0,
        overflow: false,
    };
    let answer = zone
        .with_key(key, |t, fp| {
            let len = t.servable_len(fp, key, now, max_age)?;
            if len >= IN_PLACE_MIN && in_place_ok {
                if let Some((pid, owner)) = zone.owner(t) {
                    let pin = t.pin(owner, pid, fp, key, now, max_age, |at, n| runs.push(at, n));
                    match pin {
                        Some(pin) if !runs.overflow => {
                            return Some(Answer::Pinned(pin, owner, pid))
                        }
                        Some(pin) => t.unpin(owner, pid, &pin),
                        None => {}
                    }
                }
            }
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
            .map(Answer::Copied)
        })
        .flatten();
    let len = match answer {
        None => {
            // Gone or too old since the decision: srcache asks Redis as usual.
            state.hot_mut().plan = Plan::Nothing;
            return DECLINED;
        }
        Some(Answer::Copied(len)) => {
            // SAFETY: the buffer made above, `len` bytes filled.
            unsafe { (*buf).last = (*buf).pos.add(len) };
            len
        }
        Some(Answer::Pinned(pin, owner, pid)) => {
            match in_place(zone, main, sr, pin, owner, pid, &runs) {
                Some((head, in_place)) => {
                    buf = head;
                    state.hot_mut().in_place = Some(in_place);
                    pin.value_len
                }
                None => {
                    zone.with_table(|t| t.unpin(owner, pid, &pin));
                    state.hot_mut().plan = Plan::Nothing;
                    return DECLINED;
                }
            }
        }
    };
    state.hot_mut().served = buf;
    state.set_status(CacheStatus::Hot);
    sr.content_handler = Some(serve_content);
    debug!(
        request_log(sr),
        "stale_cache: \"{}\" answered from the hot tier ({} bytes{})",
        Short(key),
        len,
        if state.hot_mut().in_place.is_some() {
            ", in place"
        } else {
            ""
        }
    );
    DECLINED
}

/// Prepares a pinned value to be sent in place: the buffer srcache's fetch gets (status
/// line, headers, the body's first byte) and the body's buffers for the main request.
/// `None`: not a stored response this can split (the caller unpins and lets Redis answer).
fn in_place(
    zone: &HotZone,
    main: &mut ngx_http_request_t,
    sr: &ngx_http_request_t,
    pin: Pin,
    owner: usize,
    pid: u32,
    runs: &Runs,
) -> Option<(*mut ngx_buf_t, InPlace)> {
    let m = zone.mapping()?;
    let runs = &runs.at[..runs.n];
    // SAFETY: pinned stretches of the mapped region: no writer touches them until unpinned.
    let piece =
        |&(at, len): &(usize, usize)| unsafe { core::slice::from_raw_parts(m.region.add(at), len) };
    // The stored head: status line and headers, up to the blank line.
    let body_at = blank_line_end(runs.iter().map(piece), HEADER_SCAN)?;
    let body_len = pin.value_len.checked_sub(body_at).filter(|&n| n > 0)?;
    // srcache gets the head and the body's first byte (swapped later for the whole body).
    let head_len = body_at + 1;
    // SAFETY: the subrequest's live pool.
    let head = unsafe { ngx_create_temp_buf(sr.pool, head_len) };
    // SAFETY: a non-null temp buffer has `head_len` writable bytes at `pos`.
    let head_bytes = unsafe { core::slice::from_raw_parts_mut(head.as_mut()?.pos, head_len) };
    let mut copied = 0;
    for p in runs.iter().map(piece) {
        let n = p.len().min(head_len - copied);
        head_bytes[copied..copied + n].copy_from_slice(&p[..n]);
        copied += n;
        if copied == head_len {
            break;
        }
    }
    let status = parse_status(head_bytes)?;
    // SAFETY: `head_len` bytes were written at `pos`.
    unsafe { (*head).last = (*head).pos.add(head_len) };
    let body = body_chain(&m, main, runs, body_at)?;
    Some((
        head,
        InPlace {
            pin,
            owner,
            pid,
            body,
            body_len,
            status,
            armed: false,
            replaced: false,
            swapped: false,
        },
    ))
}

/// One buffer per stretch of the body (the value from `skip` on), in the main request's
/// pool, pointing into the region; also in its file where sendfile can read it.
fn body_chain(
    m: &Mapping,
    main: &mut ngx_http_request_t,
    runs: &[(usize, usize)],
    skip: usize,
) -> Option<*mut ngx_chain_t> {
    let pool = main.pool;
    let file = if file_backed(m) {
        // SAFETY: the main request's live pool; zeroed, then the fields sendfile reads.
        let f = unsafe { ngx_pcalloc(pool, core::mem::size_of::<ngx_file_t>()) } as *mut ngx_file_t;
        // SAFETY: a fresh zeroed allocation (or null).
        let fr = unsafe { f.as_mut()? };
        fr.fd = m.fd;
        fr.name = ngx::ngx_string!("stale_cache hot zone");
        // SAFETY: a live request's connection.
        fr.log = unsafe { (*main.connection).log };
        f
    } else {
        ptr::null_mut()
    };
    let mut head: *mut ngx_chain_t = ptr::null_mut();
    let mut tail: *mut *mut ngx_chain_t = &mut head;
    let mut last: *mut ngx_buf_t = ptr::null_mut();
    let mut skip = skip;
    for &(at, len) in runs {
        if skip >= len {
            skip -= len;
            continue;
        }
        let (at, len) = (at + skip, len - skip);
        skip = 0;
        // SAFETY: the main request's live pool.
        let b = unsafe { ngx_pcalloc(pool, core::mem::size_of::<ngx_buf_t>()) } as *mut ngx_buf_t;
        // SAFETY: a fresh zeroed buffer (or null).
        let br = unsafe { b.as_mut()? };
        // SAFETY: pinned bytes of the mapped region, read-only for the buffer's life.
        unsafe {
            br.pos = m.region.add(at);
            br.last = br.pos.add(len);
        }
        br.start = br.pos;
        br.end = br.last;
        br.set_memory(1);
        if !file.is_null() {
            br.set_in_file(1);
            br.file = file;
            br.file_pos = at as i64;
            br.file_last = (at + len) as i64;
        }
        // SAFETY: the main request's live pool.
        let cl = unsafe { ngx_alloc_chain_link(pool) };
        // SAFETY: a fresh chain link (or null).
        let clr = unsafe { cl.as_mut()? };
        clr.buf = b;
        clr.next = ptr::null_mut();
        // SAFETY: `tail` points at `head` or at the previous link's `next`.
        unsafe { *tail = cl };
        tail = &mut clr.next;
        last = b;
    }
    // SAFETY: the last buffer made above (a body has at least one byte).
    unsafe { last.as_mut()? }.set_last_buf(1);
    Some(head)
}

/// The main request's header filter: srcache is sending the in-place response's header
/// with its one-byte body: give it the body's real length.
pub fn main_header(r: &mut ngx_http_request_t) {
    let Some(state) = hot_state(r) else {
        return;
    };
    // SAFETY: filters of the main request run inside srcache's send, no step of this module
    // runs meanwhile; the field borrow ends here.
    let Some(ip) = (unsafe { (*state::hot_ptr(state.as_ptr())).in_place.as_mut() }) else {
        return;
    };
    if ip.armed {
        // A second header: a filter below this one finalized the response with another
        // (not_modified's 412, range's 416, an error page): its body is its own.
        ip.replaced = true;
        return;
    }
    if r.headers_out.content_length_n != 1 || r.headers_out.status != ip.status {
        return;
    }
    r.headers_out.content_length_n = ip.body_len as i64;
    ip.armed = true;
}

/// The main request's body filter: swaps srcache's one-byte body for the body in the zone.
/// Returns the chain to pass on.
///
/// # Safety
/// `chain` must be the valid chain handed to the main request's body filter.
pub unsafe fn main_body(r: &mut ngx_http_request_t, chain: *mut ngx_chain_t) -> *mut ngx_chain_t {
    let Some(state) = hot_state(r) else {
        return chain;
    };
    // SAFETY: as in main_header.
    let Some(ip) = (unsafe { (*state::hot_ptr(state.as_ptr())).in_place.as_mut() }) else {
        return chain;
    };
    if !ip.armed || ip.replaced || ip.swapped || bits::filter_finalize(r) {
        return chain;
    }
    let (mut size, mut last, mut cl) = (0i64, false, chain);
    // SAFETY: (caller) valid links and buffers.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        if let Some(b) = unsafe { link.buf.as_ref() } {
            // SAFETY: as above; memory buffers hold pos..last.
            size += unsafe { b.last.offset_from(b.pos) } as i64;
            last |= b.last_buf() != 0;
        }
        cl = link.next;
    }
    ip.swapped = true;
    if size != 1 || !last {
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_ALERT,
            request_log(r),
            "stale_cache: hot tier: srcache sent {} bytes instead of the one expected; the \
             response is cut short (load ngx_http_stale_cache_module after every other \
             filter module)",
            size
        );
        // The length sent is wrong now: the connection must not carry another response.
        bits::set_keepalive(r, false);
        return chain;
    }
    ip.body
}

/// PRECONTENT: srcache did not send the response from its fetch (a fetch it could not
/// use): the pin is not needed.
pub fn not_served(state: &mut RequestState, req: &ngx_http_request_t) {
    if state
        .hot_mut()
        .in_place
        .as_ref()
        .is_some_and(|ip| !ip.armed)
    {
        release(state, req);
    }
}

/// Ends the request's pin, if any (its end, or srcache not sending it).
pub fn release(state: &mut RequestState, r: &ngx_http_request_t) {
    let Some(ip) = state.hot_mut().in_place.take() else {
        return;
    };
    if let Some(zone) = main_conf(r).hot.as_ref() {
        zone.with_table(|t| t.unpin(ip.owner, ip.pid, &ip.pin));
    }
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
    let buf = unsafe { (*state::hot_ptr(state.as_ptr())).served };
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
    if rc == ERROR || rc > OK || bits::header_only(sr) {
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
    if state.hot_mut().plan != Plan::Fill || !ptr::eq(state.hot_mut().fetch, sr) {
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
            state.hot_mut().spoiled = true;
        } else if !state.hot_mut().spoiled {
            // SAFETY: as above.
            let len = unsafe { b.last.offset_from(b.pos) }.max(0) as usize;
            if state.hot_mut().bytes.len() + len > limit {
                state.hot_mut().spoiled = true;
                state.hot_mut().bytes = Vec::new();
            } else if len > 0 {
                // SAFETY: as above.
                state
                    .hot_mut()
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
    state.hot_mut().plan = Plan::Nothing;
    let bytes = core::mem::take(&mut state.hot_mut().bytes);
    let key = &state.settings().key;
    let Some(zone) = main_conf(sr).hot.as_ref() else {
        return;
    };
    let usable = sr.headers_out.status == 200 && !state.hot().spoiled && !bytes.is_empty();
    let now = now_ms();
    let fresh_until = state.hot().fresh_until;
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
