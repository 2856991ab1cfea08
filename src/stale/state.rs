//! One `RequestState` per main request, and who owns it.
//!
//! The state is a heap allocation owned by a cleanup of the request's pool: it survives
//! internal redirects (which clear module contexts), and its end, `end_of_request`, runs
//! however the request ends (finished, failed, abandoned by its client): locks are released
//! and the refresh is started there.
//!
//! Borrowing rule: each nginx callback that works on the state (a phase handler, the end of a
//! lookup subrequest, the wake-up event, the end of a body read) turns the pointer into one
//! `&mut RequestState` for its own duration, and nothing it calls re-enters another such
//! callback for the same request: the body read that completes at once is noticed by a flag
//! (see `phases`), wake-ups are posted events, and lookups are subrequests that run later.
//! Variable handlers, which nginx may call while a step runs, only copy fields out through
//! `peek`.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use ngx::ffi::{ngx_http_post_subrequest_t, ngx_http_request_t, ngx_pool_cleanup_add};
use ngx::http::HttpModule;

use super::lookup::{lookup_done, Capture};
use super::module::StaleCacheModule;
use super::refresh::{self, PendingRefresh};
use super::waiters::{self, HeldLock, Wait};
use crate::collapse::{fill_end, FillEnd};
use crate::nginx::log::{debug, Short};
use crate::nginx::zone::Zone;
use crate::policy::CacheStatus;
use crate::settings::Settings;

const STATE_MAGIC: u64 = u64::from_le_bytes(*b"stalecac");

/// Where a request stands in the layer's state machine (run by `phases::preaccess_handler`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Not looked at yet.
    Start,
    /// Waiting for the TTL lookup's answer.
    LookingUp,
    /// Holding the refresh lock, reading the body the refresh will replay.
    ReadingBody,
    /// Waiting for the PERSIST of a stale key.
    Persisting,
    /// Waiting for another request's fill.
    Waiting,
    /// srcache missed an entry the layer expected: take the fill lock or wait for its holder.
    Missed,
    /// Dealing with the fleet lease (`super::lease`): asking for it, or polling while
    /// another node fills.
    Lease,
    /// The layer is done with the request: srcache and the backend take over.
    Done,
}

/// Everything the layer keeps for one main request.
pub struct RequestState {
    /// Identifies a RequestState behind a pool cleanup.
    magic: u64,
    pub r: *mut ngx_http_request_t,
    pub phase: Phase,
    pub status: Option<CacheStatus>,
    /// The request carries this nginx's refresh secret.
    pub is_refresh: bool,
    pub settings: Option<Settings>,
    /// The zone `$cache_lock` names, once known.
    pub zone: Option<ZoneRef>,
    pub lookup_started: u64,
    pub capture: Capture,
    pub ttl: i64,
    /// The fill lock this request holds: it goes to the backend for a missing key.
    pub fill: Option<HeldLock>,
    /// The refresh lock, held while the body is read and the refresh is prepared.
    pub refresh_lock: Option<HeldLock>,
    /// This worker's count of refreshes in flight, taken with the refresh lock.
    pub refresh_slot: Option<refresh::Slot>,
    pub persist_pending: bool,
    /// The request body has been read (for the refresh to replay it).
    pub body_read: bool,
    /// The refresh to send once this request is over.
    pub refresh: Option<PendingRefresh>,
    pub wait: Wait,
    /// For `$stale_cache_wake_delay`: from the fill's store to this request resuming.
    pub wake_delay_ms: Option<u64>,
    /// The status of srcache's store subrequest, if one ran (`filters`).
    pub store_status: Option<usize>,
    /// The entry is in its error grace band (`$cache_stale_if_error`).
    pub in_grace: bool,
    /// The TTL lookup answered (a request can also wait for a fill without one).
    pub looked_up: bool,
    /// srcache's fetch has answered (and missed): the steps now run in PRECONTENT.
    pub after_fetch: bool,
    /// The request was sent through its location again to let srcache fetch the entry a
    /// fill just stored; it happens once.
    pub refetched: bool,
    /// The fleet lease (`$cache_lease`): asked, polled, taken.
    pub lease: super::lease::RequestLease,
    /// Passed with every lookup subrequest; `lookup_done` finds the state through it.
    pub post_subrequest: ngx_http_post_subrequest_t,
    /// For `$stale_cache_rfc9211`: seconds of freshness left (negative: stale), when known.
    pub ttl_left: Option<i64>,
    /// A purge request's progress (`purge`); `None` for every other request.
    pub purge: Option<super::purge::Purge>,
    /// The hot tier's plan for this request (`hot`).
    pub hot: super::hot::Hot,
}

