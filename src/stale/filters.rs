//! The layer's output filters, first in both chains: each response is classified once, then
//! handed to the rooms that act on it.
//!
//! - the main request: the hot tier's in-place body swap (`hot::main_header`,
//!   `hot::main_body`), the refresh's view of the response (`refresh::on_response_header`,
//!   `refresh::output_done`) and, in `stale_cache_http`, the `Age` of a response from the
//!   cache (`age_header`);
//! - a lookup subrequest of this layer (known by its post-subrequest handler,
//!   `lookup::lookup_done`): its answer is captured (`lookup::capture_header`,
//!   `lookup::capture_body`) and goes no further;
//! - srcache's store subrequest (known by its location's role, `super::role`): its status is
//!   recorded in the main request's state, since a fill counts only when it was stored; and
//!   its fetch, when it found the entry in Redis (then srcache stores nothing, and the fill
//!   counts as stored: the entry is there);
//! - any other subrequest: passed on; the hot tier's fill tap (`hot::fetch_output`) looks
//!   for the fetch subrequest it marked in PREACCESS (its identity survives an internal
//!   redirect, where the location, and so the role, would change).

use core::ptr::{self, NonNull};

use ngx::ffi::{ngx_chain_t, ngx_http_request_t, ngx_int_t};
use ngx::http::HttpModuleLocationConf;

use super::lookup::Capture;
use super::role::{self, Declared};
use super::state::{self, RequestState};
use super::{age_header, hot, lookup, refresh};
use crate::nginx::filter_chain;
use crate::nginx::log::debug;
use crate::nginx::role::Role;
use crate::nginx::util::{request_log, OK};
use crate::stale::{main_conf, StaleCacheModule};

/// What a response passing the filters is.
enum Kind {
    Main,
    /// A lookup subrequest, and the capture waiting for its answer.
    Lookup(NonNull<Capture>),
    Subrequest,
}

fn classify(r: &ngx_http_request_t) -> Kind {
    if ptr::eq(r.main, r) {
        return Kind::Main;
    }
    match lookup::waiting_capture(r) {
        Some(state) => Kind::Lookup(state),
        None => Kind::Subrequest,
    }
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls filters with a live request.
    let req = unsafe { &mut *r };
    match classify(req) {
        Kind::Main => {
            hot::main_header(req);
            let peek = state::peek(req);
            let is_refresh = peek.as_ref().is_some_and(|s| s.is_refresh);
            refresh::on_response_header(req, is_refresh);
            super::http_mode::on_main_header(req, is_refresh);
            if age_header::write(req, peek.and_then(|p| p.entry_age)) {
                // SAFETY: a live request, in its header filter.
                return age_header::while_written(r, || unsafe { filter_chain::next_header(r) });
            }
        }
        Kind::Lookup(state) => {
            lookup::capture_header(state, req);
            return OK;
        }
        Kind::Subrequest => note_answer(req),
    }
    // SAFETY: a live request, in its header filter.
    unsafe { filter_chain::next_header(r) }
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls filters with a live request.
    let req = unsafe { &mut *r };
    match classify(req) {
        Kind::Main => {
            // SAFETY: the chain handed to this filter.
            let chain = unsafe { hot::main_body(req, chain) };
            // SAFETY: the live request and the chain to pass on.
            let rc = unsafe { filter_chain::next_body(r, chain) };
            // SAFETY: the chain's links and buffers are valid during the call.
            if unsafe { chain_has_last_buf(chain) } {
                refresh::output_done(req);
            }
            rc
        }
        Kind::Lookup(state) => {
            // SAFETY: the chain handed to this lookup subrequest's body filter.
            unsafe { lookup::capture_body(state, chain) };
            OK
        }
        Kind::Subrequest => {
            // SAFETY: the chain handed to this subrequest's body filter.
            unsafe { hot::fetch_output(req, chain) };
            // SAFETY: the live request and the chain handed to this filter.
            unsafe { filter_chain::next_body(r, chain) }
        }
    }
}

/// Records the answer of srcache's store subrequest in the main request's state (a fill
/// counts only when its answer was stored), and a fetch that found the entry in Redis.
fn note_answer(sr: &ngx_http_request_t) {
    if lookup::is_lookup(sr) {
        return;
    }
    let Some(state) = state::find(sr) else {
        return;
    };
    let declared = StaleCacheModule::location_conf(sr).map_or(Declared::Unset, |c| c.role);
    let status = sr.headers_out.status;
    // Only a filler's fetch matters (`fill_end`); a fresh hit's is not looked at further.
    // SAFETY: the state is live while its request is; no step of the main request runs
    // while a subrequest's output is filtered (so the key is not changed meanwhile).
    let filler_found = status == 200 && unsafe { RequestState::is_filling(state) };
    let key = filler_found
        .then(|| {
            // SAFETY: as above.
            unsafe { RequestState::key_ptr(state) }
        })
        .flatten();
    match role::of_subrequest(sr, declared, &main_conf(sr).roles, key) {
        Some(Role::Store) => {
            // SAFETY: as above.
            unsafe { RequestState::note_store(state, status) };
            debug!(
                request_log(sr),
                "stale_cache: store subrequest answered {}", status
            );
        }
        // srcache sends a 200 fetch from the cache and runs no store (a filler whose lookup
        // saw the key missing may find it there: it was stored meanwhile). The hot tier's or
        // a local copy's answer is not Redis's.
        Some(Role::Fetch) if filler_found && !answered_here(state) => {
            // SAFETY: as above.
            unsafe { RequestState::note_fetch_found(state) };
            debug!(request_log(sr), "stale_cache: fetch found the entry");
        }
        _ => {}
    }
}

/// Whether the hot tier or a local copy answered the request's fetch (not Redis).
fn answered_here(state: core::ptr::NonNull<RequestState>) -> bool {
    // SAFETY: a live state (see `note_answer`); only its hot part is read.
    unsafe { hot::request::Hot::answered_fetch(RequestState::hot_ptr(state)) }
}

/// Whether `chain` carries the response's last buffer.
///
/// # Safety
/// `chain` must be null or a valid chain whose links and buffers are valid.
unsafe fn chain_has_last_buf(mut chain: *mut ngx_chain_t) -> bool {
    // SAFETY: (caller) valid links and buffers.
    while let Some(link) = unsafe { chain.as_ref() } {
        // SAFETY: (caller) as above.
        if unsafe { link.buf.as_ref() }.is_some_and(|b| b.last_buf() != 0) {
            return true;
        }
        chain = link.next;
    }
    false
}

/// Puts the filters at the top of the output chains (postconfiguration).
pub fn install() {
    filter_chain::install(header_filter, body_filter);
}
