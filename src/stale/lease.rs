//! The fleet lease on the nginx side (rules and script in `crate::lease`).
//!
//! - The request that took a key's zone lock to fill it (or to refresh it) asks the
//!   `$cache_lease` location for the lease before going to the backend (a subrequest, like the
//!   TTL lookup). Taken: it goes on, and the worker's *keeper* renews the lease while the zone
//!   lock is held and releases it (or turns it into a pass mark) when the zone lock goes.
//! - Held by another node, for a fill: the request keeps its zone lock (its node's waiters
//!   keep waiting in shared memory) and polls the lease with backoff until the entry is stored
//!   (it releases its zone lock as stored: everyone is served by srcache), the key is passed,
//!   or the lease is free (it takes it and fills). Held, for a refresh: the node serves stale
//!   and keeps its refresh lock for one lease period without refreshing.
//! - The keeper sends renewals and releases as requests of this nginx to itself (as refreshes
//!   are sent), carrying the secret, so they work after the client's request is over; such a
//!   request runs the lease location and answers 204.
//!
//! Every failure of the lease location fails open to the node's own collapsing (logged once
//! per interval).

use core::num::NonZeroU64;
use std::cell::{Cell, RefCell};

use ngx::ffi::{ngx_event_t, ngx_http_request_t, ngx_http_test_reading, NGX_LOG_ERR};

use super::conf::StaleCacheConf;
use super::error::warn;
use super::lookup::{self, Capture};
use super::refresh;
use super::sender::{self, RefreshOutcome, RefreshTarget};
use crate::lease::{self, Answer, Op, KEEPER_TICK_MS, LEASE_MS, RENEW_MS};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::timer::Timer;
use crate::nginx::util::resume;
use crate::nginx::util::{cycle_log, live_headers, now_ms, request_log, str_bytes, update_clock};
use crate::nginx::zone::ZoneRef;
use crate::replay::{key_argument, secret_matches, Replay};
use crate::resp::parse_integer_reply;
use crate::settings::Settings;
use crate::stale::main_conf;

/// A request's dealings with the lease, inside its state.
#[derive(Default)]
///
/// (Where the request stands with the lease, and the fill lock it holds meanwhile, are its
/// phase: `crate::phase::Phase::LeaseFillAsk` and the others.)
pub struct RequestLease {
    /// The poll timer fired: ask again.
    poll_due: bool,
    /// The lease was asked for and settled: never asked again for this request.
    settled: bool,
    /// This request's token, once it asked.
    token: String,
    polls: u32,
    timer: Option<Timer<PollTarget>>,
}

/// What the poll timer of a request waiting for another node's fill resumes.
struct PollTarget {
    /// The lease it polls for (inside the request's boxed state, so it does not move).
    lease: *mut RequestLease,
    r: *mut ngx_http_request_t,
}

impl RequestLease {
    /// Whether this request asks the fleet before going to the backend.
    pub fn wanted(&self, settings: &Settings) -> bool {
        !self.settled && settings.lease_uri.is_some()
    }

    /// The lease is settled for this request: never asked again.
    pub fn settle(&mut self) {
        self.settled = true;
    }

    /// The poll timer fired since the last poll was armed.
    pub fn poll_due(&self) -> bool {
        self.poll_due
    }

    /// One more poll of another node's fill (the interval grows with each).
    pub fn count_poll(&mut self) {
        self.polls += 1;
    }
}

thread_local! {
    /// The random half of this worker's lease tokens (nodes may share pids and counters).
    static TOKEN_SEED: Cell<u64> = const { Cell::new(0) };
    static TOKEN_COUNTER: Cell<u64> = const { Cell::new(0) };
    /// Leases this worker holds, and the timer that renews and releases them.
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    static KEEPER: RefCell<Option<Timer<()>>> = const { RefCell::new(None) };
}

/// A fresh lease token, unique across the fleet.
fn new_lease_token(fill: bool) -> String {
    let seed = TOKEN_SEED.with(|s| {
        if s.get() == 0 {
            s.set(crate::nginx::random::u64() | 1);
        }
        s.get()
    });
    let n = TOKEN_COUNTER.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    lease::token_text(fill, seed, n)
}

/// The lease location failed: logged once per interval; the node collapses on its own.
pub fn failed(req: &ngx_http_request_t, what: &str) {
    log::limited(
        request_log(req),
        NGX_LOG_ERR,
        "lease",
        Every::Interval,
        format_args!(
            "stale_cache: the $cache_lease location failed ({what}); this node collapses on its \
             own until it works again"
        ),
    );
}

