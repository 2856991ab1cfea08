//! One `RequestState` per main request: its phase and what it holds, with every transition
//! a method here (its fields are private).
//!
//! The phase carries the values that only mean something in it (`crate::phase::Stage`): the
//! fill lock (`Filling`, and the lease phases before a fill), the refresh lock and slot
//! (`LeaseRefreshAsk`), the prepared refresh (`Persisting`, `Refreshing`), the wait and its
//! event (`Waiting`, `Refetching`). A transition moves them on or drops them; dropped, each
//! releases itself as abandoned (its `Drop`).
//!
//! The state hangs off one of the request pool's cleanups (its memory is reused from the
//! worker's ended requests): it survives internal redirects (which clear module contexts),
//! and its end (`driver::end_of_request`) runs however the request ends (finished, failed,
//! abandoned by its client), before nginx frees the pool's memory. What it holds is released
//! by dropping it: locks (`waiters::HeldLock`), the refresh slot and a prepared
//! refresh, the lease's poll timer, the wait.
//!
//! Borrowing rule: each nginx callback that works on the state (a phase handler, the end of a
//! lookup subrequest, the wake-up event, the end of a body read) turns the pointer into one
//! `&mut RequestState` for its own duration, and nothing it calls re-enters another such
//! callback for the same request: the body read that completes at once is noticed by a flag
//! (see `driver`), wake-ups are posted events, and lookups are subrequests that run later.
//! Variable handlers, which nginx may call while a step runs, only copy fields out through
//! `peek`.

use core::ffi::c_void;
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ptr::{self, NonNull};

use ngx::ffi::{ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_pool_cleanup_add};
use ngx::http::HttpModule;

use super::hot::request::Hot;
use super::lease::RequestLease;
use super::lookup::Capture;
use super::refresh::{PendingRefresh, Slot};
use super::waiters::{start_waiting, HeldLock, Wait, WaitEnd};
use crate::collapse::StoreOutcome;
use crate::flow::Reached;
use crate::locktable::Forgotten;
use crate::nginx::zone::ZoneRef;
use crate::policy::CacheStatus;
use crate::settings::Settings;
use crate::stale::StaleCacheModule;

mod raw;
pub use raw::{peek, with_variant_suffix};

const STATE_MAGIC: u64 = u64::from_le_bytes(*b"stalecac");

pub use crate::phase::Phase;

/// The request's phase with what it holds there (`crate::phase`): the fill lock, the refresh
/// lock and slot while the lease is asked (boxed: only stale hits have them), the prepared
/// refresh (boxed) until it is sent, the wait of a parked request (boxed: its event must not
/// move while nginx holds it, and fresh hits do not pay for it).
type Stage = crate::phase::Stage<HeldLock, Box<RefreshHold>, Box<PendingRefresh>, Box<Wait>>;

/// What the driver does after a step.
pub enum Next {
    /// Run the step of the phase the request is in now.
    Continue,
    /// Return this code from the phase handler.
    Return(ngx_int_t),
}

/// What a stale hit holds while its refresh is prepared: the key's refresh lock, one of the
/// worker's refresh slots, and whether the stale copy needs a PERSIST (or EXPIRE) to outlive
/// the refresh.
pub struct RefreshHold {
    pub lock: HeldLock,
    pub slot: Slot,
    pub persist: bool,
}

/// A purge request's progress (`purge`).
pub struct Purge {
    pub key: Vec<u8>,
    pub zone: Option<ZoneRef>,
    pub forgotten: Forgotten,
    pub answered: bool,
}