impl RequestState {
    fn new(r: *mut ngx_http_request_t) -> Self {
        RequestState {
            magic: STATE_MAGIC,
            r,
            phase: Phase::Start,
            status: None,
            is_refresh: false,
            settings: None,
            zone: None,
            lookup_started: 0,
            capture: Capture::default(),
            ttl: 0,
            fill: None,
            refresh_lock: None,
            refresh_slot: None,
            persist_pending: false,
            body_read: false,
            refresh: None,
            wait: Wait::new(),
            wake_delay_ms: None,
            store_status: None,
            in_grace: false,
            looked_up: false,
            after_fetch: false,
            refetched: false,
            lease: Default::default(),
            post_subrequest: ngx_http_post_subrequest_t {
                handler: Some(lookup_done),
                data: ptr::null_mut(),
            },
            ttl_left: None,
            purge: None,
            hot: Default::default(),
        }
    }

    /// The parsed settings; every step after `Start` has them.
    pub fn settings(&self) -> &Settings {
        self.settings
            .as_ref()
            .expect("settings are parsed before any lookup")
    }

    /// The state whose wait event `ev` is.
    ///
    /// # Safety
    /// `ev` must be the `wait` event of a live RequestState that nothing else borrows (nginx
    /// runs an event's handler when no step of its request runs).
    pub unsafe fn of_wait_event<'a>(ev: *mut ngx::ffi::ngx_event_t) -> &'a mut RequestState {
        let offset = core::mem::offset_of!(RequestState, wait) + Wait::EVENT_OFFSET;
        // SAFETY: (caller) the event sits at this offset inside a live, unborrowed state.
        unsafe { &mut *(ev.byte_sub(offset).cast::<RequestState>()) }
    }

    /// Ends the layer's work on the request with `status`.
    pub fn finish(&mut self, status: CacheStatus) {
        self.status = Some(status);
        self.phase = Phase::Done;
    }

    /* Accessors for the hot tier and the output filters (which do not touch fields). */

    /// Sets the request's status without ending the layer's work.
    pub fn set_status(&mut self, status: CacheStatus) {
        self.status = Some(status);
    }

    /// The hot tier's part of the state.
    pub fn hot_mut(&mut self) -> &mut super::hot::Hot {
        &mut self.hot
    }

    /// The hot tier's part of the state and the cache key (once parsed), borrowed together.
    pub fn hot_and_key(&mut self) -> (&mut super::hot::Hot, Option<&[u8]>) {
        (
            &mut self.hot,
            self.settings.as_ref().map(|s| s.key.as_slice()),
        )
    }

    /// The hot tier's part of the state behind `state`, as a pointer: filters of the main
    /// request and variable handlers may run inside a step that borrows the state, so they
    /// reach only this part (see the borrowing rule above).
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn hot_ptr(state: NonNull<Self>) -> *mut super::hot::Hot {
        // SAFETY: (caller) a live state; no reference to it is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).hot) }
    }

    /// The capture of the lookup behind `state`, as a pointer (see `hot_ptr`).
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn capture_ptr(state: NonNull<Self>) -> *mut Capture {
        // SAFETY: (caller) a live state; no reference to it is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).capture) }
    }

    /// Records the status srcache's store subrequest answered (a fill counts only when
    /// stored); written alone, through the pointer (see `hot_ptr`).
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn note_store(state: NonNull<Self>, status: usize) {
        // SAFETY: (caller) a live state; one field is written, no reference is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).store_status).write(Some(status)) };
    }
}

/// A zone of the main configuration. A copyable handle, so a step can hold it while it
/// changes the request's state; only made from a zone in the configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ZoneRef(NonNull<Zone>);

impl ZoneRef {
    pub fn new(zone: &Zone) -> Self {
        ZoneRef(NonNull::from(zone))
    }

