//! The steps of the fleet lease (`super::super::lease` sends and reads it): asking before a
//! fill or a refresh, the answers (decided by `crate::flow`), the polls, and the lease
//! operation requests this nginx sends itself.

use ngx::ffi::{ngx_http_request_t, NGX_HTTP_NO_CONTENT};

use super::super::conf::StaleCacheConf;
use super::super::error::warn;
use super::super::lease;
use super::super::state::{Next, Phase, RequestState};
use super::{finish_stale, refetch, Step};
use crate::collapse::refresh_lock_ms;
use crate::flow::{lease_fill, lease_refresh, LeaseFill, LeaseRefresh};
use crate::lease::{Op, LEASE_MS};
use crate::nginx::log::{debug, Short};
use crate::nginx::util::{now_ms, request_log, AGAIN};
use crate::policy::CacheStatus;

/// Asks the fleet lease before a fill (`fill`) or a refresh, unless none is configured or it
/// was settled for this request; `true` when the request now waits for its answer (the
/// caller then moves it to the lease with what it holds: `lease_for_fill`/`_refresh`).
pub(super) fn ask_lease(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    fill: bool,
) -> bool {
    let (lease, capture, settings) = state.lease_and_capture();
    lease.wanted(settings) && lease::ask_first(lease, capture, req, settings, fill)
}

/// The lease phases (`phase`): the lease's answer, a poll due, or a lease operation's
/// answer.
pub fn lease_step(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
    phase: Phase,
) -> Step {
    if phase != Phase::LeasePoll && !state.capture().done {
        return Ok(Next::Return(AGAIN));
    }
    match phase {
        Phase::LeaseFillAsk => Ok(after_fill_answer(state, req, scf)),
        Phase::LeaseRefreshAsk => Ok(after_refresh_answer(state, req, scf)),
        Phase::LeaseOpAsk => {
            lease::op_answered(state.capture(), req);
            state.done();
            Ok(Next::Return(NGX_HTTP_NO_CONTENT as _))
        }
        // Until the timer fires, other events (a writable socket) must not move the request.
        Phase::LeasePoll if !state.lease().poll_due() => Ok(Next::Return(AGAIN)),
        Phase::LeasePoll => {
            let (lease, capture, settings) = state.lease_and_capture();
            if lease::ask(lease, capture, req, settings, Op::Fill) {
                state.ask_lease_again();
                return Ok(Next::Return(AGAIN));
            }
            Ok(settle_fill(state, CacheStatus::Miss))
        }
        _ => unreachable!("the driver calls this in the lease phases only"),
    }
}

fn settle_fill(state: &mut RequestState, status: CacheStatus) -> Next {
    state.lease_mut().settle();
    state.finish(status);
    Next::Continue
}

fn after_fill_answer(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Next {
    let key = state.settings().key.to_vec();
    let answer = lease::answer(state.capture());
    if let Err(why) = answer {
        lease::failed(req, why);
    }
    debug!(
        request_log(req),
        "stale_cache: lease of \"{}\" for a fill: {:?}",
        Short(&key),
        answer
    );
    let now = now_ms();
    let deadline = state.wait_deadline_ms();
    let poll_ms = lease::poll_interval(state.lease());
    match lease_fill(answer.ok(), now, deadline, poll_ms, state.after_fetch()) {
        LeaseFill::FillKeeping => {
            if let Some(lock) = state.fill_lock() {
                let (zone, token) = (lock.zone(), lock.token());
                lease::keep(state.lease(), state.settings(), req, scf, zone, token, true);
            }
            settle_fill(state, CacheStatus::Miss)
        }
        LeaseFill::FillUnleased => settle_fill(state, CacheStatus::Miss),
        LeaseFill::Collapsed { refetch: again } => {
            // Another node stored it: this node's waiters are served as after a local fill.
            if let Some(lock) = state.give_up_fill() {
                lock.release(true);
            }
            let next = settle_fill(state, CacheStatus::Collapsed);
            if again {
                // srcache's fetch already ran for this request: let it fetch again.
                return refetch(state, req, CacheStatus::Collapsed);
            }
            next
        }
        LeaseFill::Passed => {
            let pass_ms = state.settings().pass_ttl_ms;
            if let Some(lock) = state.give_up_fill() {
                lock.release_with_pass(false, pass_ms);
            }
            settle_fill(state, CacheStatus::Pass)
        }
        LeaseFill::FillAfterTimeout => {
            warn(
                req,
                "lease-timeout",
                format_args!(
                    "stale_cache: another node has been filling \"{}\" for longer than \
                     $cache_lock_timeout; filling here too",
                    Short(&key)
                ),
            );
            settle_fill(state, CacheStatus::Miss)
        }
        LeaseFill::Poll { ms } => {
            state.lease_mut().count_poll();
            lease::arm_poll(state.lease_mut(), req, ms);
            state.poll_lease();
            Next::Return(AGAIN)
        }
    }
}

fn after_refresh_answer(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    scf: &StaleCacheConf,
) -> Next {
    state.lease_mut().settle();
    let answer = lease::answer(state.capture());
    debug!(
        request_log(req),
        "stale_cache: lease of \"{}\" for a refresh: {:?}",
        Short(&state.settings().key),
        answer
    );
    if let Err(why) = answer {
        lease::failed(req, why);
    }
    match lease_refresh(answer.ok()) {
        LeaseRefresh::RefreshKeeping => {
            if let Some(lock) = state.refresh_lock() {
                let (zone, token) = (lock.zone(), lock.token());
                lease::keep(
                    state.lease(),
                    state.settings(),
                    req,
                    scf,
                    zone,
                    token,
                    false,
                );
            }
        }
        LeaseRefresh::RefreshUnleased => {}
        LeaseRefresh::HandOver => {
            // Another node refreshes: serve stale, and keep this node's refresh lock for a
            // lease period (never longer than the copy lives), so its stale hits neither
            // refresh nor ask Redis again meanwhile.
            if let Some(hold) = state.take_refresh_hold() {
                // (The slot goes back: this node sends no refresh.)
                hold.lock
                    .hand_over(refresh_lock_ms(state.ttl(), false, LEASE_MS));
            }
            state.done();
            return Next::Continue;
        }
    }
    // (A body to replay was read before any lock: see `driver`.)
    match state.take_refresh_hold() {
        Some(hold) => finish_stale(state, req, scf, hold),
        None => {
            state.done();
            Next::Continue
        }
    }
}

/// A request of this nginx to itself running a lease operation (renew, release, pass):
/// `None` for any other request.
pub(super) fn lease_op_request(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
) -> Option<Next> {
    let ask = lease::op_request(req)?;
    // Its 204 is no refresh that srcache failed to store (`refresh::check_stored`).
    state.mark_lease_op();
    let no_content = Next::Return(NGX_HTTP_NO_CONTENT as _);
    let Ok(Some(settings)) =
        crate::settings::Settings::parse(&super::super::variables::read_cache_variables(req))
    else {
        return Some(no_content);
    };
    state.set_settings(settings);
    let (_, capture, settings) = state.lease_and_capture();
    if !lease::send_op(&ask, capture, req, settings) {
        return Some(no_content);
    }
    state.lease_op();
    Some(Next::Return(AGAIN))
}