/// Everything the layer keeps for one main request.
pub struct RequestState {
    /// Identifies a RequestState behind a pool cleanup.
    magic: u64,
    r: *mut ngx_http_request_t,
    /// Dropped by hand (`Drop`): most requests end holding nothing, and the check is
    /// cheaper than the stage's drop code on every fresh hit.
    stage: ManuallyDrop<Stage>,
    status: Option<CacheStatus>,
    /// The request carries this nginx's refresh secret.
    is_refresh: bool,
    /// ... and is a fleet lease operation (renew, release, pass), not a refresh.
    lease_op: bool,
    /// The `$cache_*` settings, read once, at the first step.
    settings: Option<Settings>,
    /// The zone `$cache_lock` names, once known.
    zone: Option<ZoneRef>,
    /// When the request started asking (a fill finished since then serves it).
    lookup_started: u64,
    /// The lookup subrequest under way or last answered.
    capture: Capture,
    /// The TTL Redis answered.
    ttl: i64,
    /// How the request came to ask for the fill lock (lookup, grace band, wait, srcache miss).
    reached: Reached,
    /// When this request stops waiting for fills, whatever happens (0: not waiting yet).
    wait_deadline: u64,
    /// When a wake-up last resumed this request (precise clock; 0: never woken).
    resumed_ms: u64,
    /// For `$stale_cache_wake_delay`: from the fill's store to this request resuming.
    wake_delay_ms: Option<u64>,
    /// The status of srcache's store subrequest, if one ran (`filters`).
    store_status: Option<usize>,
    /// srcache's fetch answered an entry from Redis (200, not the hot tier's answer): srcache
    /// sends it from the cache and stores nothing (`filters`).
    fetch_found: bool,
    /// srcache's fetch subrequest of this round (`hot::subrequest`; its struct lives in the
    /// main request's pool): how it ended tells a failed fetch from a miss (`entry_gone`).
    fetch_request: *const ngx_http_request_t,
    /// The request was sent through its location again to let srcache fetch the entry a
    /// fill just stored; it happens once.
    refetched: bool,
    /// The fleet lease (`$cache_lease`): asked, polled, taken.
    lease: RequestLease,
    /// For `$stale_cache_rfc9211`: seconds of freshness left (negative: stale), when known.
    ttl_left: Option<i64>,
    /// A purge request's progress; `None` for every other request. (Boxed: every request's
    /// state is allocated from its pool.)
    purge: Option<Box<Purge>>,
    /// The hot tier's plan for this request (`hot`).
    hot: Hot,
    /// `stale_cache_http`: the looked-up entry's age, for `$stale_cache_http_age`.
    entry_age: Option<u64>,
    /// `stale_cache_http`: the conditional headers a refresh in the grace band sends.
    validators: Vec<(Vec<u8>, Vec<u8>)>,
    /// `stale_cache_http`: this request's variant once its URL is known to vary
    /// (`$stale_cache_http_variant`).
    variant: Option<crate::http::vary::Variant>,
    /// `stale_cache_http`: the keys this request's invalidation deletes (`invalidation`).
    invalidated: Vec<Vec<u8>>,
}

impl RequestState {
    fn new(r: *mut ngx_http_request_t) -> Self {
        RequestState {
            magic: STATE_MAGIC,
            r,
            stage: ManuallyDrop::new(Stage::Start),
            status: None,
            is_refresh: false,
            lease_op: false,
            settings: None,
            zone: None,
            lookup_started: 0,
            capture: Capture::default(),
            ttl: 0,
            reached: Reached::WaitedWithoutLookup,
            wait_deadline: 0,
            resumed_ms: 0,
            wake_delay_ms: None,
            store_status: None,
            fetch_found: false,
            fetch_request: core::ptr::null(),
            refetched: false,
            lease: Default::default(),
            ttl_left: None,
            purge: None,
            hot: Default::default(),
            entry_age: None,
            validators: Vec::new(),
            variant: None,
            invalidated: Vec::new(),
        }
    }

    /* ---- reading */

    pub fn request(&self) -> *mut ngx_http_request_t {
        self.r
    }

    #[inline]
    pub fn phase(&self) -> Phase {
        self.stage.phase()
    }

    pub fn status(&self) -> Option<CacheStatus> {
        self.status
    }

