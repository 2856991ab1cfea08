//! Lookups: waited subrequests to the `$cache_ttl`/`$cache_persist`/`$cache_expire`
//! locations, and the output filters that capture their answers (a few bytes) instead of
//! letting them reach the client.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_http_post_subrequest_t, ngx_http_request_t, ngx_http_subrequest, ngx_int_t,
    NGX_HTTP_SUBREQUEST_WAITED,
};

use core::ptr::NonNull;

use ngx::ffi::ngx_chain_t;

use super::error::StaleError;
use crate::nginx::bits;
use crate::nginx::log::debug;
use crate::nginx::util::{pool_str, request_log, ERROR, OK};

/// The longest TTL/PERSIST reply kept; a valid one is a few bytes.
const CAPTURE_LIMIT: usize = 256;

/// A request's lookup subrequest: the record nginx calls back with at its end, and what it
/// answered. It lives in the request's (boxed) state, so its address is stable.
pub struct Capture {
    /// Passed with every lookup subrequest; `lookup_done` and the filters find the capture
    /// through it.
    post: ngx_http_post_subrequest_t,
    pub done: bool,
    /// The subrequest failed (500 for an nginx error), 0 otherwise.
    pub failed_rc: ngx_int_t,
    pub status: usize,
    pub body: Vec<u8>,
    /// The answer was longer than CAPTURE_LIMIT: not a reply to a lookup.
    pub overflow: bool,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            post: ngx_http_post_subrequest_t {
                handler: Some(lookup_done),
                data: ptr::null_mut(),
            },
            done: false,
            failed_rc: 0,
            status: 0,
            body: Vec::new(),
            overflow: false,
        }
    }
}

impl Capture {
    /// Forgets the last answer, before a new lookup.
    fn reset(&mut self) {
        self.done = false;
        self.failed_rc = 0;
        self.status = 0;
        self.body.clear();
        self.overflow = false;
    }

    /// The lookup ran and its location answered 200.
    pub fn answered_ok(&self) -> bool {
        self.failed_rc == 0 && self.status == 200 && !self.overflow
    }
}

/// Issues a waited subrequest to `uri?args`; its answer lands in `capture`, and the
/// request's phases resume when it is done.
pub fn start(
    capture: &mut Capture,
    req: &mut ngx_http_request_t,
    uri: &[u8],
    args: &[u8],
) -> Result<(), StaleError> {
    let pool = req.pool;
    let mut uri_str = pool_str(pool, uri).ok_or(StaleError::NoMemory)?;
    let mut args_str = pool_str(pool, args).ok_or(StaleError::NoMemory)?;
    capture.reset();
    capture.post.data = capture as *mut Capture as *mut c_void;
    let mut sr: *mut ngx_http_request_t = ptr::null_mut();
    // SAFETY: req is the live main request; uri/args live in its pool; the post-subrequest
    // record lives in the state, which outlives the subrequest.
    let rc = unsafe {
        ngx_http_subrequest(
            req,
            &mut uri_str,
            &mut args_str,
            &mut sr,
            &mut capture.post,
            NGX_HTTP_SUBREQUEST_WAITED as _,
        )
    };
    // SAFETY: a subrequest nginx just created from the live main request.
    let Some(sr) = (unsafe { sr.as_mut() }).filter(|_| rc == OK) else {
        return Err(StaleError::Subrequest);
    };
    // The subrequest copies the client's headers; a lookup has no body, so the client's body
    // size must not meet the lookup location's client_max_body_size (a 413 would fail it).
    sr.headers_in.content_length_n = -1;
    sr.headers_in.set_chunked(0);
    debug!(
        request_log(req),
        "stale_cache: lookup sent: {}?{}",
        String::from_utf8_lossy(uri),
        String::from_utf8_lossy(args)
    );
    Ok(())
}

type LookupDoneFn =
    unsafe extern "C" fn(*mut ngx_http_request_t, *mut c_void, ngx_int_t) -> ngx_int_t;

/// The end of a lookup subrequest.
pub unsafe extern "C" fn lookup_done(
    sr: *mut ngx_http_request_t,
    data: *mut c_void,
    rc: ngx_int_t,
) -> ngx_int_t {
    // SAFETY: nginx calls this with the live subrequest and the data given with it, the
    // main request's capture; no step of the main request runs while a subrequest ends.
    let (sr, capture) = unsafe { (&*sr, &mut *(data as *mut Capture)) };
    capture.done = true;
    if sr.headers_out.status != 0 {
        capture.status = sr.headers_out.status;
    }
    debug!(
        request_log(sr),
        "stale_cache: lookup answered: rc {}, status {}, {} bytes",
        rc,
        capture.status,
        capture.body.len()
    );
    // SAFETY: a live subrequest has a live connection.
    let client_gone = unsafe { (*sr.connection).error() } != 0;
    if rc == ERROR && client_gone {
        return rc;
    }
    if rc >= 300 || rc == ERROR {
        // A failed lookup is recorded and the request fails open. Ending the subrequest
        // quietly keeps nginx from answering it with an error page (or, for NGX_ERROR,
        // from closing the client's connection): its output is not the client's.
        capture.failed_rc = if rc == ERROR { 500 } else { rc };
        return OK;
    }
    rc
}

/* ------------------------------------------------ capture (called by the filters) */

/// The capture waiting for `r`'s answer if `r` is one of this layer's lookup subrequests.
///
/// Recognised by its post-subrequest handler, which (unlike module contexts) survives an
/// internal redirect of the subrequest, e.g. by `error_page` when Redis is down.
pub fn waiting_capture(r: &ngx_http_request_t) -> Option<NonNull<Capture>> {
    if ptr::eq(r.main, r) {
        return None;
    }
    // SAFETY: a subrequest's post_subrequest record is null or valid while it runs.
    let ps = unsafe { r.post_subrequest.as_ref()? };
    let ours = ps
        .handler
        .is_some_and(|h| core::ptr::fn_addr_eq(h, lookup_done as LookupDoneFn));
    if ours {
        NonNull::new(ps.data as *mut Capture)
    } else {
        None
    }
}

/// Whether `r` is one of this layer's lookup subrequests.
pub fn is_lookup(r: &ngx_http_request_t) -> bool {
    waiting_capture(r).is_some()
}

/// The header of lookup subrequest `r`, whose answer `capture` waits for: its status is kept,
/// and nothing goes out.
pub fn capture_header(capture: NonNull<Capture>, r: &mut ngx_http_request_t) {
    // SAFETY: the main request's state (holding the capture) is live while its subrequest
    // runs; no step of the main request runs while the subrequest's output is filtered.
    unsafe { (*capture.as_ptr()).status = r.headers_out.status };
    bits::set_header_sent(r, true);
}

/// The body of a lookup subrequest (see `capture_header`): up to CAPTURE_LIMIT bytes are
/// kept, and the buffers are marked consumed.
///
/// # Safety
/// `chain` must be the valid chain handed to the body filter for the lookup subrequest.
pub unsafe fn capture_body(capture: NonNull<Capture>, chain: *mut ngx_chain_t) {
    // SAFETY: as in capture_header.
    let capture = unsafe { &mut *capture.as_ptr() };
    let mut cl = chain;
    // SAFETY: (caller) walks the chain handed to the filter; its links and buffers are
    // valid, and memory buffers hold `pos..last`.
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
}
