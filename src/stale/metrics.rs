//! Counting into the zone's counters (`crate::metrics`), and `stale_cache_metrics`: the
//! content handler answering them in Prometheus's text format.
//!
//! Counting costs a load and a store in the worker's own lane (`crate::metrics::Lane`) per
//! event, without the zone's mutex. A request's final status, its fill's end and its wake-up
//! delay are counted once, when it ends (`state::end_of_request`); the other events where
//! they happen.

use crate::nginx::bits;
use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_command_t, ngx_conf_t, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_pcalloc,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use super::state::RequestState;
use super::variables::cache_lock_value;
use crate::collapse::FillEnd;
use crate::metrics::{render, render_hot, Count, Counter, ZoneMetrics};
use crate::nginx::util::{CONF_OK, ERROR};
use crate::nginx::zone;
use crate::nginx::zone::ZoneRef;
use crate::policy::CacheStatus;
use crate::stale::main_conf;

/// Adds one to `counter` of `zone`.
#[inline]
pub fn count(zone: Option<ZoneRef>, counter: Counter) {
    if let Some(c) = zone.as_deref().and_then(zone::Zone::counters) {
        c.incr(counter);
    }
}

/// The zone `r`'s `$cache_lock` names, for requests the layer let go before it looked the
/// zone up (BYPASS, REFRESH, settings errors). Only reads variables already evaluated (set by
/// the location's `set`), so it is safe while the request is being freed.
pub fn zone_of_request(r: &ngx_http_request_t) -> Option<ZoneRef> {
    let name = cache_lock_value(r)?;
    zone::find(&main_conf(r).zones, name).map(ZoneRef::new)
}

/// The request is over: counts its final status, its fill's end, the pass mark that end set,
/// and its wake-up delay. Runs once per request.
pub fn request_ended(state: &RequestState, filled: bool, r: &ngx_http_request_t, end: FillEnd) {
    let Some(status) = state.status() else {
        return;
    };
    let zone = match state.zone() {
        Some(z) => Some(z),
        None if !state.is_purge() => zone_of_request(r),
        None => None,
    };
    let Some(c) = zone.as_deref().and_then(zone::Zone::counters) else {
        return;
    };
    if state.is_purge() {
        // Counted as purges only.
        return;
    }
    c.incr(Counter::Requests(status));
    if filled {
        let outcome = match end {
            FillEnd::Stored => 0,
            FillEnd::NotStored => 1,
            FillEnd::Abandoned => 2,
        };
        c.incr(Counter::Fills(outcome));
        let pass_ms = state.settings_if_read().map_or(0, |s| s.pass_ttl_ms);
        if end == FillEnd::NotStored && pass_ms > 0 {
            c.incr(Counter::PassMarks);
        }
    }
    if let (CacheStatus::Collapsed, Some(ms)) = (status, state.wake_delay_ms()) {
        c.observe_wake_delay(ms);
    }
}

/// A request failed open with error kind `kind` (see `error::StaleError`).
pub fn error(state: &RequestState, r: &ngx_http_request_t, kind: &str) {
    let zone = state.zone().or_else(|| zone_of_request(r));
    if let Some(i) = crate::metrics::ERROR_KINDS.iter().position(|&k| k == kind) {
        count(zone, Counter::Errors(i));
    }
}

/* ---------------------------------------------------------- the endpoint */

/// `stale_cache_metrics;` — the location answers the zones' counters.
pub unsafe extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this with the configuration being parsed, inside a location.
    let cfr = unsafe { &*cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cfr) else {
        return crate::nginx::util::CONF_ERROR;
    };
    clcf.handler = Some(metrics_handler);
    CONF_OK
}

/// The exposition of every zone of the configuration.
fn exposition(r: &ngx_http_request_t) -> String {
    let zones = &main_conf(r).zones;
    let names: Vec<String> = zones
        .iter()
        .map(|z| String::from_utf8_lossy(&z.name).into_owned())
        .collect();
    let data: Vec<ZoneMetrics<'_>> = zones
        .iter()
        .zip(&names)
        .map(|(z, name)| ZoneMetrics {
            name,
            counters: z.snapshot().unwrap_or_default(),
            // Constant time under the mutex: a scrape never holds it for long.
            table: z.with_table(|t| t.stats()),
        })
        .collect();
    let mut out = render(&data);
    crate::redis::sentinel::render(&mut out);
    if let Some(hot) = main_conf(r).hot.as_ref() {
        if let Some(stats) = hot.stats() {
            render_hot(&mut out, &String::from_utf8_lossy(&hot.name), &stats);
        }
    }
    out
}

unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs content handlers with a live main request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: live request; a GET's body (if any) is read and dropped.
    let rc = unsafe { ngx_http_discard_request_body(req) };
    if rc != 0 {
        return rc;
    }
    let body = exposition(req);
    send_text(req, NGX_HTTP_OK as usize, METRICS_TYPE, body.as_bytes())
}

const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers `r` with `status` and `body` (copied to the request's pool); the return value is
/// what the content handler returns (or, from a phase handler, what to finalize with).
pub fn send_text(
    req: &mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    body: &[u8],
) -> ngx_int_t {
    req.headers_out.status = status;
    req.headers_out.content_length_n = body.len() as i64;
    req.headers_out.content_type.len = content_type.len();
    req.headers_out.content_type.data = content_type.as_ptr() as *mut u8;
    req.headers_out.content_type_len = content_type.len();
    // SAFETY: live request; the header filters run now.
    let rc = unsafe { ngx_http_send_header(req) };
    if rc == ERROR || rc > 0 || bits::header_only(req) || body.is_empty() {
        return rc;
    }
    // SAFETY: pool allocations of the live request, zeroed by ngx_pcalloc; the buffer and
    // its bytes live as long as the request.
    unsafe {
        let data = ngx_pcalloc(req.pool, body.len()) as *mut u8;
        let buf = ngx_pcalloc(req.pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if data.is_null() || buf.is_null() {
            return ERROR;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), data, body.len());
        (*buf).start = data;
        (*buf).pos = data;
        (*buf).last = data.add(body.len());
        (*buf).end = (*buf).last;
        (*buf).set_memory(1);
        (*buf).set_last_buf(if ptr::eq(req.main, req) { 1 } else { 0 });
        (*buf).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(req, &mut out)
    }
}