    pub fn is_refresh(&self) -> bool {
        self.is_refresh
    }

    /// The parsed settings; every step after `Start` has them.
    pub fn settings(&self) -> &Settings {
        self.settings
            .as_ref()
            .expect("settings are parsed before any lookup")
    }

    pub fn settings_if_read(&self) -> Option<&Settings> {
        self.settings.as_ref()
    }

    pub fn zone(&self) -> Option<ZoneRef> {
        self.zone
    }

    pub fn lookup_started(&self) -> u64 {
        self.lookup_started
    }

    pub fn invalidated(&self) -> &[Vec<u8>] {
        &self.invalidated
    }

    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    pub fn reached(&self) -> Reached {
        self.reached
    }

    pub fn in_grace(&self) -> bool {
        self.reached == Reached::Lookup { grace: true }
    }

    /// srcache's fetch has answered (and missed): the steps now run in PRECONTENT.
    pub fn after_fetch(&self) -> bool {
        self.reached == Reached::SrcacheMissed
    }

    pub fn refetched(&self) -> bool {
        self.refetched
    }

    /// The fill lock, while filling or asking the lease for the fill.
    pub fn fill_lock(&self) -> Option<&HeldLock> {
        self.stage.fill_lock()
    }

    /// The refresh lock, while the lease is asked for the refresh.
    pub fn refresh_lock(&self) -> Option<&HeldLock> {
        self.stage.refresh_hold().map(|h| &h.lock)
    }

    /// Parked (waiting, or a refetch posted): only its own event moves it on.
    pub fn wait_in_progress(&self) -> bool {
        self.stage.wait().is_some_and(|w| w.in_progress())
    }

    /// The last wait ran out of time (`$cache_lock_timeout`).
    pub fn wait_timed_out(&self) -> bool {
        self.stage
            .wait()
            .is_some_and(|w| w.ended == WaitEnd::TimedOut)
    }

    /// When this request stops waiting for fills (0: it has not waited).
    pub fn wait_deadline_ms(&self) -> u64 {
        self.wait_deadline
    }

    /// When a wake-up last resumed this request (0: never woken).
    pub fn resumed_ms(&self) -> u64 {
        self.resumed_ms
    }

    pub fn wake_delay_ms(&self) -> Option<u64> {
        self.wake_delay_ms
    }

    /// What srcache's store subrequest did with this request's response (final once the
    /// request ends: the store runs after the response's last byte).
    pub fn store_outcome(&self) -> StoreOutcome {
        StoreOutcome::of(self.store_status, self.fetch_found)
    }

    pub fn lease(&self) -> &RequestLease {
        &self.lease
    }

    pub fn purge(&self) -> Option<&Purge> {
        self.purge.as_deref()
    }

    pub fn is_purge(&self) -> bool {
        self.purge.is_some()
    }

    /* ---- parts the rooms work on */

    pub fn capture_mut(&mut self) -> &mut Capture {
        &mut self.capture
    }

    pub fn lease_mut(&mut self) -> &mut RequestLease {
        &mut self.lease
    }

    /// The lease and the capture its subrequests answer into, together.
    pub fn lease_and_capture(&mut self) -> (&mut RequestLease, &mut Capture, &Settings) {
        let settings = self
            .settings
            .as_ref()
            .expect("settings are parsed before the lease");
        (&mut self.lease, &mut self.capture, settings)
    }

    pub fn purge_mut(&mut self) -> Option<&mut Purge> {
        self.purge.as_deref_mut()
    }

    pub fn hot_mut(&mut self) -> &mut Hot {
        &mut self.hot
    }

    /* ---- transitions */

    /// Ends the layer's work on the request with `status` (see `done`).
    #[inline]
    pub fn finish(&mut self, status: CacheStatus) {
        self.status = Some(status);
        self.stage.done();
    }