/// Sends the lease subrequest `op` for this request's key; `false` when it could not (logged).
pub fn ask(
    lease: &mut RequestLease,
    capture: &mut Capture,
    req: &mut ngx_http_request_t,
    settings: &Settings,
    op: Op,
) -> bool {
    let Some(uri) = settings.lease_uri.as_deref() else {
        return false;
    };
    let args = lease::arguments(&key_argument(&settings.key), op, &lease.token, LEASE_MS);
    if lookup::start(capture, req, uri, &args).is_err() {
        failed(req, "subrequest not started");
        return false;
    }
    lease.poll_due = false;
    true
}

/// Asks the lease for a fill (`fill`) or a refresh, with a new token.
pub fn ask_first(
    lease: &mut RequestLease,
    capture: &mut Capture,
    req: &mut ngx_http_request_t,
    settings: &Settings,
    fill: bool,
) -> bool {
    lease.token = new_lease_token(fill);
    let op = if fill { Op::Fill } else { Op::Refresh };
    ask(lease, capture, req, settings, op)
}

/// The interval before the next poll of another node's fill.
pub fn poll_interval(lease: &RequestLease) -> u64 {
    lease::poll_interval_ms(lease.polls)
}

/// The lease location's answer to `fill` or `refresh`.
pub fn answer(capture: &Capture) -> Result<Answer, &'static str> {
    if !capture.answered_ok() {
        return Err("no 200 answer");
    }
    let n = parse_integer_reply(&capture.body).map_err(|_| "not an integer reply")?;
    Answer::of(n).ok_or("an integer the lease script never answers")
}

/// Waits `ms` before polling the lease again; the request resumes with `poll_due` set.
pub fn arm_poll(lease: &mut RequestLease, req: &mut ngx_http_request_t, ms: u64) {
    lease.poll_due = false;
    let target = PollTarget {
        lease: &mut *lease,
        r: &mut *req,
    };
    let timer = lease
        .timer
        .get_or_insert_with(|| Timer::new(target, poll_fired, request_log(req), false));
    timer.set_log(request_log(req));
    // Notice a client that gives up while this node waits, as the zone's waiters do.
    req.read_event_handler = Some(ngx_http_test_reading);
    // The timer lives in the lease, whose drop (the request's end) deletes it.
    timer.arm(ms);
}

unsafe extern "C" fn poll_fired(ev: *mut ngx_event_t) {
    // SAFETY: the event is the timer of a live lease (dropping it deletes the timer); no
    // step of the request runs while its timer fires.
    let target = unsafe { Timer::<PollTarget>::data_of(ev) };
    // SAFETY: the lease is live while its timer is.
    unsafe { (*target.lease).poll_due = true };
    // SAFETY: the request parked in PREACCESS/PRECONTENT for the poll; nothing borrows its
    // state across the call.
    unsafe { resume(target.r) };
}

/* ---------------------------------------------------- lease operation requests */

/// A lease operation a request of this nginx to itself asks for.
pub struct OpAsk {
    op: Op,
    token: String,
    ms: u64,
    /// `key=...` of the lease's key, as the header carried it.
    key_argument: Option<Vec<u8>>,
}

/// The lease operation request `req` carries (`OP_HEADER` with the secret), if any. Asked of
/// refresh-authenticated requests.
pub fn op_request(req: &ngx_http_request_t) -> Option<OpAsk> {
    let secret = main_conf(req).secret.as_bytes();
    let header = live_headers(req).find(|h| {
        str_bytes(&h.key).eq_ignore_ascii_case(lease::OP_HEADER)
            && lease::parse_op_header(str_bytes(&h.value))
                .is_some_and(|h| secret_matches(h.secret, secret))
    })?;
    let parsed = lease::parse_op_header(str_bytes(&header.value))?;
    Some(OpAsk {
        op: parsed.op,
        token: String::from_utf8_lossy(parsed.token).into_owned(),
        ms: parsed.ms,
        key_argument: parsed.key_argument.map(<[u8]>::to_vec),
    })
}

/// Sends the operation to the `$cache_lease` location; `false` when it could not (logged).
pub fn send_op(
    ask: &OpAsk,
    capture: &mut Capture,
    req: &mut ngx_http_request_t,
    settings: &Settings,
) -> bool {
    let Some(uri) = settings.lease_uri.as_deref() else {
        return false;
    };
    // The key the lease was taken on: the op request's own `$cache_key` may differ, as it
    // carries none of the client's headers (its User-Agent is `lease::OP_USER_AGENT`).
    let key = ask
        .key_argument
        .clone()
        .unwrap_or_else(|| key_argument(&settings.key));
    let args = lease::arguments(&key, ask.op, &ask.token, ask.ms);
    if lookup::start(capture, req, uri, &args).is_err() {
        failed(req, "subrequest not started");
        return false;
    }
    true
}

/// The operation's answer: only logged when it failed.
pub fn op_answered(capture: &Capture, req: &ngx_http_request_t) {
    if !capture.answered_ok() || parse_integer_reply(&capture.body).is_err() {
        failed(req, "renewal or release not answered");
    }
}

/* -------------------------------------------------------------------- keeper */

