//! Locks held by requests, and requests waiting for them: this worker's registry of waiters,
//! the poll that notices releases made by other workers, the wake-up, and the release.

use core::num::NonZeroU64;
use core::ptr::NonNull;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_http_request_t,
    ngx_http_test_reading, ngx_msec_t, ngx_post_event, ngx_posted_events, NGX_LOG_ERR,
};

use crate::collapse::{backoff_ms, lock_moved, RefreshEnd, UseStale};
use crate::locktable::{LockKind, LockRequest, Owner};
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::timer::Timer;
use crate::nginx::util::resume;
use crate::nginx::util::{cycle_log, no_connection, now_ms, request_log, update_clock, worker_pid};
use crate::nginx::zone::Zone;
use crate::nginx::zone::ZoneRef;

/// How often a worker re-checks, in shared memory, locks that waiters of it wait for; a
/// release in the same worker wakes its waiters at once instead.
const WAIT_POLL_MS: u64 = 1;
/// How often the poll also checks that the workers holding waited-for locks still run: a
/// killed holder's waiters resume within this (plus a poll), not at the lock's expiry.
const OWNER_CHECK_MS: u64 = 200;

/// A lock this request (or its refresh) holds. Completing it consumes it with its outcome
/// (`release`, `release_with_pass`, `end_refresh`, `hand_over`); dropped without that (a
/// path that forgot it, a request torn down), it is released as abandoned: not stored, so
/// its waiters wake at once and one of them fills.
pub struct HeldLock {
    zone: ZoneRef,
    key: Vec<u8>,
    token: NonZeroU64,
    /// Completed by one of the consuming methods: the drop has nothing left to do.
    done: bool,
}

thread_local! {
    /// Set when the worker exits: the zones may be gone, and a lock still held then (a
    /// refresh never sent) is left to expire instead of being released.
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// The worker is exiting (`exit_process`): no lock is released from here on.
pub fn worker_exiting() {
    EXITING.set(true);
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.done && !EXITING.get() {
            debug!(
                cycle_log(),
                "stale_cache: lock of \"{}\" abandoned",
                Short(&self.key)
            );
            self.unlock(false, 0);
        }
    }
}

/// A request's waiting, inside its state. The first field is the event, so its handler finds
/// the `Wait` from the event.
#[repr(C)]
pub struct Wait {
    /// Posted on wake-up, or fires at the request's wait deadline.
    event: ngx_event_t,
    /// The waiting main request, resumed by the event.
    r: *mut ngx_http_request_t,
    /// The zone of the lock waited for (its wake-ups are counted there).
    zone: Option<ZoneRef>,
    /// The lock holder being waited for, to tell its release from a new holder.
    waited_token: u64,
    /// Registered in the waiter registry.
    registered: bool,
    /// Woken, but the posted wake-up event has not run yet.
    pub wake_pending: bool,
    /// When a wake-up resumed this request (precise clock; 0: never woken).
    pub resumed_ms: u64,
    /// How the last wait ended, for the driver: woken by a release, or out of time.
    pub ended: WaitEnd,
}

/// How a request's wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// Not waiting, or still waiting.
    None,
    /// The lock went (released, taken over, expired): the request decides again.
    Woken,
    /// `$cache_lock_timeout` is over.
    TimedOut,
}

impl Wait {
    pub fn new() -> Self {
        Wait {
            // SAFETY: a zeroed event is nginx's initial state for one.
            event: unsafe { core::mem::zeroed() },
            r: core::ptr::null_mut(),
            zone: None,
            waited_token: 0,
            registered: false,
            wake_pending: false,
            resumed_ms: 0,
            ended: WaitEnd::None,
        }
    }

    /// Still waiting, or woken but not yet resumed: other events must not move the request.
    pub fn in_progress(&self) -> bool {
        self.registered || self.wake_pending
    }