    /// Ends the layer's work on the request: a fill lock it holds goes to the backend with
    /// it, a prepared refresh is sent at the next step (`crate::phase::Stage::done`).
    pub fn done(&mut self) {
        self.stage.done();
    }

    /// Reports `status` without ending the layer's work (a request waiting, or passed).
    pub fn set_status(&mut self, status: CacheStatus) {
        self.status = Some(status);
    }

    /// The TTL (or another) lookup subrequest was sent: its answer moves the request on.
    pub fn looking_up(&mut self) {
        *self.stage = Stage::LookingUp;
    }

    /// The body is being read, before any lock is taken.
    pub fn reading_body(&mut self) {
        *self.stage = Stage::ReadingBody;
    }

    /// Parks the request behind the fill lock's `holder` for at most `budget` ms
    /// (`waiters::start_waiting`); a request woken before waits with the same `Wait`.
    pub fn wait_for_fill(
        &mut self,
        req: &mut ngx_http_request_t,
        zone: ZoneRef,
        holder: u64,
        budget: u64,
    ) {
        let mut wait = self
            .stage
            .take_wait()
            .unwrap_or_else(|| Box::new(Wait::new()));
        let key = &self.settings().key;
        start_waiting(&mut wait, req, zone, key, holder, budget);
        *self.stage = Stage::Waiting { wait };
    }

    /// The wake-up (or the timeout) ran: what it noted is kept past the wait.
    pub fn note_wake(&mut self) {
        if let Some(at) = self.stage.wait().map(|w| w.resumed_ms) {
            if at != 0 {
                self.resumed_ms = at;
            }
        }
    }

    /// Sends the request through its location again from a posted event (`handler`), so
    /// no phase handler is re-entered; the layer is done with it meanwhile.
    pub fn post_refetch(&mut self, handler: unsafe extern "C" fn(*mut ngx_event_t)) {
        let mut wait = Box::new(Wait::new());
        wait.post(self.r, handler);
        // (No lock is held here: the refetch follows a fill of another request.)
        *self.stage = Stage::Refetching { wait };
    }

    /// The fill lock is taken: the request goes to the backend with it (`finish` with MISS
    /// follows).
    pub fn filling(&mut self, lock: HeldLock) {
        *self.stage = Stage::Filling { lock };
    }

    /// The fleet lease is asked before the fill whose lock this request holds.
    pub fn lease_for_fill(&mut self, lock: HeldLock) {
        *self.stage = Stage::LeaseForFill { lock };
    }

    /// The fleet lease is asked before the refresh whose lock and slot this request holds.
    pub fn lease_for_refresh(&mut self, hold: RefreshHold) {
        *self.stage = Stage::LeaseForRefresh {
            hold: Box::new(hold),
        };
    }

    /// Another node fills under the lease: this request polls it, keeping its fill lock.
    pub fn poll_lease(&mut self) {
        self.stage.poll_lease();
    }

    /// The lease is asked again (a poll), the fill lock still held.
    pub fn ask_lease_again(&mut self) {
        self.stage.ask_lease_again();
    }

    /// A lease operation request waits for the lease location's answer.
    pub fn lease_op(&mut self) {
        *self.stage = Stage::LeaseOp;
    }

    /// The refresh is prepared; the stale copy's EXPIRE was sent and is waited for.
    pub fn persisting(&mut self, refresh: PendingRefresh) {
        *self.stage = Stage::Persisting {
            refresh: Box::new(refresh),
        };
    }

    /// The refresh is prepared: the layer is done, the refresh is sent at the next step.
    pub fn refreshing(&mut self, refresh: PendingRefresh) {
        *self.stage = Stage::Refreshing {
            refresh: Box::new(refresh),
        };
    }

    /// The PERSIST/EXPIRE answered: the refresh is sent at the next step.
    pub fn persisted(&mut self) {
        self.stage.persisted();
    }

    pub fn mark_refresh(&mut self) {
        self.is_refresh = true;
    }

