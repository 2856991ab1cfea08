//! The steps of the state machine that decide: the first look at a request (settings, memo,
//! locks), the TTL's answer (fresh, stale, missing), the stale path, and the fill lock (also
//! after a wake-up). The decisions are made by `crate::policy` and `crate::collapse`; these
//! steps gather their inputs and carry them out.

use ngx::ffi::{ngx_http_request_t, NGX_HTTP_NO_CONTENT, NGX_LOG_ERR, NGX_LOG_NOTICE};

use super::conf::StaleCacheConf;
use super::error::{warn, StaleError};
use super::phases::{read_body, Next};
use super::refresh::{self, has_body};
use super::state::{Phase, RequestState, ZoneRef};
use super::variables::read_cache_variables;
use super::waiters::{
    self, lock_request, new_token, owner_alive, start_waiting, zone_full, HeldLock,
};
use super::{after_fetch, lease, lookup, module::main_conf};
use crate::collapse::{after_lock, refresh_lock_ms, AfterLock};
use crate::locktable::{LockAttempt, LockKind, MemoOutcome};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, AGAIN};
use crate::nginx::zone;
use crate::policy::{decide, Action, CacheStatus, FailReason};
use crate::replay::key_argument;
use crate::resp::{parse_integer_reply, ReplyError};
use crate::settings::Settings;

type Step = Result<Next, StaleError>;

/// First visit: settings, bypass rules, the freshness memo and locks, then the TTL lookup.
pub fn start(state: &mut RequestState, req: &mut ngx_http_request_t, scf: &StaleCacheConf) -> Step {
    if state.is_refresh {
        if let Some(next) = lease::op_request(state, req) {
            // A renewal or release of a fleet lease this nginx holds.
            return Ok(next);
        }
        state.finish(CacheStatus::Refresh);
        return match state.restore_ttl {
            Some(ttl) => Ok(restore_expiry(state, req, ttl)),
            None => Ok(Next::Continue),
        };
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
            let pass = t.pass_left_ms(fp, now);
            // A lock whose worker died (crash, kill -9) is let go at once, not at its expiry.
            t.release_if_owner_dead(fp, now, owner_alive);
            (fresh, pass, t.lock_state(fp, now))
        })
        .unwrap_or((None, None, None));
    let log = request_log(req);
    let key = settings.key.clone();
    state.settings = Some(settings);
    if fresh.is_some() {
        debug!(log, "stale_cache: \"{}\" fresh by the memo", Short(&key));
        state.finish(CacheStatus::Fresh);
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

/// An expiry-restore request (sent by this module after a failed refresh of a key it had
/// PERSISTed): EXPIRE the key through `$cache_expire`, then answer 204 without the backend.
fn restore_expiry(state: &mut RequestState, req: &mut ngx_http_request_t, ttl: u64) -> Next {
    let no_content = Next::Return(NGX_HTTP_NO_CONTENT as _);
    let Ok(Some(settings)) = Settings::parse(&read_cache_variables(req)) else {
        return no_content;
    };
    let Some(uri) = settings.expire_uri.clone() else {
        return no_content;
    };
    let mut args = key_argument(&settings.key);
    args.extend_from_slice(format!("&ttl={}", ttl.max(1)).as_bytes());
    state.settings = Some(settings);
    if lookup::start(state, req, &uri, &args).is_err() {
        return no_content;
    }
    state.phase = Phase::Restoring;
    Next::Return(AGAIN)
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
    let zone = state.zone.expect("the zone is known before the lookup");
    let settings = state.settings();
    let now = now_ms();
    let action = decide(ttl, settings.stale_secs, settings.persist_uri.is_some());
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
            Ok(Next::Continue)
        }
        Action::FailOpen { reason } => Err(StaleError::Lookup(reason)),
        Action::FillOrWait => Ok(fill_or_wait(state, req, zone, now)),
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
    let settings = state.settings();
    let token = new_token();
    let key = settings.key.clone();
    let lock_ms = refresh_lock_ms(state.ttl, persist, settings.lock_exptime_ms);
    let lock = lock_request(LockKind::Refresh, token, lock_ms, 0);
    let outcome = zone.with_key(&key, |t, fp| t.try_lock_as(fp, lock, now, owner_alive));
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
    state.persist_pending = persist;
    if let Some(next) = lease::before_refresh(state, req) {
        // One refresh per fleet: ask the lease first (it goes on in `lease::step`).
        return next;
    }
    if has_body(req) {
        // The refresh replays the body too: read it now (proxying reuses it).
        return read_body(state, req);
    }
    finish_stale(state, req, scf)
}

/// The stale path once the refresh lock is held (and the body read, if any): prepare the
/// refresh, then PERSIST the key if asked.
pub fn finish_stale(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Next {
    state.phase = Phase::Done;
    refresh::prepare(state, req, scf);
    if state.refresh.is_none() || !state.persist_pending {
        return Next::Continue;
    }
    let settings = state.settings();
    let uri = settings.persist_uri.clone().unwrap_or_default();
    let args = key_argument(&settings.key);
    if lookup::start(state, req, &uri, &args).is_err() {
        return Next::Continue;
    }
    state.phase = Phase::Persisting;
    Next::Return(AGAIN)
}

/// Woken: the lock went. If the holder stored the entry this is COLLAPSED; if its fill failed
/// (or it died), this request fills in its place and the others wait on, instead of all going
/// to the backend at once.
pub fn after_wake(state: &mut RequestState, req: &mut ngx_http_request_t) -> Step {
    let zone = state.zone.expect("the zone is known before waiting");
    Ok(fill_or_wait(state, req, zone, now_ms()))
}

/// A missing key: fill it, or wait for the request filling it.
fn fill_or_wait(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
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
    let (outcome, stored_at) = zone
        .with_key(&key, |t, fp| {
            let outcome = t.try_lock_as(fp, lock, now, owner_alive);
            (Some(outcome), t.last_store_ms(fp, now))
        })
        .unwrap_or((None, None));
    let next = after_lock(outcome, now, state.wait.deadline);
    debug!(
        request_log(req),
        "stale_cache: fill lock of \"{}\": {:?}",
        Short(&key),
        next
    );
    match next {
        AfterLock::Fill => {
            state.fill = Some(HeldLock { zone, key, token });
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
