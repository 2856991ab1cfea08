//! The steps of the state machine that decide: the first look at a request (settings, memo,
//! locks), the TTL's answer (fresh, stale, missing), the stale path, and the fill lock (also
//! after a wake-up). The decisions are made by `crate::policy` and `crate::collapse`; these
//! steps gather their inputs and carry them out.

use ngx::ffi::{ngx_http_request_t, NGX_LOG_ERR, NGX_LOG_NOTICE};

use super::conf::StaleCacheConf;
use super::error::{warn, StaleError};
use super::phases::Next;
use super::refresh::{self, has_body};
use super::state::{Phase, RequestState};
use super::variables::read_cache_variables;
use super::waiters::{
    self, lock_request, new_token, owner_alive, start_waiting, zone_full, HeldLock,
};
use super::{after_fetch, lease, lookup, metrics};
use crate::collapse::{after_lock, refresh_lock_ms, AfterLock};
use crate::locktable::{LockAttempt, LockKind, MemoOutcome};
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, AGAIN};
use crate::nginx::zone;
use crate::nginx::zone::ZoneRef;
use crate::policy::{decide, Action, CacheStatus, FailReason};
use crate::replay::{keep_copy, key_argument, KeepCopy};
use crate::resp::{parse_integer_reply, ReplyError};
use crate::settings::Settings;
use crate::stale::main_conf;

type Step = Result<Next, StaleError>;

/// First visit: settings, bypass rules, the freshness memo and locks, then the TTL lookup.
pub fn start(state: &mut RequestState, req: &mut ngx_http_request_t, scf: &StaleCacheConf) -> Step {
    if state.is_refresh {
        if let Some(next) = lease::op_request(state, req) {
            // A renewal or release of a fleet lease this nginx holds.
            return Ok(next);
        }
        state.finish(CacheStatus::Refresh);
        return Ok(Next::Continue);
    }
    let settings = match Settings::parse(&read_cache_variables(req)) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(StaleError::Inactive),
        Err(e) => return Err(StaleError::Settings(e)),
    };
    if !settings
        .skip_fetch
        .eq_ignore_ascii_case(scf.skip_header_name())
    {
        // Clients' copies of the header the refreshes use would not be hidden.
        warn(
            req,
            "skip-header",
            format_args!(
                "stale_cache: $cache_skip_fetch is \"{}\" but clients' \"{}\" headers are the \
                 ones hidden; add \"stale_cache_skip_header {};\" at http or server level",
                String::from_utf8_lossy(&settings.skip_fetch),
                String::from_utf8_lossy(scf.skip_header_name()),
                String::from_utf8_lossy(&settings.skip_fetch)
            ),
        );
    }
    let (method, uri) = (str_bytes(&req.method_name), str_bytes(&req.uri));
    if !settings.allows(method) || settings.is_lookup_uri(uri) {
        state.finish(CacheStatus::Bypass);
        return Ok(Next::Continue);
    }
    let zone = zone::find(&main_conf(req).zones, &settings.lock_zone)
        .map(ZoneRef::new)
        .ok_or_else(|| StaleError::NoZone(settings.lock_zone.clone()))?;
    state.zone = Some(zone);
    let now = now_ms();
    state.lookup_started = now;
    let memo = scf.memo_enabled();
    let (fresh, pass, lock) = zone
        .with_key(&settings.key, |t, fp| {
            let fresh = if memo { t.memo_get(fp, now) } else { None };
            if fresh.is_some() {
                // A fresh hit needs nothing else from the table.
                return (fresh, None, None);
            }
            let pass = t.pass_left_ms(fp, now);
            // A lock whose worker died (crash, kill -9) is let go at once, not at its expiry.
            t.release_if_owner_dead(fp, now, owner_alive);
            (fresh, pass, t.lock_state(fp, now))
        })
        .unwrap_or((None, None, None));
    let log = request_log(req);
    let key = settings.key.clone();
    state.settings = Some(settings);
    if let Some(until) = fresh {
        debug!(log, "stale_cache: \"{}\" fresh by the memo", Short(&key));
        state.ttl_left = Some((until.saturating_sub(now) / 1000) as i64);
        metrics::count(state.zone, Counter::MemoHits);
        state.finish(CacheStatus::Fresh);
        super::hot::on_fresh(state, req, scf, until);
        return Ok(Next::Continue);
    }
    if let Some(left) = pass {
        // The last fill stored nothing: no lookup, no lock, no waiting while the mark lasts.
        debug!(
            log,
            "stale_cache: \"{}\" passed for {} ms more",
            Short(&key),
            left
        );
        state.finish(CacheStatus::Pass);
        return Ok(Next::Continue);
    }
    match lock {
        Some(info) if info.kind == LockKind::Fill => {
            // A fill of this key is under way, so the key is missing: wait for it without
            // asking Redis (a burst of misses costs one TTL lookup, not one per request).
            let timeout = state.settings().lock_timeout_ms;
            state.wait.deadline = now + timeout;
            start_waiting(state, req, zone, info.token.get(), timeout);
            return Ok(Next::Return(AGAIN));
        }
        Some(_) => {
            // A refresh of this key is under way: it is stale, and its copy lives at least as
            // long as the refresh lock (see `collapse::refresh_lock_ms`), so srcache can serve
            // it without a TTL lookup.
            debug!(
                log,
                "stale_cache: \"{}\" stale, refresh running",
                Short(&key)
            );
            state.finish(CacheStatus::Stale);
            return Ok(Next::Continue);
        }
        None => {}
    }
    let ttl_uri = state.settings().ttl_uri.clone();
    lookup::start(state, req, &ttl_uri, &key_argument(&key))?;
    state.phase = Phase::LookingUp;
    Ok(Next::Return(AGAIN))
}

