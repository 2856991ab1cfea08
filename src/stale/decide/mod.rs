//! The steps of the state machine that decide: the first look at a request (settings, memo,
//! locks), the TTL's answer (fresh, stale, missing), the stale path, and the fill lock (also
//! after a wake-up). The decisions are made by `crate::policy` and `crate::collapse`; these
//! steps gather their inputs and carry them out.

mod born_stale;
mod lease_steps;
mod local_steps;
mod refetch;
mod ttl;
mod waiting;
mod zone_facts;

use ngx::ffi::{ngx_http_request_t, NGX_LOG_ERR, NGX_LOG_NOTICE};

use super::conf::StaleCacheConf;
use super::error::{warn, StaleError};
use super::refresh;
use super::state::{Next, RefreshHold, RequestState};
use super::waiters::{lock_request, new_token, owner_alive, zone_full, HeldLock};
use super::{hot, http_request, local, lookup, memo_age};
use crate::collapse::{after_lock, refresh_lock_ms};
use crate::flow::{fill_step, first_look, FillStep, FirstLook, ZoneFacts};
use crate::locktable::{LockAttempt, LockKind, MemoOutcome};
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{now_ms, request_log, str_bytes, AGAIN};
use crate::nginx::zone::{self, ZoneRef};
use crate::policy::{decide, Action, CacheStatus};
use crate::replay::{keep_copy, key_argument, KeepCopy};
use crate::stale::main_conf;

type Step = Result<Next, StaleError>;

pub use lease_steps::lease_step;
use lease_steps::{ask_lease, lease_op_request};
use local_steps::{go_local, lookup_away, served_kept_copy};
use refetch::refetch;
use ttl::ttl_of;
pub use waiting::give_up_waiting;
use waiting::{try_backend_now, wait_for};
use zone_facts::locked_facts;

