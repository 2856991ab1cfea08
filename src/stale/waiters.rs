//! Locks held by requests, and requests waiting for them: this worker's registry of waiters,
//! the poll that notices releases made by other workers, the wake-up, and the release.

use core::num::NonZeroU64;
use core::ptr::NonNull;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_http_block_reading,
    ngx_http_core_run_phases, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_test_reading, ngx_msec_t, ngx_post_event, ngx_posted_events, NGX_LOG_ERR,
};

use super::state::{Phase, RequestState, ZoneRef};
use crate::collapse::{backoff_ms, lock_moved, RefreshEnd, UseStale};
use crate::locktable::{LockKind, LockRequest, Owner};
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{cycle_log, no_connection, now_ms, request_log, update_clock, worker_pid};
use crate::nginx::zone::Zone;
use crate::policy::CacheStatus;

/// How often a worker re-checks, in shared memory, locks that waiters of it wait for; a
/// release in the same worker wakes its waiters at once instead.
const WAIT_POLL_MS: ngx_msec_t = 1;
/// How often the poll also checks that the workers holding waited-for locks still run: a
/// killed holder's waiters resume within this (plus a poll), not at the lock's expiry.
const OWNER_CHECK_MS: u64 = 200;

/// A lock this request holds, released when the request (or its refresh) ends.
pub struct HeldLock {
    pub zone: ZoneRef,
    pub key: Vec<u8>,
    pub token: NonZeroU64,
}

/// A request's waiting, inside its state.
pub struct Wait {
    /// Posted on wake-up, or fires at the request's wait deadline.
    event: ngx_event_t,
    /// The lock holder being waited for, to tell its release from a new holder.
    pub waited_token: u64,
    /// Registered in the waiter registry.
    registered: bool,
    /// When this request stops waiting for fills, whatever happens (0: not waiting yet).
    pub deadline: u64,
    /// Woken, but the posted wake-up event has not run yet.
    pub wake_pending: bool,
    /// When a wake-up resumed this request (precise clock; 0: never woken).
    pub resumed_ms: u64,
}

impl Wait {
    pub fn new() -> Self {
        Wait {
            // SAFETY: a zeroed event is nginx's initial state for one.
            event: unsafe { core::mem::zeroed() },
            waited_token: 0,
            registered: false,
            deadline: 0,
            wake_pending: false,
            resumed_ms: 0,
        }
    }

    /// Where the event sits in a Wait, to find the state from the event.
    pub const EVENT_OFFSET: usize = core::mem::offset_of!(Wait, event);

    /// Still waiting, or woken but not yet resumed: other events must not move the request.
    pub fn in_progress(&self) -> bool {
        self.registered || self.wake_pending
    }

    /// The event, to post a resumption of the request on it.
    pub fn event_mut(&mut self) -> &mut ngx_event_t {
        &mut self.event
    }
}

/// Waiting requests by (zone address, key).
type Registry = HashMap<(usize, Vec<u8>), Vec<NonNull<RequestState>>>;

thread_local! {
    /// This worker's waiting requests, by zone and key.
    static WAITERS: RefCell<Registry> = RefCell::new(HashMap::new());
    /// The poll timer that notices releases made by other workers.
    static POLL_EVENT: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
    static TOKEN_COUNTER: Cell<u64> = const { Cell::new(0) };
    static LAST_OWNER_CHECK: Cell<u64> = const { Cell::new(0) };
}

/// A lock request of this worker (its pid lets others take the lock over if it dies).
pub fn lock_request(kind: LockKind, token: NonZeroU64, ttl_ms: u64, started: u64) -> LockRequest {
    LockRequest {
        kind,
        owner: Owner {
            token,
            pid: worker_pid() as u32,
        },
        ttl_ms,
        lookup_started_ms: started,
    }
}

pub use crate::nginx::process::owner_alive;

/// A lock token unique across workers: the pid tells workers apart, the counter locks.
pub fn new_token() -> NonZeroU64 {
    let n = TOKEN_COUNTER.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    // Odd and distinct for 2^39 consecutive locks of this worker.
    let low = ((n << 1) | 1) & ((1 << 40) - 1);
    NonZeroU64::new((worker_pid() << 40) | low).unwrap_or(NonZeroU64::MIN)
}

/// Parks the request until `holder` releases the key's lock, or `timeout` ms pass.
pub fn start_waiting(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    zone: ZoneRef,
    holder: u64,
    timeout: u64,
) {
    let key = state.settings().key.clone();
    debug!(
        request_log(req),
        "stale_cache: waiting up to {} ms for the fill of \"{}\"",
        timeout,
        Short(&key)
    );
    state.phase = Phase::Waiting;
    super::metrics::count(Some(zone), Counter::Waits);
    let wait = &mut state.wait;
    wait.registered = true;
    wait.waited_token = holder;
    let ev = &mut wait.event;
    ev.data = no_connection();
    ev.handler = Some(wait_event_handler);
    ev.log = request_log(req);
    // Notice a client that gives up while waiting, as limit_req does.
    req.read_event_handler = Some(ngx_http_test_reading);
    // SAFETY: the event lives in the state, which outlives the wait (the request's end stops
    // it first).
    unsafe { ngx_add_timer(ev, timeout.max(1) as ngx_msec_t) };
    let me = NonNull::from(&mut *state);
    WAITERS.with(|w| w.borrow_mut().entry((zone.id(), key)).or_default().push(me));
    arm_poll_timer();
}