    /// The zone's address, which identifies it among the configured ones.
    pub fn id(self) -> usize {
        self.0.as_ptr() as usize
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

/// The state of main request `r`, created on first use; `None` if the pool is exhausted.
pub fn attach(r: &mut ngx_http_request_t) -> Option<NonNull<RequestState>> {
    if let Some(state) = find(r) {
        return Some(state);
    }
    let raw = r as *mut ngx_http_request_t;
    // SAFETY: the request's pool is live; the cleanup record is zeroed by nginx.
    let cleanup = unsafe { ngx_pool_cleanup_add(r.pool, 0).as_mut()? };
    let state = Box::into_raw(Box::new(RequestState::new(raw)));
    // SAFETY: `state` was just allocated and is not shared yet.
    unsafe { (*state).post_subrequest.data = state as *mut c_void };
    cleanup.handler = Some(end_of_request);
    cleanup.data = state as *mut c_void;
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
    let ours = end_of_request as unsafe extern "C" fn(*mut c_void);
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

/// Copies of the fields variable handlers read, without borrowing the state (a step may hold
/// it while nginx evaluates a variable).
pub struct Peek {
    pub status: Option<CacheStatus>,
    pub is_refresh: bool,
    pub wake_delay_ms: Option<u64>,
    pub ttl_left: Option<i64>,
}

/// What variable handlers and filters may know of `r`'s state.
pub fn peek(r: &ngx_http_request_t) -> Option<Peek> {
    let state = find(r)?.as_ptr();
    // SAFETY: the state is live while its request is; the fields are copied through the raw
    // pointer, no reference to the state is made.
    unsafe {
        Some(Peek {
            status: ptr::addr_of!((*state).status).read(),
            is_refresh: ptr::addr_of!((*state).is_refresh).read(),
            wake_delay_ms: ptr::addr_of!((*state).wake_delay_ms).read(),
            ttl_left: ptr::addr_of!((*state).ttl_left).read(),
        })
    }
}

/// The pool cleanup: the request is over. Stops waiting, releases the locks it holds, and
/// starts its refresh.
unsafe extern "C" fn end_of_request(data: *mut c_void) {
    // SAFETY: `data` is the state `attach` leaked; nginx runs each cleanup exactly once, after
    // every callback of the request (and its subrequests) has run.
    let mut state = unsafe { Box::from_raw(data as *mut RequestState) };
    waiters::stop_waiting(&mut state);
    // SAFETY: the request is being freed but its fields are still readable now.
    let r = unsafe { &*state.r };
    let log = crate::nginx::util::request_log(r);
    // SAFETY: the connection is live until the request is gone.
    let connection_error = unsafe { (*r.connection).error() } != 0;
    let end = fill_end(r.headers_out.status, connection_error, state.store_status);
    super::metrics::request_ended(&state, r, end);
    if let Some(lock) = state.fill.take() {
        debug!(
            log,
            "stale_cache: fill of \"{}\" ended with status {}: {:?}",
            Short(&lock.key),
            r.headers_out.status,
            end
        );
        let pass_ms = match (end, &state.settings) {
            (FillEnd::NotStored, Some(settings)) => settings.pass_ttl_ms,
            _ => 0,
        };
        waiters::release_with_pass(&lock, end == FillEnd::Stored, pass_ms);
    } else if end == FillEnd::Stored && state.status == Some(CacheStatus::Pass) {
        // A passed key answered something cacheable: collapsing resumes at once.
        if let (Some(zone), Some(settings)) = (state.zone, &state.settings) {
            let now = crate::nginx::util::now_ms();
            zone.with_key(&settings.key, |t, fp| t.pass_clear(fp, now));
        }
    }
    if matches!(state.store_status, Some(200..=299)) {
        // A new copy went to Redis through this node: the hot copy is not it.
        if let Some(settings) = &state.settings {
            super::hot::forget(r, &settings.key);
        }
    }
    super::hot::release(&mut state, r);
    if let Some(lock) = state.refresh_lock.take() {
        // The request ended before its refresh could be prepared.
        waiters::release(&lock, false);
    }
    refresh::request_ended(state.r, state.refresh.take());
}
