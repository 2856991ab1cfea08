//! The layer's output filters, at the top of both chains: they capture the answers of the
//! lookup subrequests, note srcache's store, serve and fill the hot tier, and start a stale
//! hit's refresh once its response is handed to the output.

use core::ptr;

use ngx::ffi::{
    ngx_chain_t, ngx_http_output_body_filter_pt, ngx_http_output_header_filter_pt,
    ngx_http_request_t, ngx_int_t,
};

use super::lookup::{lookup_done, Capture, LookupDoneFn, CAPTURE_LIMIT};
use crate::nginx::bits;
use crate::nginx::log::debug;
use crate::nginx::util::{request_log, ERROR, OK};

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// The capture waiting for `r`'s answer if `r` is one of this layer's lookup subrequests.
///
/// Recognised by its post-subrequest handler, which (unlike module contexts) survives an
/// internal redirect of the subrequest, e.g. by `error_page` when Redis is down.
fn capture_of(r: &ngx_http_request_t) -> Option<*mut Capture> {
    if ptr::eq(r.main, r) {
        return None;
    }
    // SAFETY: a subrequest's post_subrequest record is null or valid while it runs.
    let ps = unsafe { r.post_subrequest.as_ref()? };
    let ours = ps
        .handler
        .is_some_and(|h| core::ptr::fn_addr_eq(h, lookup_done as LookupDoneFn));
    (ours && !ps.data.is_null()).then_some(ps.data as *mut Capture)
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls filters with a live request.
    let req = unsafe { &mut *r };
    if ptr::eq(req.main, req) {
        super::hot::main_header(req);
        let is_refresh = super::state::peek(req).is_some_and(|s| s.is_refresh);
        super::refresh::on_response_header(req, is_refresh);
    } else if let Some(capture) = capture_of(req) {
        // SAFETY: the main request's state is live while its subrequest runs; no step of the
        // main request runs while the subrequest's output is filtered.
        unsafe { (*capture).status = req.headers_out.status };
        bits::set_header_sent(req, true);
        return OK;
    } else {
        note_store(req);
    }
    // SAFETY: the saved next filter of the chain, set once in postconfiguration.
    unsafe { NEXT_HEADER_FILTER.map_or(ERROR, |next| next(r)) }
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls filters with a live request.
    let Some(capture) = capture_of(unsafe { &*r }) else {
        // SAFETY: as above; the chain is the one handed to this filter.
        if unsafe { !ptr::eq((*r).main, r) } {
            // SAFETY: as above.
            unsafe { super::hot::fetch_output(&*r, chain) };
        }
        // SAFETY: as above.
        let chain = if unsafe { ptr::eq((*r).main, r) } {
            // SAFETY: a live main request and the chain handed to this filter.
            unsafe { super::hot::main_body(&mut *r, chain) }
        } else {
            chain
        };
        // SAFETY: the saved next filter of the chain, set once in postconfiguration.
        let rc = unsafe { NEXT_BODY_FILTER.map_or(ERROR, |next| next(r, chain)) };
        // SAFETY: as above; the chain's links and buffers are valid during the call.
        let last = unsafe { ptr::eq((*r).main, r) && chain_has_last_buf(chain) };
        if last {
            // SAFETY: a live main request.
            super::refresh::output_done(unsafe { &*r });
        }
        return rc;
    };
    // SAFETY: as in header_filter.
    let capture = unsafe { &mut *capture };
    let mut cl = chain;
    // SAFETY: walks the chain handed to the filter; its links and buffers are valid, and
    // memory buffers hold `pos..last`.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above; the filter owns the buffer's positions while it runs.
        let b = unsafe { &mut *link.buf };
        if b.in_file() == 0 || b.memory() != 0 || b.temporary() != 0 {
            // SAFETY: as above.
            let len = unsafe { b.last.offset_from(b.pos) } as usize;
            if len > 0 {
                // SAFETY: as above.
                let bytes = unsafe { core::slice::from_raw_parts(b.pos, len) };
                let room = CAPTURE_LIMIT.saturating_sub(capture.body.len());
                capture.overflow |= bytes.len() > room;
                capture
                    .body
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            b.pos = b.last;
        }
        if b.in_file() != 0 {
            b.file_pos = b.file_last;
        }
        cl = link.next;
    }
    OK
}

/// Records the answer of srcache's store subrequest in the main request's state: a fill
/// counts only when its answer was stored. The store is recognised as the subrequest that
/// carries a body (the response to cache) and starts after the main response's header went
/// out; srcache's fetch, the only other subrequest srcache makes, runs before it.
fn note_store(sr: &ngx_http_request_t) {
    // SAFETY: a live subrequest's main request is live.
    let main = unsafe { &*sr.main };
    if sr.request_body.is_null() || !bits::header_sent(main) {
        return;
    }
    let Some(state) = super::state::find(sr) else {
        return;
    };
    // SAFETY: as in header_filter: no step of the main request runs while a subrequest's
    // output is filtered; a single field is written through the pointer.
    unsafe { (*state.as_ptr()).note_store(sr.headers_out.status) };
    debug!(
        request_log(sr),
        "stale_cache: store subrequest answered {}", sr.headers_out.status
    );
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

/// Whether this module's filters are the first of both chains (no filter module was loaded
/// after this one): the hot tier then sends bodies in place (see `hot::InPlace`).
pub fn filters_first() -> bool {
    // SAFETY: the chain heads are set during configuration and only read afterwards.
    unsafe {
        ngx::ffi::ngx_http_top_header_filter
            .is_some_and(|f| core::ptr::fn_addr_eq(f, header_filter as HeaderFilterFn))
            && ngx::ffi::ngx_http_top_body_filter
                .is_some_and(|f| core::ptr::fn_addr_eq(f, body_filter as BodyFilterFn))
    }
}

type HeaderFilterFn = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;
type BodyFilterFn = unsafe extern "C" fn(*mut ngx_http_request_t, *mut ngx_chain_t) -> ngx_int_t;

/// Puts the capture filters at the top of the output chains.
pub fn install_filters() {
    // SAFETY: called once from postconfiguration, single-threaded, like every nginx filter.
    unsafe {
        NEXT_HEADER_FILTER = ngx::ffi::ngx_http_top_header_filter;
        ngx::ffi::ngx_http_top_header_filter = Some(header_filter);
        NEXT_BODY_FILTER = ngx::ffi::ngx_http_top_body_filter;
        ngx::ffi::ngx_http_top_body_filter = Some(body_filter);
    }
}