    /// Posts a resumption of `r`'s phases on this wait's event (a redirect after a refetch:
    /// `handler` runs from the posted queue, never inside the step that asks).
    pub fn post(
        &mut self,
        r: *mut ngx_http_request_t,
        handler: unsafe extern "C" fn(*mut ngx_event_t),
    ) {
        self.wake_pending = true;
        self.r = r;
        let ev = &mut self.event;
        ev.data = no_connection();
        ev.handler = Some(handler);
        // SAFETY: `r` is a live request; its log lives as long.
        ev.log = request_log(unsafe { &*r });
        // SAFETY: the event lives in the Wait, whose owner removes it from the posted queue
        // (`stop_waiting`) before it goes.
        unsafe { ngx_post_event(ev, &raw mut ngx_posted_events) };
    }

    /// The Wait whose event `ev` is, with its posted flag cleared.
    ///
    /// # Safety
    /// `ev` must be the event of a live Wait that nothing else borrows (nginx runs an event's
    /// handler when no step of its request runs).
    pub unsafe fn of_event<'a>(ev: *mut ngx_event_t) -> &'a mut Wait {
        // SAFETY: (caller) `event` is the first field of a #[repr(C)] Wait.
        let wait = unsafe { &mut *(ev as *mut Wait) };
        wait.wake_pending = false;
        wait
    }

    /// The request this wait belongs to.
    pub fn request(&self) -> *mut ngx_http_request_t {
        self.r
    }
}

impl Drop for Wait {
    /// A wait that goes (the request ended, or decided) leaves no registration, timer or
    /// posted event behind.
    fn drop(&mut self) {
        stop_waiting(self);
    }
}

/// Waiting requests by (zone address, key).
type Registry = HashMap<(usize, Vec<u8>), Vec<NonNull<Wait>>>;

thread_local! {
    /// This worker's waiting requests, by zone and key.
    static WAITERS: RefCell<Registry> = RefCell::new(HashMap::new());
    /// The poll timer that notices releases made by other workers.
    static POLL_TIMER: RefCell<Option<Timer<()>>> = const { RefCell::new(None) };
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

/// Parks request `req` until `holder` releases `key`'s lock in `zone`, or `timeout` ms pass;
/// its phases resume then, with `wait.ended` saying which.
pub fn start_waiting(
    wait: &mut Wait,
    req: &mut ngx_http_request_t,
    zone: ZoneRef,
    key: &[u8],
    holder: u64,
    timeout: u64,
) {
    debug!(
        request_log(req),
        "stale_cache: waiting up to {} ms for the fill of \"{}\"",
        timeout,
        Short(key)
    );
    zone.count(Counter::Waits);
    wait.registered = true;
    wait.ended = WaitEnd::None;
    wait.waited_token = holder;
    wait.r = req;
    wait.zone = Some(zone);
    let ev = &mut wait.event;
    ev.data = no_connection();
    ev.handler = Some(wait_event_handler);
    ev.log = request_log(req);
    // Notice a client that gives up while waiting, as limit_req does.
    req.read_event_handler = Some(ngx_http_test_reading);
    // SAFETY: the event lives in the Wait, which outlives the wait (the request's end stops
    // it first).
    unsafe { ngx_add_timer(ev, timeout.max(1) as ngx_msec_t) };
    let me = NonNull::from(&mut *wait);
    WAITERS.with(|w| {
        w.borrow_mut()
            .entry((zone.id(), key.to_vec()))
            .or_default()
            .push(me)
    });
    arm_poll_timer();
}

/// Removes the request from the waiters and cancels its timer and posted wake-up.
pub fn stop_waiting(wait: &mut Wait) {
    if wait.registered {
        wait.registered = false;
        let me = NonNull::from(&mut *wait);
        WAITERS.with(|w| {
            w.borrow_mut().retain(|_, list| {
                list.retain(|&s| s != me);
                !list.is_empty()
            })
        });
    }
    // Also when already woken: the wake-up may still sit in the posted queue, and must not
    // run after the request (and this state) is gone.
    let ev = &mut wait.event;
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
        waiter.registered = false;
        waiter.wake_pending = true;
        waiter.ended = WaitEnd::Woken;
        let ev = &mut waiter.event;
        // SAFETY: the event is the waiter's own, armed while it waits.
        unsafe {
            if ev.timer_set() != 0 {
                ngx_del_timer(ev);
            }
            ngx_post_event(ev, &raw mut ngx_posted_events);
        }
    }
}

