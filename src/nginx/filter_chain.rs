//! This shared object's place in nginx's output filter chains: one header filter and one
//! body filter, put at the top of the chains in postconfiguration, and the filters they pass
//! the output on to.

use ngx::ffi::{
    ngx_chain_t, ngx_http_output_body_filter_pt, ngx_http_output_header_filter_pt,
    ngx_http_request_t, ngx_int_t,
};

use crate::nginx::util::ERROR;

pub type HeaderFilterFn = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;
pub type BodyFilterFn =
    unsafe extern "C" fn(*mut ngx_http_request_t, *mut ngx_chain_t) -> ngx_int_t;

static mut NEXT_HEADER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY: ngx_http_output_body_filter_pt = None;
static mut OURS: (Option<HeaderFilterFn>, Option<BodyFilterFn>) = (None, None);

/// Puts `header` and `body` at the top of the output chains (once per configuration, from
/// postconfiguration, single-threaded like every nginx filter).
pub fn install(header: HeaderFilterFn, body: BodyFilterFn) {
    // SAFETY: configuration runs on one thread, before any request; the statics are only
    // read afterwards.
    unsafe {
        NEXT_HEADER = ngx::ffi::ngx_http_top_header_filter;
        ngx::ffi::ngx_http_top_header_filter = Some(header);
        NEXT_BODY = ngx::ffi::ngx_http_top_body_filter;
        ngx::ffi::ngx_http_top_body_filter = Some(body);
        OURS = (Some(header), Some(body));
    }
}

/// Passes `r`'s header on to the next header filter.
///
/// # Safety
/// `r` must be the live request the header filter was called with.
pub unsafe fn next_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the saved next filter, set once in postconfiguration; (caller) a live request.
    unsafe { NEXT_HEADER.map_or(ERROR, |next| next(r)) }
}

/// Passes `chain` on to the next body filter.
///
/// # Safety
/// `r` and `chain` must be what the body filter was called with (or a chain replacing it).
pub unsafe fn next_body(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: as in next_header; (caller) a live request and a valid chain.
    unsafe { NEXT_BODY.map_or(ERROR, |next| next(r, chain)) }
}

/// Whether this module's filters are still the first of both chains (no filter module was
/// loaded after this one): only then may a body be swapped before any other filter sees it.
pub fn ours_first() -> bool {
    // SAFETY: the chain heads and OURS are set during configuration and only read afterwards.
    unsafe {
        let (header, body) = OURS;
        let same_header = match (ngx::ffi::ngx_http_top_header_filter, header) {
            (Some(top), Some(ours)) => core::ptr::fn_addr_eq(top, ours),
            _ => false,
        };
        let same_body = match (ngx::ffi::ngx_http_top_body_filter, body) {
            (Some(top), Some(ours)) => core::ptr::fn_addr_eq(top, ours),
            _ => false,
        };
        same_header && same_body
    }
}