    /// The refresh-authenticated request is a lease operation: nothing of it is stored.
    pub fn mark_lease_op(&mut self) {
        self.lease_op = true;
    }

    /// The body being read is whole (`Phase::BodyRead`).
    pub fn body_is_read(&mut self) {
        self.stage.body_read();
    }

    /// The zone the settings name, as the request starts asking at `now`.
    pub fn begin(&mut self, zone: ZoneRef, now: u64) {
        self.zone = Some(zone);
        self.lookup_started = now;
    }

    /// The `$cache_*` settings, read once, at the first step.
    pub fn set_invalidated(&mut self, keys: Vec<Vec<u8>>) {
        self.invalidated = keys;
    }

    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = Some(settings);
    }

    /// The TTL lookup answered `ttl` (`grace`: the key is in its error grace band).
    pub fn looked_up(&mut self, ttl: i64, ttl_left: Option<i64>) {
        self.ttl = ttl;
        self.ttl_left = ttl_left;
        self.reached = Reached::Lookup { grace: false };
    }

    /// `stale_cache_http`: the looked-up entry's age (RFC 9111 4.2.3).
    pub fn set_entry_age(&mut self, age: Option<u64>) {
        self.entry_age = age;
    }

    pub fn set_validators(&mut self, v: Vec<(Vec<u8>, Vec<u8>)>) {
        self.validators = v;
    }

    pub fn validators(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.validators
    }

    pub fn set_variant(&mut self, v: Option<crate::http::vary::Variant>) {
        self.variant = v;
    }

    pub fn variant(&self) -> Option<&crate::http::vary::Variant> {
        self.variant.as_ref()
    }

    pub fn entered_grace(&mut self) {
        self.reached = Reached::Lookup { grace: true };
    }

    pub fn set_ttl_left(&mut self, left: Option<i64>) {
        self.ttl_left = left;
    }

    /// srcache missed an expected entry: collapse from PRECONTENT, reported GONE meanwhile.
    /// (Only requests the layer let through expecting an entry get here: none holds a lock.)
    pub fn srcache_missed(&mut self, now: u64) {
        self.reached = Reached::SrcacheMissed;
        self.lookup_started = now;
        self.status = Some(CacheStatus::Gone);
        *self.stage = Stage::Missed;
    }

    /// One budget for all the waits of this request, however often it is woken.
    pub fn wait_deadline(&mut self, from_now: u64, budget: u64) -> u64 {
        if self.wait_deadline == 0 {
            self.wait_deadline = from_now + budget;
        }
        self.wait_deadline
    }

    pub fn set_wake_delay(&mut self, ms: Option<u64>) {
        self.wake_delay_ms = ms;
    }

    /// The hot tier's part of the state and the cache key (once read), borrowed together.
    pub fn hot_and_key(&mut self) -> (&mut Hot, Option<&[u8]>) {
        (
            &mut self.hot,
            self.settings.as_ref().map(|s| s.key.as_slice()),
        )
    }

    /// Notes srcache's fetch subrequest of this round (PREACCESS of the subrequest).
    pub fn note_fetch_request(&mut self, sr: &ngx_http_request_t) {
        self.fetch_request = sr;
    }

    /// srcache's fetch subrequest of this round, once it ran.
    pub fn fetch_request(&self) -> Option<&ngx_http_request_t> {
        // SAFETY: a subrequest's struct is allocated from its main request's pool, which
        // outlives the main request's state (freed by a cleanup of that pool).
        unsafe { self.fetch_request.as_ref() }
    }

    pub fn set_refetched(&mut self) {
        self.refetched = true;
    }

    /// The fill lock, to complete it with its outcome (the layer is then done).
    pub fn give_up_fill(&mut self) -> Option<HeldLock> {
        self.stage.take_fill()
    }

    /// The refresh lock and slot, to prepare the refresh or hand the lock over (the layer
    /// is then done).
    pub fn take_refresh_hold(&mut self) -> Option<RefreshHold> {
        self.stage.take_refresh_hold().map(|hold| *hold)
    }

    /// The prepared refresh, to send now (the layer is then done).
    pub fn take_refresh(&mut self) -> Option<PendingRefresh> {
        self.stage.take_refresh().map(|pending| *pending)
    }

    pub fn set_purge(&mut self, purge: Purge) {
        self.purge = Some(Box::new(purge));
    }

    /// What is left of the request when it ends: its fill lock and its unsent refresh; a
    /// wait stops now (the rest is released when the state is dropped).
    pub fn take_end(&mut self) -> (Option<HeldLock>, Option<Box<PendingRefresh>>) {
        // Boxed still: moving an unboxed `Option<PendingRefresh>` out costs a copy of the
        // whole struct on every request, `None` or not.
        self.stage.take_end()
    }
}

