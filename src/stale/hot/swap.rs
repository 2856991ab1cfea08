//! Bodies sent in place: a large stored body goes out from the zone itself (pinned), not
//! copied. srcache gets the status line, the headers and a one-byte body (its parsing,
//! headers and status stay its own); the main request's output filters, first in the
//! chains, then give the response its real length and swap the one byte for the body's
//! buffers, which point into the region (and into its memfd, for sendfile).

use core::ptr;

use ngx::ffi::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_file_t, ngx_http_request_t, ngx_pcalloc,
};

use super::region::{file_backed, Mapping};
use crate::nginx::bits;
use crate::nginx::util::request_log;
use crate::stale::main_conf;
use crate::stale::state;
use crate::stale::state::RequestState;

/// One buffer per stretch of the body (the value from `skip` on), in the main request's
/// pool, pointing into the region; also in its file where sendfile can read it.
pub(super) fn body_chain(
    m: &Mapping,
    main: &mut ngx_http_request_t,
    runs: &[(usize, usize)],
    skip: usize,
) -> Option<*mut ngx_chain_t> {
    let pool = main.pool;
    let file = if file_backed(m) {
        // SAFETY: the main request's live pool; zeroed, then the fields sendfile reads.
        let f = unsafe { ngx_pcalloc(pool, core::mem::size_of::<ngx_file_t>()) } as *mut ngx_file_t;
        // SAFETY: a fresh zeroed allocation (or null).
        let fr = unsafe { f.as_mut()? };
        fr.fd = m.fd;
        fr.name = ngx::ngx_string!("stale_cache hot zone");
        // SAFETY: a live request's connection.
        fr.log = unsafe { (*main.connection).log };
        f
    } else {
        ptr::null_mut()
    };
    let mut head: *mut ngx_chain_t = ptr::null_mut();
    let mut tail: *mut *mut ngx_chain_t = &mut head;
    let mut last: *mut ngx_buf_t = ptr::null_mut();
    let mut skip = skip;
    for &(at, len) in runs {
        if skip >= len {
            skip -= len;
            continue;
        }
        let (at, len) = (at + skip, len - skip);
        skip = 0;
        // SAFETY: the main request's live pool.
        let b = unsafe { ngx_pcalloc(pool, core::mem::size_of::<ngx_buf_t>()) } as *mut ngx_buf_t;
        // SAFETY: a fresh zeroed buffer (or null).
        let br = unsafe { b.as_mut()? };
        // SAFETY: pinned bytes of the mapped region, read-only for the buffer's life.
        unsafe {
            br.pos = m.region.add(at);
            br.last = br.pos.add(len);
        }
        br.start = br.pos;
        br.end = br.last;
        br.set_memory(1);
        if !file.is_null() {
            br.set_in_file(1);
            br.file = file;
            br.file_pos = at as i64;
            br.file_last = (at + len) as i64;
        }
        // SAFETY: the main request's live pool.
        let cl = unsafe { ngx_alloc_chain_link(pool) };
        // SAFETY: a fresh chain link (or null).
        let clr = unsafe { cl.as_mut()? };
        clr.buf = b;
        clr.next = ptr::null_mut();
        // SAFETY: `tail` points at `head` or at the previous link's `next`.
        unsafe { *tail = cl };
        tail = &mut clr.next;
        last = b;
    }
    // SAFETY: the last buffer made above (a body has at least one byte).
    unsafe { last.as_mut()? }.set_last_buf(1);
    Some(head)
}

/// The main request's header filter: srcache is sending the in-place response's header
/// with its one-byte body: give it the body's real length.
pub fn main_header(r: &mut ngx_http_request_t) {
    let Some(state) = hot_state(r) else {
        return;
    };
    // SAFETY: filters of the main request run inside srcache's send, no step of this module
    // runs meanwhile; the field borrow ends here.
    let Some(ip) = (unsafe { (*RequestState::hot_ptr(state)).in_place.as_mut() }) else {
        return;
    };
    if ip.armed {
        // A second header: a filter below this one finalized the response with another
        // (not_modified's 412, range's 416, an error page): its body is its own.
        ip.replaced = true;
        return;
    }
    if r.headers_out.content_length_n != 1 || r.headers_out.status != ip.status {
        return;
    }
    r.headers_out.content_length_n = ip.body_len as i64;
    ip.armed = true;
}

/// The main request's body filter: swaps srcache's one-byte body for the body in the zone.
/// Returns the chain to pass on.
///
/// # Safety
/// `chain` must be the valid chain handed to the main request's body filter.
pub unsafe fn main_body(r: &mut ngx_http_request_t, chain: *mut ngx_chain_t) -> *mut ngx_chain_t {
    let Some(state) = hot_state(r) else {
        return chain;
    };
    // SAFETY: as in main_header.
    let Some(ip) = (unsafe { (*RequestState::hot_ptr(state)).in_place.as_mut() }) else {
        return chain;
    };
    if !ip.armed || ip.replaced || ip.swapped || bits::filter_finalize(r) {
        return chain;
    }
    let (mut size, mut last, mut cl) = (0i64, false, chain);
    // SAFETY: (caller) valid links and buffers.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        if let Some(b) = unsafe { link.buf.as_ref() } {
            // SAFETY: as above; memory buffers hold pos..last.
            size += unsafe { b.last.offset_from(b.pos) } as i64;
            last |= b.last_buf() != 0;
        }
        cl = link.next;
    }
    ip.swapped = true;
    if size != 1 || !last {
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_ALERT,
            request_log(r),
            "stale_cache: hot tier: srcache sent {} bytes instead of the one expected; the \
             response is cut short (load ngx_http_stale_cache_module after every other \
             filter module)",
            size
        );
        // The length sent is wrong now: the connection must not carry another response.
        bits::set_keepalive(r, false);
        return chain;
    }
    ip.body
}

/// The request's state where a hot zone is configured: the filters ask for every response,
/// and without a hot zone they need not look for a state (a walk of the pool's cleanups in
/// locations without the layer).
pub(super) fn hot_state(r: &ngx_http_request_t) -> Option<core::ptr::NonNull<RequestState>> {
    main_conf(r).hot.as_ref()?;
    state::find(r)
}