/// A lease this worker holds for the zone lock `local_token` of `key`.
struct Kept {
    zone: ZoneRef,
    key: Vec<u8>,
    local_token: NonZeroU64,
    target: RefreshTarget,
    uri: String,
    renew: Vec<u8>,
    release: Vec<u8>,
    /// For a fill whose key gets a pass mark: the lease becomes the fleet's pass mark.
    pass: Option<Vec<u8>>,
    renewed_at: u64,
}

/// Keeps the lease this request just took: renewed while the zone lock `local_token` is
/// held, released when it goes.
pub fn keep(
    lease: &RequestLease,
    settings: &Settings,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    zone: ZoneRef,
    local_token: NonZeroU64,
    fill: bool,
) {
    let target = match refresh::target(scf, req) {
        Ok(t) => t,
        Err(e) => {
            // The lease lapses after LEASE_MS: the fleet then fills or refreshes again.
            warn(
                req,
                "lease-keeper",
                format_args!("stale_cache: the lease cannot be renewed or released: {e}"),
            );
            return;
        }
    };
    let secret = main_conf(req).secret.as_bytes();
    let token = &lease.token;
    // The client's headers but its User-Agent (ours tells these requests apart in access
    // logs); the key travels in the op header, so a key made of headers still matches.
    let client: Vec<(&[u8], &[u8])> = live_headers(req)
        .map(|h| (str_bytes(&h.key), str_bytes(&h.value)))
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case(lease::OP_HEADER)
                && !name.eq_ignore_ascii_case(b"User-Agent")
        })
        .collect();
    let key_arg = key_argument(&settings.key);
    let build = |op: Op, ms: u64| {
        let value = lease::op_header_value(secret, op, token, ms, &key_arg);
        let mut headers = client.clone();
        headers.push((b"User-Agent", lease::OP_USER_AGENT));
        headers.push((lease::OP_HEADER, &value));
        Replay {
            method: str_bytes(&req.method_name),
            target: str_bytes(&req.unparsed_uri),
            host: refresh::replay_host(req, &target),
            headers: &headers,
            body: None,
            skip_header: &settings.skip_fetch,
            secret_header: refresh::SECRET_HEADER.as_bytes(),
            secret,
            credentials: false,
        }
        .to_bytes()
    };
    let kept = Kept {
        zone,
        key: settings.key.to_vec(),
        local_token,
        renew: build(Op::Renew, LEASE_MS),
        release: build(Op::Release, 1),
        pass: (fill && settings.pass_ttl_ms > 0).then(|| build(Op::Pass, settings.pass_ttl_ms)),
        uri: String::from_utf8_lossy(str_bytes(&req.unparsed_uri)).into_owned(),
        target,
        renewed_at: now_ms(),
    };
    KEPT.with(|k| k.borrow_mut().push(kept));
    arm_keeper();
}

fn arm_keeper() {
    KEEPER.with(|k| {
        let mut k = k.borrow_mut();
        // A worker shutting down does not wait for it: its leases lapse instead.
        let timer = k.get_or_insert_with(|| Timer::new((), keeper_tick, cycle_log(), true));
        if !timer.is_armed() {
            timer.arm(KEEPER_TICK_MS);
        }
    });
}

/// Renews the leases whose zone lock is still held; releases the others.
unsafe extern "C" fn keeper_tick(_ev: *mut ngx_event_t) {
    update_clock();
    let now = now_ms();
    let kept = KEPT.with(|k| core::mem::take(&mut *k.borrow_mut()));
    let mut still = Vec::with_capacity(kept.len());
    for mut k in kept {
        let (holder, passed) = k
            .zone
            .with_key(&k.key, |t, fp| {
                (t.lock_state(fp, now), t.pass_left_ms(fp, now).is_some())
            })
            .unwrap_or((None, false));
        if holder.is_some_and(|h| h.token == k.local_token) {
            if now.saturating_sub(k.renewed_at) >= RENEW_MS {
                k.renewed_at = now;
                send(&k, k.renew.clone(), "lease renewal");
            }
            still.push(k);
            continue;
        }
        debug!(
            cycle_log(),
            "stale_cache: work on \"{}\" ended; releasing its lease{}",
            Short(&k.key),
            if passed { " as a pass mark" } else { "" }
        );
        match k.pass.take() {
            Some(pass) if passed => send(&k, pass, "lease pass mark"),
            _ => send(&k, k.release.clone(), "lease release"),
        }
    }
    KEPT.with(|k| k.borrow_mut().extend(still));
    if KEPT.with(|k| !k.borrow().is_empty()) {
        arm_keeper();
    }
}

fn send(k: &Kept, request: Vec<u8>, what: &'static str) {
    sender::start(
        &k.target,
        request,
        k.uri.clone(),
        what,
        LEASE_MS,
        Box::new(|_: &RefreshOutcome, _| {}),
    );
}
