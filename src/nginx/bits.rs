//! The bitfields of `ngx_http_request_t` and `ngx_http_upstream_t` this module reads or
//! writes, through the C accessors of `request_bits.c` (see there why not through the
//! generated bindings, which clippy.toml denies).

use ngx::ffi::{ngx_http_request_t, ngx_http_upstream_t};

extern "C" {
    fn ngx_stale_cache_count(r: *mut ngx_http_request_t) -> u32;
    fn ngx_stale_cache_set_count(r: *mut ngx_http_request_t, count: u32);
    fn ngx_stale_cache_header_sent(r: *mut ngx_http_request_t) -> u32;
    fn ngx_stale_cache_set_header_sent(r: *mut ngx_http_request_t, on: u32);
    fn ngx_stale_cache_header_only(r: *mut ngx_http_request_t) -> u32;
    fn ngx_stale_cache_filter_finalize(r: *mut ngx_http_request_t) -> u32;
    fn ngx_stale_cache_set_keepalive(r: *mut ngx_http_request_t, on: u32);
    fn ngx_stale_cache_set_preserve_body(r: *mut ngx_http_request_t, on: u32);
    fn ngx_stale_cache_set_upstream_keepalive(u: *mut ngx_http_upstream_t, on: u32);
}

fn ptr(r: &ngx_http_request_t) -> *mut ngx_http_request_t {
    r as *const ngx_http_request_t as *mut ngx_http_request_t
}

/// `r->count`: the references that hold the request (meaningful on `r->main`).
pub fn count(r: &ngx_http_request_t) -> u32 {
    // SAFETY: a live request; the accessor only reads the field.
    unsafe { ngx_stale_cache_count(ptr(r)) }
}

/// `r->count = count` (a 16-bit field: nginx keeps it far below the limit).
pub fn set_count(r: &mut ngx_http_request_t, count: u32) {
    // SAFETY: a live request borrowed mutably; the accessor writes only the field.
    unsafe { ngx_stale_cache_set_count(r, count) }
}

/// `r->header_sent`.
pub fn header_sent(r: &ngx_http_request_t) -> bool {
    // SAFETY: a live request; the accessor only reads the flag.
    unsafe { ngx_stale_cache_header_sent(ptr(r)) != 0 }
}

/// `r->header_sent = on`.
pub fn set_header_sent(r: &mut ngx_http_request_t, on: bool) {
    // SAFETY: a live request borrowed mutably; the accessor writes only the flag.
    unsafe { ngx_stale_cache_set_header_sent(r, u32::from(on)) }
}

/// `r->header_only`.
pub fn header_only(r: &ngx_http_request_t) -> bool {
    // SAFETY: a live request; the accessor only reads the flag.
    unsafe { ngx_stale_cache_header_only(ptr(r)) != 0 }
}

/// `r->filter_finalize`.
pub fn filter_finalize(r: &ngx_http_request_t) -> bool {
    // SAFETY: a live request; the accessor only reads the flag.
    unsafe { ngx_stale_cache_filter_finalize(ptr(r)) != 0 }
}

/// `r->keepalive = on`.
pub fn set_keepalive(r: &mut ngx_http_request_t, on: bool) {
    // SAFETY: a live request borrowed mutably; the accessor writes only the flag.
    unsafe { ngx_stale_cache_set_keepalive(r, u32::from(on)) }
}

/// `r->preserve_body = on`.
pub fn set_preserve_body(r: &mut ngx_http_request_t, on: bool) {
    // SAFETY: a live request borrowed mutably; the accessor writes only the flag.
    unsafe { ngx_stale_cache_set_preserve_body(r, u32::from(on)) }
}

/// `u->keepalive = on`: the upstream's connection may go back to the keepalive cache.
pub fn set_upstream_keepalive(u: &mut ngx_http_upstream_t, on: bool) {
    // SAFETY: a live upstream borrowed mutably; the accessor writes only the flag.
    unsafe { ngx_stale_cache_set_upstream_keepalive(u, u32::from(on)) }
}