impl Drop for RequestState {
    fn drop(&mut self) {
        if self.stage.holds_anything() {
            // SAFETY: the stage is dropped once, here, as the state goes; nothing reads it
            // afterwards.
            unsafe { ManuallyDrop::drop(&mut self.stage) };
        }
    }
}

/// What runs when a request with a state ends: the driver's `end_of_request`, set once at
/// configuration (the state is found again by this handler among the pool's cleanups).
pub type EndFn = unsafe extern "C" fn(*mut c_void);

static END_HANDLER: std::sync::OnceLock<EndFn> = std::sync::OnceLock::new();

/// Sets what runs when a request with a state ends (postconfiguration).
pub fn set_end_handler(f: EndFn) {
    let _ = END_HANDLER.set(f);
}

fn end_handler() -> EndFn {
    *END_HANDLER
        .get()
        .expect("the end handler is set at configuration")
}

// Every request that reaches the layer has a state (fresh hits too): cold data is boxed.
// 672 bytes on 64-bit targets before the phases carried their data (520 since); raise this
// deliberately, not by accident.
const _: () = assert!(core::mem::size_of::<RequestState>() <= 672);

/// States of ended requests, kept for the next ones of this worker: a state (about 700
/// bytes) taken from the request's pool made every later allocation of the request walk
/// further through the pool's blocks, which cost more than reusing one.
// Boxes, not the values: a state must not move while its request runs.
#[allow(clippy::vec_box)]
struct Spare(core::cell::UnsafeCell<Vec<Box<MaybeUninit<RequestState>>>>);

// SAFETY: nginx runs every request callback of a worker on its one thread (thread pools run
// only file I/O), so the list is never used from two threads.
unsafe impl Sync for Spare {}

static SPARE: Spare = Spare(core::cell::UnsafeCell::new(Vec::new()));

/// Most spare states kept (a burst's worth; the rest are freed).
const SPARE_MAX: usize = 64;

/// Memory for a state: a spare one, else a new allocation.
fn take_spare() -> Box<MaybeUninit<RequestState>> {
    // SAFETY: one thread (see `Spare`), and no reference to the list outlives this call.
    unsafe { (*SPARE.0.get()).pop() }.unwrap_or_else(Box::new_uninit)
}

/// Keeps a dropped state's memory for the next request, up to SPARE_MAX.
fn give_spare(memory: Box<MaybeUninit<RequestState>>) {
    // SAFETY: as in `take_spare`.
    let spare = unsafe { &mut *SPARE.0.get() };
    if spare.len() < SPARE_MAX {
        spare.push(memory);
    }
}