unsafe extern "C" fn wait_event_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the first field of a live Wait (the request's end cancels it);
    // no step of the request runs while its posted event or timer fires.
    let wait = unsafe { Wait::of_event(ev) };
    let r = wait.r;
    if wait.event.timedout() != 0 {
        wait.event.set_timedout(0);
        stop_waiting(wait);
        wait.ended = WaitEnd::TimedOut;
    } else {
        update_clock();
        wait.resumed_ms = now_ms();
        if let Some(zone) = wait.zone {
            zone.count(Counter::Wakeups);
        }
        // SAFETY: the request is live while its wait is.
        debug!(request_log(unsafe { &*r }), "stale_cache: woken");
    }
    // SAFETY: the request parked in PREACCESS/PRECONTENT for this wait; the wait borrow
    // above is not used past this point.
    unsafe { resume(r) };
}

fn arm_poll_timer() {
    POLL_TIMER.with(|p| {
        let mut p = p.borrow_mut();
        let timer = p.get_or_insert_with(|| Timer::new((), poll_waiters, cycle_log(), true));
        if !timer.is_armed() {
            timer.arm(WAIT_POLL_MS);
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
                    .all(|s| lock_moved(holder, unsafe { s.as_ref() }.waited_token))
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

impl HeldLock {
    /// A lock just taken in `zone` for `key` with `token`.
    pub fn new(zone: ZoneRef, key: Vec<u8>, token: NonZeroU64) -> Self {
        HeldLock {
            zone,
            key,
            token,
            done: false,
        }
    }

    pub fn zone(&self) -> ZoneRef {
        self.zone
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn token(&self) -> NonZeroU64 {
        self.token
    }

    /// Releases the lock and wakes its local waiters at once. `stored`: the lock's work
    /// (fill or refresh) stored a new entry.
    pub fn release(self, stored: bool) {
        self.release_with_pass(stored, 0);
    }

    /// [`Self::release`], also marking the key as passed for `pass_ms` (a fill that stored
    /// nothing), in the same hold of the mutex, so no waiter sees the lock gone before the
    /// mark is there.
    pub fn release_with_pass(mut self, stored: bool, pass_ms: u64) {
        self.done = true;
        self.unlock(stored, pass_ms);
    }

    fn unlock(&self, stored: bool, pass_ms: u64) {
        // The release time dates the store that waiters are woken for: read the clock afresh.
        update_clock();
        let now = now_ms();
        self.zone.with_key(&self.key, |t, fp| {
            if pass_ms > 0 {
                t.pass_set(fp, pass_ms, now);
            }
            t.unlock(fp, self.token, now, stored)
        });
        debug!(
            cycle_log(),
            "stale_cache: lock of \"{}\" released ({})",
            Short(&self.key),
            if stored { "stored" } else { "not stored" }
        );
        wake_waiters(self.zone, &self.key);
    }

    /// Gives the key's refresh to another node: the lock is taken again for `ms` under the
    /// same token and left to expire, so this node's stale hits neither refresh nor ask Redis
    /// meanwhile.
    pub fn hand_over(mut self, ms: u64) {
        self.done = true;
        let now = now_ms();
        let (token, key) = (self.token, &self.key);
        self.zone.with_key(key, |t, fp| {
            t.unlock(fp, token, now, false);
            let again = lock_request(LockKind::Refresh, token, ms, 0);
            t.try_lock_as(fp, again, now, owner_alive)
        });
    }

    /// Ends a refresh: a failure backs the key off (an error mark: no new refresh, and in the
    /// error grace band the stored copy is served until it ends), except that in the band an
    /// answer the stored copy must not stand in for (say a 404) passes the key instead; then the
    /// lock is released and its waiters woken.
    pub fn end_refresh(mut self, end: RefreshEnd, policy: RefreshPolicy) {
        self.done = true;
        let lock = &self;
        update_clock();
        let now = now_ms();
        let stored = end == RefreshEnd::Stored;
        let marked = lock.zone.with_key(&lock.key, |t, fp| {
            let mark = if stored || end == RefreshEnd::NotStored {
                // NotStored: its own request set the error mark (`store::refused_refresh`).
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