/// First visit (settings already read by the driver): bypass rules, the freshness memo and
/// locks, then the TTL lookup.
pub fn start(state: &mut RequestState, req: &mut ngx_http_request_t, scf: &StaleCacheConf) -> Step {
    if state.is_refresh() {
        if let Some(next) = lease_op_request(state, req) {
            // A renewal or release of a fleet lease this nginx holds.
            return Ok(next);
        }
        state.finish(CacheStatus::Refresh);
        return Ok(Next::Continue);
    }
    let settings = state.settings();
    let hidden = scf.skip_header_name();
    // Byte-equal first: the usual case, and cheaper than the case-blind compare.
    if *settings.skip_fetch != *hidden && !settings.skip_fetch.eq_ignore_ascii_case(hidden) {
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
        .ok_or_else(|| StaleError::NoZone(settings.lock_zone.to_vec()))?;
    let now = now_ms();
    let memo = scf.memo_enabled();
    // In the mode, the memo also says when the entry was born (its `Age`).
    let mut memo_born = None;
    // This worker's copy of the memo (no mutex, no keyed hash), else the table's.
    let memo_epoch = memo.then(|| zone.memo_epoch()).flatten();
    let kept = memo_epoch.and_then(|epoch| zone.memos.get(&settings.key, epoch, now));
    let facts = if let Some((until, born)) = kept {
        memo_born = born;
        ZoneFacts {
            memo_fresh_until: Some(until),
            pass_left_ms: None,
            lock: None,
        }
    } else {
        locked_facts(zone, &settings.key, memo, memo_epoch, now, &mut memo_born)
    };
    if scf.http().is_none() {
        memo_born = None;
    }
    let directives = http_request::directives(req, scf);
    if http_request::pass_at_once(state, directives.as_ref()) {
        return Ok(Next::Continue);
    }
    // A URL this worker knows to vary: its variant's memo, or a lookup of its variant.
    if scf.http().is_some()
        && super::vary::first_look(state, req, directives.as_ref(), zone, memo, now)
    {
        return Ok(Next::Continue);
    }
    state.begin(zone, now);
    let log = request_log(req);
    // In the mode, a request that does not know its variant yet looks the URL up even while
    // a fill or refresh of it runs: srcache must fetch the request's variant, not the URL's.
    let blind = scf.http().is_some() && state.variant().is_none();
    match first_look(facts) {
        FirstLook::FreshByMemo { until_ms } => {
            debug!(
                log,
                "stale_cache: \"{}\" fresh by the memo",
                Short(&state.settings().key)
            );
            state.set_ttl_left(Some(crate::cache_status::memo_ttl_left(until_ms, now)));
            if scf.http().is_some() {
                let age = memo_age::age(memo_born, now);
                state.set_entry_age(age);
                let left = Some(crate::cache_status::memo_ttl_left(until_ms, now));
                if http_request::pass_stored(state, directives.as_ref(), age, left) {
                    return Ok(Next::Continue);
                }
            }
            zone.count(Counter::MemoHits);
            state.finish(CacheStatus::Fresh);
            hot::on_fresh(state, req, scf, until_ms);
            Ok(Next::Continue)
        }
        FirstLook::Passed { left_ms } => {
            // The last fill stored nothing: no lookup, no lock, no waiting while the mark
            // lasts.
            debug!(
                log,
                "stale_cache: \"{}\" passed for {} ms more",
                Short(&state.settings().key),
                left_ms
            );
            state.finish(CacheStatus::Pass);
            Ok(Next::Continue)
        }
        FirstLook::WaitForFill { .. }
            if local::enabled(req)
                && local::try_serve(state, req, 0, true) != local::Copy::None =>
        {
            // This node kept a copy while Redis was away (stale, or fresh from a fill that
            // just ended): served at once instead of waiting for the fill (this worker may
            // not have met Redis away itself: the fill runs in another).
            Ok(Next::Continue)
        }
        FirstLook::WaitForFill { holder } if !blind => {
            // A fill of this key is under way, so the key is missing: wait for it without
            // asking Redis (a burst of misses costs one TTL lookup, not one per request).
            let timeout = state.settings().lock_timeout_ms;
            state.wait_deadline(now, timeout);
            wait_for(state, req, zone, holder, timeout);
            Ok(Next::Return(AGAIN))
        }
        FirstLook::StaleRefreshRunning if !blind => {
            // A refresh of this key is under way: it is stale, and its copy lives at least
            // as long as the refresh lock (see `collapse::refresh_lock_ms`), so srcache can
            // serve it without a TTL lookup.
            debug!(
                log,
                "stale_cache: \"{}\" stale, refresh running",
                Short(&state.settings().key)
            );
            state.finish(CacheStatus::Stale);
            Ok(Next::Continue)
        }
        FirstLook::LookUp if local::skip_lookup(now) && local::enabled(req) => {
            // Redis is away (this worker's last lookup failed less than a second ago):
            // collapse on this node without asking it.
            Ok(go_local(state, req, scf, zone))
        }
        FirstLook::LookUp | FirstLook::WaitForFill { .. } | FirstLook::StaleRefreshRunning => {
            super::vary::start_lookup(state, req)
        }
    }
}

/// The TTL is in: decide and act.
pub fn after_lookup(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Step {
    let (mut ttl, entry, vary) = match ttl_of(state, scf.http().is_some()) {
        Ok(answer) => answer,
        // No answer, or a refusal saying Redis does not serve now: collapse on this node.
        Err(error) if local::saw(req, local::Seen::LookupFailed(&error), now_ms()) => {
            return Ok(lookup_away(state, req, scf, error));
        }
        Err(error) => return Err(error),
    };
    local::saw(req, local::Seen::LookupAnswered, now_ms());
    if let Some(next) = super::vary::after_answer(state, req, vary, &mut ttl) {
        return next;
    }
    let settings = state.settings();
    // An entry stored in the `stale_cache_http` mode is judged by its own windows.
    let (stale_secs, grace_secs) = entry
        .as_ref()
        .map_or((settings.stale_secs, settings.grace_secs), |e| {
            (e.stale, e.grace)
        });
    let ttl_left = crate::cache_status::ttl_left(ttl, stale_secs, grace_secs);
    state.looked_up(ttl, ttl_left);
    state.set_entry_age(entry.as_ref().map(|e| e.age(ttl)));
    let age = entry.as_ref().map(|e| e.age(ttl));
    let directives = http_request::directives(req, scf);
    if ttl >= 0 && http_request::pass_stored(state, directives.as_ref(), age, ttl_left) {
        return Ok(Next::Continue);
    }
    if let Some(e) = &entry {
        // In the grace band a refresh revalidates the stored response with its validators.
        state.set_validators(crate::http::windows::conditional_headers(e));
    }
    let zone = state.zone().expect("the zone is known before the lookup");
    let settings = state.settings();
    let now = now_ms();
    // Keeping the copy through its refresh needs `$cache_expire`: without it no PERSIST is
    // sent (see `replay::keep_copy`) and the refresh lock ends with the copy.
    let persist = settings.persist_uri.is_some() && settings.expire_uri.is_some();
    let action = decide(ttl, stale_secs, grace_secs, persist);
    debug!(
        request_log(req),
        "stale_cache: \"{}\" ttl {}: {:?}",
        Short(&settings.key),
        ttl,
        action
    );
    // An entry with its own windows is stale when its origin said so.
    if entry.is_none() && matches!(action, Action::TryBackend | Action::ServeStale { .. }) {
        born_stale::check(req, zone, state.settings(), ttl, now);
    }
    match action {
        _ if served_kept_copy(state, req, &action, now) => Ok(Next::Continue),
        Action::ServeFresh { memo_ms } => {
            // A variant is neither memoised nor kept in the hot tier under its URL's key
            // (another request may need another variant): its memo has a key of its own.
            let age = entry.as_ref().map(|e| e.age(ttl));
            if super::vary::fresh(state, zone, scf.memo_enabled(), memo_ms, now, age) {
                state.finish(CacheStatus::Fresh);
                return Ok(Next::Continue);
            }
            if scf.memo_enabled() && memo_ms > 0 {
                let born = memo_age::born(age, now);
                let stored = zone.with_key(&state.settings().key, |t, fp| {
                    t.memo_set_born(fp, now.saturating_add(memo_ms), born, now)
                });
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
            hot::on_fresh(state, req, scf, now + memo_ms);
            Ok(Next::Continue)
        }
        Action::FailOpen { reason } => Err(StaleError::Lookup(reason)),
        Action::FillOrWait => Ok(fill_or_wait(state, req, scf, zone, now)),
        Action::TryBackend => {
            state.entered_grace();
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
    // (A body to replay was read before the first step: see `driver`.)
    let settings = state.settings();
    let key = settings.key.to_vec();
    let Some(slot) = refresh::take_slot(req, scf, &key) else {
        zone.count(Counter::RefreshSkipped(crate::metrics::SKIP_LIMIT));
        return Next::Continue;
    };
    let token = new_token();
    let lock_ms = refresh_lock_ms(state.ttl(), persist, settings.lock_exptime_ms);
    let lock = lock_request(LockKind::Refresh, token, lock_ms, 0);
    let outcome = zone.with_key(&key, |t, fp| match t.error_left_ms(fp, now) {
        // The key's last refresh failed: no new one until its backoff is over.
        Some(left) => Err(left),
        None => Ok(t.try_lock_as(fp, lock, now, owner_alive)),
    });
    match outcome {
        Some(Err(left)) => {
            zone.count(Counter::RefreshSkipped(crate::metrics::SKIP_BACKOFF));
            debug!(
                request_log(req),
                "stale_cache: refresh of \"{}\" backing off for {} ms",
                Short(&key),
                left
            );
            return Next::Continue;
        }
        Some(Ok(LockAttempt::Acquired(_))) => {}
        Some(Ok(LockAttempt::Full)) => {
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
    let hold = RefreshHold {
        lock: HeldLock::new(zone, key, token),
        slot,
        persist,
    };
    if ask_lease(state, req, false) {
        // One refresh per fleet: the lease is asked first (it goes on in `lease_step`).
        state.lease_for_refresh(hold);
        return Next::Return(AGAIN);
    }
    finish_stale(state, req, scf, hold)
}

/// The stale path once the refresh lock is held (the body, if any, is read): prepare the
/// refresh, then keep the stale copy until it ends (see `replay::keep_copy`).
fn finish_stale(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    hold: RefreshHold,
) -> Next {
    state.done();
    let RefreshHold {
        lock,
        slot,
        persist,
    } = hold;
    let token = lock.token();
    let pending = refresh::prepare(
        lock,
        slot,
        state.settings(),
        state.in_grace(),
        req,
        scf,
        state.validators(),
    );
    if state.in_grace() {
        return try_backend_now(state, req, token, pending);
    }
    let Some(pending) = pending else {
        return Next::Continue;
    };
    let settings = state.settings();
    let step = keep_copy(
        state.ttl(),
        persist,
        settings.expire_uri.is_some(),
        settings.lock_exptime_ms,
    );
    let (uri, args) = match step {
        KeepCopy::Nothing => {
            state.refreshing(pending);
            return Next::Continue;
        }
        KeepCopy::Expire(secs) => {
            let mut args = key_argument(&settings.key);
            args.extend_from_slice(format!("&ttl={secs}").as_bytes());
            (settings.expire_uri.clone(), args)
        }
    };
    if lookup::start(state.capture_mut(), req, &uri.unwrap_or_default(), &args).is_err() {
        state.refreshing(pending);
        return Next::Continue;
    }
    state.persisting(pending);
    Next::Return(AGAIN)
}

/// Woken (or srcache missed): the lock went. If the holder stored the entry this is
/// COLLAPSED; if its fill failed (or it died), this request fills in its place and the others
/// wait on, instead of all going to the backend at once.
pub fn after_wake(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Step {
    let zone = state.zone().expect("the zone is known before waiting");
    state.note_wake();
    if let Some(next) = local_steps::served_after_wake(state, req) {
        return Ok(next);
    }
    Ok(fill_or_wait(state, req, scf, zone, now_ms()))
}

/// A missing key: fill it, or wait for the request filling it (`flow::fill_step` decides).
pub(super) fn fill_or_wait(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    zone: ZoneRef,
    now: u64,
) -> Next {
    let settings = state.settings();
    let token = new_token();
    let key = settings.key.to_vec();
    let (lock_ms, budget) = (settings.lock_exptime_ms, settings.lock_timeout_ms);
    let deadline = state.wait_deadline(now, budget);
    let lock = lock_request(LockKind::Fill, token, lock_ms, state.lookup_started());
    let reached = state.reached();
    let found = zone.with_key(&key, |t, fp| {
        // In the error grace band, a key whose backend just failed is not asked again
        // before its backoff ends: the stored copy is served at once.
        let failing = reached.may_be_grace() && t.error_left_ms(fp, now).is_some();
        let outcome = (!failing).then(|| t.try_lock_as(fp, lock, now, owner_alive));
        (failing, outcome, t.last_store_ms(fp, now))
    });
    let (failing, outcome, stored_at) = found.unwrap_or((false, None, None));
    let step = fill_step(
        reached,
        failing,
        after_lock(outcome, now, deadline),
        outcome.is_some(),
    );
    debug!(
        request_log(req),
        "stale_cache: fill lock of \"{}\": {:?}",
        Short(&key),
        step
    );
    match step {
        FillStep::RefreshNow => {
            // The backend is asked by a refresh this request prepares, and everyone waits.
            // (A body to replay was read before any lock: see `driver`.)
            let lock = HeldLock::new(zone, key, token);
            let Some(slot) = refresh::take_slot(req, scf, lock.key()) else {
                // Too many refreshes in flight: the stored copy it is, this time.
                lock.release(false);
                state.finish(CacheStatus::StaleError);
                return Next::Continue;
            };
            let hold = RefreshHold {
                lock,
                slot,
                persist: false,
            };
            return finish_stale(state, req, scf, hold);
        }
        FillStep::Fill => {
            // Its store is noted, to keep on this node if Redis is (or was just) away.
            local::filling(state);
            let lock = HeldLock::new(zone, key, token);
            zone.count(Counter::FillsStarted);
            if ask_lease(state, req, true) {
                // One fill per fleet: the lease is asked first (it goes on in `lease_step`).
                state.lease_for_fill(lock);
                return Next::Return(AGAIN);
            }
            state.filling(lock);
        }
        FillStep::Served { refetch: again } => {
            let resumed = state.resumed_ms();
            if resumed != 0 {
                state.set_wake_delay(stored_at.map(|at| resumed.saturating_sub(at)));
            }
            if again {
                // srcache's fetch already ran for this request: let it fetch again.
                return refetch(state, req, CacheStatus::Collapsed);
            }
        }
        FillStep::Wait { holder, budget_ms } => {
            wait_for(state, req, zone, holder, budget_ms);
            return Next::Return(AGAIN);
        }
        FillStep::GiveUp => {
            give_up_waiting(state, req);
            return Next::Continue;
        }
        FillStep::Alone { zone_full: true } => zone_full(req, &zone),
        FillStep::Alone { zone_full: false } => log::limited(
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
        FillStep::ServeStoredFailing => {
            debug!(
                request_log(req),
                "stale_cache: \"{}\" failing: the stored copy is served",
                Short(&key)
            );
        }
        FillStep::ServeStored | FillStep::Pass => {}
    }
    if let Some(status) = step.status() {
        state.finish(status);
    }
    Next::Continue
}