/// Removes the request from the waiters and cancels its timer and posted wake-up.
pub fn stop_waiting(state: &mut RequestState) {
    if state.wait.registered {
        state.wait.registered = false;
        let me = NonNull::from(&mut *state);
        WAITERS.with(|w| {
            w.borrow_mut().retain(|_, list| {
                list.retain(|&s| s != me);
                !list.is_empty()
            })
        });
    }
    // Also when already woken: the wake-up may still sit in the posted queue, and must not
    // run after the request (and this state) is gone.
    let ev = &mut state.wait.event;
    // SAFETY: the event is ours; removing its timer or post only touches nginx's queues.
    unsafe {
        if ev.timer_set() != 0 {
            ngx_del_timer(ev);
        }
        if ev.posted() != 0 {
            ngx_delete_posted_event(ev);
        }
    }
}

/// Wakes every request of this worker waiting on `key` in `zone`.
fn wake_waiters(zone: ZoneRef, key: &[u8]) {
    let woken = WAITERS.with(|w| w.borrow_mut().remove(&(zone.id(), key.to_vec())));
    for mut waiter in woken.into_iter().flatten() {
        // SAFETY: registered waiters are live until stop_waiting removes them; a waiter is
        // never the request whose step is releasing the lock (a lock holder does not wait).
        let waiter = unsafe { waiter.as_mut() };
        waiter.wait.registered = false;
        waiter.wait.wake_pending = true;
        waiter.status = Some(CacheStatus::Collapsed);
        let ev = &mut waiter.wait.event;
        // SAFETY: the event is the waiter's own, armed while it waits.
        unsafe {
            if ev.timer_set() != 0 {
                ngx_del_timer(ev);
            }
            ngx_post_event(ev, &raw mut ngx_posted_events);
        }
    }
}

/// `$cache_lock_timeout` is over: go on without the fill (logged at warn, rate-limited).
pub fn give_up_waiting(state: &mut RequestState, req: &ngx_http_request_t) {
    state.finish(CacheStatus::Timeout);
    super::metrics::count(state.zone, Counter::WaitTimeouts);
    let key = &state.settings().key;
    debug!(
        request_log(req),
        "stale_cache: wait for \"{}\" timed out",
        Short(key)
    );
    log::limited(
        request_log(req),
        ngx::ffi::NGX_LOG_WARN,
        "lock-timeout",
        Every::Interval,
        format_args!(
            "stale_cache: waited $cache_lock_timeout for the request filling \"{}\"; going on \
             without it",
            Short(key)
        ),
    );
}

unsafe extern "C" fn wait_event_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the `wait.event` field of a live RequestState (the request's end
    // cancels it); no step of the request runs while its posted event or timer fires.
    let state = unsafe { RequestState::of_wait_event(ev) };
    state.wait.wake_pending = false;
    let r = state.r;
    // SAFETY: the request is live while its state is.
    let req = unsafe { &*r };
    if state.wait.event.timedout() != 0 {
        state.wait.event.set_timedout(0);
        stop_waiting(state);
        give_up_waiting(state, req);
    } else {
        update_clock();
        state.wait.resumed_ms = now_ms();
        super::metrics::count(state.zone, Counter::Wakeups);
        debug!(request_log(req), "stale_cache: woken");
    }
    // SAFETY: resumes the request's phases where the wait stopped them; the state borrow
    // above is not used past this point.
    unsafe {
        (*r).read_event_handler = Some(ngx_http_block_reading);
        let c = (*r).connection;
        ngx_http_core_run_phases(r);
        ngx_http_run_posted_requests(c);
    }
}

fn arm_poll_timer() {
    POLL_EVENT.with(|p| {
        let mut p = p.borrow_mut();
        let ev = p.get_or_insert_with(|| {
            // SAFETY: a zeroed event is nginx's initial state for one.
            let mut ev: Box<ngx_event_t> = Box::new(unsafe { core::mem::zeroed() });
            ev.handler = Some(poll_waiters);
            ev.data = no_connection();
            ev.log = cycle_log();
            ev.set_cancelable(1);
            ev
        });
        if ev.timer_set() == 0 {
            // SAFETY: the boxed event lives for the worker's lifetime.
            unsafe { ngx_add_timer(&mut **ev, WAIT_POLL_MS) };
        }
    });
}