/// The state of main request `r`, created on first use; `None` if the pool is exhausted.
pub fn attach(r: &mut ngx_http_request_t) -> Option<NonNull<RequestState>> {
    if let Some(state) = find(r) {
        return Some(state);
    }
    let raw = r as *mut ngx_http_request_t;
    // The pool's cleanup record points at the state and drops it (`reclaim`) when the
    // request ends; its memory then goes back to the spare list.
    // SAFETY: the request's pool is live; a record without data of its own.
    let cleanup = unsafe { ngx_pool_cleanup_add(r.pool, 0).as_mut()? };
    let state = Box::into_raw(take_spare()) as *mut RequestState;
    // SAFETY: `state` is an allocation of a RequestState's size and alignment, not in use.
    unsafe { state.write(RequestState::new(raw)) };
    cleanup.data = state as *mut c_void;
    cleanup.handler = Some(end_handler());
    set_ctx(raw, state);
    NonNull::new(state)
}

/// The state of `r`'s main request if it has one (no allocation), also after an internal
/// redirect cleared the module context.
pub fn find(r: &ngx_http_request_t) -> Option<NonNull<RequestState>> {
    // A live request's `main` is its live main request (possibly `r` itself: only raw
    // pointers are used to reach it).
    let main = r.main;
    let index = StaleCacheModule::module().ctx_index;
    // SAFETY: `ctx` has a slot per HTTP module; ours holds null or the state.
    if let Some(state) = NonNull::new(unsafe { *(*main).ctx.add(index) } as *mut RequestState) {
        return Some(state);
    }
    // After an internal redirect the ctx is gone but the cleanup still holds the state.
    let ours = end_handler();
    // SAFETY: the pool's cleanup list is a valid singly linked list of the live pool.
    let mut c = unsafe { (*(*main).pool).cleanup };
    // SAFETY: as above; entries whose handler is ours carry a RequestState, whose magic
    // confirms it.
    while let Some(entry) = unsafe { c.as_ref() } {
        let mine = entry
            .handler
            .is_some_and(|h| core::ptr::fn_addr_eq(h, ours))
            // SAFETY: an entry with our handler carries a RequestState.
            && unsafe { (*(entry.data as *const RequestState)).magic } == STATE_MAGIC;
        if mine {
            let state = entry.data as *mut RequestState;
            set_ctx(main, state);
            return NonNull::new(state);
        }
        c = entry.next;
    }
    None
}

fn set_ctx(main: *mut ngx_http_request_t, state: *mut RequestState) {
    let index = StaleCacheModule::module().ctx_index;
    // SAFETY: `main` is a live main request; `ctx` has a slot per HTTP module, ours
    // included. The slot is pool memory, not part of the request struct.
    unsafe { *(*main).ctx.add(index) = state as *mut c_void };
}

/// The state of an ended request, dropped with this value (its memory kept for the next).
pub struct Ended(NonNull<RequestState>);

impl core::ops::Deref for Ended {
    type Target = RequestState;

    fn deref(&self) -> &RequestState {
        // SAFETY: a live state, owned by this value from `reclaim` on.
        unsafe { self.0.as_ref() }
    }
}

impl core::ops::DerefMut for Ended {
    fn deref_mut(&mut self) -> &mut RequestState {
        // SAFETY: as in `deref`; borrowed mutably through this value.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        // SAFETY: a live state owned by this value, dropped once; the magic is cleared first
        // so that nothing takes the pool's leftover bytes for a state.
        unsafe {
            ptr::addr_of_mut!((*self.0.as_ptr()).magic).write(0);
            ptr::drop_in_place(self.0.as_ptr());
            // The memory `attach` took from `take_spare`, now holding no value.
            give_spare(Box::from_raw(
                self.0.as_ptr() as *mut MaybeUninit<RequestState>
            ));
        }
    }
}

/// Takes over the state of an ended request (the pool cleanup's data), to drop it.
///
/// # Safety
/// `data` must be the state `attach` made, given once, after every callback of the request
/// (and its subrequests) has run, while the pool's memory is still there.
pub unsafe fn reclaim(data: *mut c_void) -> Ended {
    // SAFETY: (caller) the live state `attach` wrote, non-null.
    Ended(unsafe { NonNull::new_unchecked(data as *mut RequestState) })
}