/// The TTL lookup's answer, read strictly: anything but an integer reply fails open.
fn ttl_of(state: &RequestState) -> Result<i64, StaleError> {
    if !state.capture.answered_ok() {
        return Err(StaleError::Lookup(FailReason::LookupFailed));
    }
    parse_integer_reply(&state.capture.body).map_err(|e| match e {
        ReplyError::ErrorReply(text) => StaleError::RedisError(text),
        _ => StaleError::Lookup(FailReason::BadReply),
    })
}

/// The TTL is in: decide and act.
pub fn after_lookup(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Step {
    let ttl = ttl_of(state)?;
    state.ttl = ttl;
    state.looked_up = true;
    state.ttl_left = crate::cache_status::ttl_left(ttl, state.settings().stale_secs);
    let zone = state.zone.expect("the zone is known before the lookup");
    let settings = state.settings();
    let now = now_ms();
    let persist = settings.persist_uri.is_some();
    let action = decide(ttl, settings.stale_secs, settings.grace_secs, persist);
    debug!(
        request_log(req),
        "stale_cache: \"{}\" ttl {}: {:?}",
        Short(&settings.key),
        ttl,
        action
    );
    match action {
        Action::ServeFresh { memo_ms } => {
            if scf.memo_enabled() && memo_ms > 0 {
                let stored =
                    zone.with_key(&settings.key, |t, fp| t.memo_set(fp, now + memo_ms, now));
                if let Some(MemoOutcome::StoredEvicted(_)) = stored {
                    // Once per worker: it says the zone is too small, not that anything failed.
                    log::limited(
                        request_log(req),
                        NGX_LOG_NOTICE,
                        "evict",
                        Every::Once,
                        format_args!(
                            "stale_cache: zone \"{}\" is full: evicting the least recently \
                             used freshness memos (requests stay correct; a bigger zone saves \
                             TTL lookups)",
                            String::from_utf8_lossy(&zone.name)
                        ),
                    );
                }
            }
            state.finish(CacheStatus::Fresh);
            super::hot::on_fresh(state, req, scf, now + memo_ms);
            Ok(Next::Continue)
        }
        Action::FailOpen { reason } => Err(StaleError::Lookup(reason)),
        Action::FillOrWait => Ok(fill_or_wait(state, req, scf, zone, now)),
        Action::TryBackend => {
            state.in_grace = true;
            Ok(fill_or_wait(state, req, scf, zone, now))
        }
        Action::ServeStale { persist, refresh } => {
            state.finish(CacheStatus::Stale);
            if !refresh {
                return Ok(Next::Continue);
            }
            Ok(serve_stale(state, req, scf, zone, persist, now))
        }
    }
}

/// A stale hit: srcache serves the copy; this request also starts the refresh unless one
/// runs already.
fn serve_stale(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    zone: ZoneRef,
    persist: bool,
    now: u64,
) -> Next {
    if has_body(req) && !state.body_read {
        return Next::Continue; // never reached: bodies are read before the first step
    }
    let settings = state.settings();
    let key = settings.key.clone();
    let Some(slot) = refresh::take_slot(req, scf, &key) else {
        metrics::count(
            Some(zone),
            Counter::RefreshSkipped(crate::metrics::SKIP_LIMIT),
        );
        return Next::Continue;
    };
    let token = new_token();
    let lock_ms = refresh_lock_ms(state.ttl, persist, settings.lock_exptime_ms);
    let lock = lock_request(LockKind::Refresh, token, lock_ms, 0);
    let outcome = zone.with_key(&key, |t, fp| match t.error_left_ms(fp, now) {
        // The key's last refresh failed: no new one until its backoff is over.
        Some(left) => Err(left),
        None => Ok(t.try_lock_as(fp, lock, now, owner_alive)),
    });
    let outcome = match outcome {
        Some(Err(left)) => {
            metrics::count(
                Some(zone),
                Counter::RefreshSkipped(crate::metrics::SKIP_BACKOFF),
            );
            debug!(
                request_log(req),
                "stale_cache: refresh of \"{}\" backing off for {} ms",
                Short(&key),
                left
            );
            return Next::Continue;
        }
        Some(Ok(outcome)) => Some(outcome),
        None => None,
    };
    match outcome {
        Some(LockAttempt::Acquired(_)) => {}
        Some(LockAttempt::Full) => {
            zone_full(req, &zone);
            return Next::Continue;
        }
        _ => return Next::Continue,
    }
    debug!(
        request_log(req),
        "stale_cache: refresh lock of \"{}\" taken for {} ms",
        Short(&key),
        lock_ms
    );
    state.refresh_lock = Some(HeldLock { zone, key, token });
    state.refresh_slot = Some(slot);
    state.persist_pending = persist;
    if let Some(next) = lease::before_refresh(state, req) {
        // One refresh per fleet: ask the lease first (it goes on in `lease::step`).
        return next;
    }
    finish_stale(state, req, scf)
}

/// The stale path once the refresh lock is held (the body, if any, is read): prepare the
/// refresh, then keep the stale copy until it ends (see `replay::keep_copy`).
pub(super) fn finish_stale(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Next {
    state.phase = Phase::Done;
    let token = state.refresh_lock.as_ref().map(|l| l.token);
    refresh::prepare(state, req, scf);
    if state.in_grace {
        return try_backend_now(state, req, token);
    }
    if state.refresh.is_none() {
        return Next::Continue;
    }
    let settings = state.settings();
    let step = keep_copy(
        state.ttl,
        state.persist_pending,
        settings.expire_uri.is_some(),
        settings.lock_exptime_ms,
    );
    let (uri, args) = match step {
        KeepCopy::Nothing => return Next::Continue,
        KeepCopy::Persist => (settings.persist_uri.clone(), key_argument(&settings.key)),
        KeepCopy::Expire(secs) => {
            let mut args = key_argument(&settings.key);
            args.extend_from_slice(format!("&ttl={secs}").as_bytes());
            (settings.expire_uri.clone(), args)
        }
    };
    if lookup::start(state, req, &uri.unwrap_or_default(), &args).is_err() {
        return Next::Continue;
    }
    state.phase = Phase::Persisting;
    Next::Return(AGAIN)
}

/// In the error grace band, the request holding the key's fill lock asks the backend through
/// a refresh sent now (the stored copy stays untouched in Redis meanwhile), and waits for it
/// like every other request of the key: when it ends, all are served the new copy if it was
/// stored, or the old one if the backend failed (`waiters::end_refresh` leaves the marks).
fn try_backend_now(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    token: Option<core::num::NonZeroU64>,
) -> Next {
    let (Some(pending), Some(token), Some(zone)) = (state.refresh.take(), token, state.zone) else {
        // No refresh could be prepared (logged): the stored copy it is.
        state.finish(CacheStatus::StaleError);
        return Next::Continue;
    };
    refresh::send(pending);
    let budget = state.wait.deadline.saturating_sub(now_ms()).max(1);
    start_waiting(state, req, zone, token.get(), budget);
    Next::Return(AGAIN)
}

/// Woken: the lock went. If the holder stored the entry this is COLLAPSED; if its fill failed
/// (or it died), this request fills in its place and the others wait on, instead of all going
/// to the backend at once.
pub fn after_wake(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Step {
    let zone = state.zone.expect("the zone is known before waiting");
    Ok(fill_or_wait(state, req, scf, zone, now_ms()))
}

/// A missing key: fill it, or wait for the request filling it.
fn fill_or_wait(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    zone: ZoneRef,
    now: u64,
) -> Next {
    let settings = state.settings();
    let token = new_token();
    let key = settings.key.clone();
    let (lock_ms, started) = (settings.lock_exptime_ms, state.lookup_started);
    if state.wait.deadline == 0 {
        // One budget for all the waits of this request, however often it is woken.
        state.wait.deadline = now + settings.lock_timeout_ms;
    }
    let lock = lock_request(LockKind::Fill, token, lock_ms, started);
    let in_grace = state.in_grace;
    // A request that waited without a lookup (a fill was under way) may be waiting for a
    // grace-band refresh: a live error mark says that one failed, and since only refreshes of
    // stored entries leave error marks, the stored copy is there to serve.
    let may_be_grace = in_grace || (!state.looked_up && !state.after_fetch);
    let found = zone.with_key(&key, |t, fp| {
        // In the error grace band, a key whose backend just failed is not asked again
        // before its backoff ends: the stored copy is served at once.
        let failing = may_be_grace && t.error_left_ms(fp, now).is_some();
        let outcome = (!failing).then(|| t.try_lock_as(fp, lock, now, owner_alive));
        (failing, outcome, t.last_store_ms(fp, now))
    });
    let (failing, outcome, stored_at) = found.unwrap_or((false, None, None));
    if failing {
        debug!(
            request_log(req),
            "stale_cache: \"{}\" failing: the stored copy is served",
            Short(&key)
        );
        state.finish(CacheStatus::StaleError);
        return Next::Continue;
    }
    let next = after_lock(outcome, now, state.wait.deadline);
    debug!(
        request_log(req),
        "stale_cache: fill lock of \"{}\": {:?}",
        Short(&key),
        next
    );
    match next {
        AfterLock::Fill if in_grace => {
            // The backend is asked by a refresh this request prepares, and everyone waits.
            // (A body to replay was read before any lock: see `phases`.)
            let lock = HeldLock { zone, key, token };
            let Some(slot) = refresh::take_slot(req, scf, &lock.key) else {
                // Too many refreshes in flight: the stored copy it is, this time.
                waiters::release(&lock, false);
                state.finish(CacheStatus::StaleError);
                return Next::Continue;
            };
            state.refresh_lock = Some(lock);
            state.refresh_slot = Some(slot);
            return finish_stale(state, req, scf);
        }
        AfterLock::GiveUp | AfterLock::Alone if in_grace => {
            // No answer in time (or no lock to wait on): the stored copy is still there.
            state.finish(CacheStatus::StaleError);
            return Next::Continue;
        }
        AfterLock::Fill => {
            state.fill = Some(HeldLock { zone, key, token });
            metrics::count(Some(zone), Counter::FillsStarted);
            if let Some(next) = lease::before_fill(state, req) {
                // One fill per fleet: ask the lease first (it goes on in `lease::step`).
                return next;
            }
        }
        AfterLock::Served => {
            if state.wait.resumed_ms != 0 {
                let resumed = state.wait.resumed_ms;
                state.wake_delay_ms = stored_at.map(|at| resumed.saturating_sub(at));
            }
            if state.after_fetch {
                // srcache's fetch already ran for this request: let it fetch again.
                return after_fetch::refetch(state, req);
            }
        }
        AfterLock::Pass => {}
        AfterLock::Wait { holder, budget_ms } => {
            start_waiting(state, req, zone, holder, budget_ms);
            return Next::Return(AGAIN);
        }
        AfterLock::GiveUp => {
            waiters::give_up_waiting(state, req);
            return Next::Continue;
        }
        AfterLock::Alone if outcome.is_some() => zone_full(req, &zone),
        AfterLock::Alone => log::limited(
            request_log(req),
            NGX_LOG_ERR,
            "zone-unusable",
            Every::Interval,
            format_args!(
                "stale_cache: zone \"{}\" was found damaged and is being rebuilt; this request \
                 goes on without collapsing",
                String::from_utf8_lossy(&zone.name)
            ),
        ),
    }
    if let Some(status) = next.status() {
        state.finish(status);
    }
    Next::Continue
}