/// Re-checks the locks this worker's waiters wait for: a release or takeover by another
/// worker wakes them.
unsafe extern "C" fn poll_waiters(_ev: *mut ngx_event_t) {
    let now = now_ms();
    let check_owners = now.saturating_sub(LAST_OWNER_CHECK.get()) >= OWNER_CHECK_MS;
    if check_owners {
        LAST_OWNER_CHECK.set(now);
    }
    let keys: Vec<(usize, Vec<u8>)> = WAITERS.with(|w| w.borrow().keys().cloned().collect());
    for (zone_id, key) in keys {
        // SAFETY: zone ids are addresses of zones in the main conf, live for the cycle.
        let zone = ZoneRef::new(unsafe { &*(zone_id as *const Zone) });
        let holder = zone
            .with_key(&key, |t, fp| {
                if check_owners && t.release_if_owner_dead(fp, now, owner_alive) {
                    debug!(
                        cycle_log(),
                        "stale_cache: the worker holding \"{}\" is gone; lock released",
                        Short(&key)
                    );
                }
                t.lock_state(fp, now)
            })
            .flatten();
        let moved = WAITERS.with(|w| {
            w.borrow().get(&(zone_id, key.clone())).is_some_and(|list| {
                // SAFETY: waiters are live while registered.
                list.iter()
                    .all(|s| lock_moved(holder, unsafe { s.as_ref() }.wait.waited_token))
            })
        });
        if moved {
            debug!(
                cycle_log(),
                "stale_cache: lock of \"{}\" moved; waking waiters",
                Short(&key)
            );
            wake_waiters(zone, &key);
        }
    }
    if WAITERS.with(|w| !w.borrow().is_empty()) {
        arm_poll_timer();
    }
}

/// Releases a lock this worker holds and wakes its local waiters at once. `stored`: the
/// lock's work (fill or refresh) stored a new entry.
pub fn release(lock: &HeldLock, stored: bool) {
    release_with_pass(lock, stored, 0);
}

/// [`release`], also marking the key as passed for `pass_ms` (a fill that stored nothing),
/// in the same hold of the mutex, so no waiter sees the lock gone before the mark is there.
pub fn release_with_pass(lock: &HeldLock, stored: bool, pass_ms: u64) {
    // The release time dates the store that waiters are woken for: read the clock afresh.
    update_clock();
    let now = now_ms();
    lock.zone.with_key(&lock.key, |t, fp| {
        if pass_ms > 0 {
            t.pass_set(fp, pass_ms, now);
        }
        t.unlock(fp, lock.token, now, stored)
    });
    debug!(
        cycle_log(),
        "stale_cache: lock of \"{}\" released ({})",
        Short(&lock.key),
        if stored { "stored" } else { "not stored" }
    );
    wake_waiters(lock.zone, &lock.key);
}

/// What the end of a refresh leaves behind besides releasing its lock.
#[derive(Clone, Copy)]
pub struct RefreshPolicy {
    /// The refresh asks the backend for a key in its error grace band.
    pub grace: bool,
    /// `$cache_pass_ttl`.
    pub pass_ms: u64,
    /// `stale_cache_use_stale`.
    pub use_stale: UseStale,
    /// `stale_cache_refresh_backoff`: first and longest backoff.
    pub backoff: (u64, u64),
}

/// Ends a refresh: a failure backs the key off (an error mark: no new refresh, and in the
/// error grace band the stored copy is served until it ends), except that in the band an
/// answer the stored copy must not stand in for (say a 404) passes the key instead; then the
/// lock is released and its waiters woken.
pub fn end_refresh(lock: &HeldLock, end: RefreshEnd, policy: RefreshPolicy) {
    update_clock();
    let now = now_ms();
    let stored = end == RefreshEnd::Stored;
    let marked = lock.zone.with_key(&lock.key, |t, fp| {
        let mark = if stored {
            None
        } else if policy.grace && !policy.use_stale.covers(end) {
            t.pass_set(fp, policy.pass_ms, now);
            None
        } else {
            let (base, cap) = policy.backoff;
            t.error_mark(fp, now, |n| backoff_ms(n, base, cap))
        };
        t.unlock(fp, lock.token, now, stored);
        mark
    });
    debug!(
        cycle_log(),
        "stale_cache: lock of \"{}\" released ({}): the refresh ended {:?}; backoff {:?} ms",
        Short(&lock.key),
        if stored { "stored" } else { "not stored" },
        end,
        marked.flatten()
    );
    wake_waiters(lock.zone, &lock.key);
}

/// The zone has no room for another lock: say so once per interval.
pub fn zone_full(req: &ngx_http_request_t, zone: &Zone) {
    log::limited(
        request_log(req),
        NGX_LOG_ERR,
        "zone-full",
        Every::Interval,
        format_args!(
            "stale_cache: zone \"{}\" is full of locks; increase its size",
            String::from_utf8_lossy(&zone.name)
        ),
    );
}
