//! `stale_cache_http`: the request's own caching directives (`crate::http::request`). A
//! request that refuses what the cache holds (`no-cache`, `no-store`, `max-age`, `min-fresh`)
//! is passed to the origin like a key marked "pass": srcache does not fetch, the response
//! is stored as usual (not after `no-store`: `$stale_cache_http_skip`).

use ngx::ffi::{ngx_http_request_t, ngx_list_part_t, ngx_list_t, ngx_table_elt_t};

use super::conf::StaleCacheConf;
use super::http_mode::list_lines;
use super::state::RequestState;
use crate::http::request::Request;
use crate::policy::CacheStatus;

/// The request's directives (its `Cache-Control` and `Pragma` lines). Most requests have
/// neither: one pass over the names' lengths finds that out, and only a request with a name
/// as long as one of them is parsed.
pub fn parse(req: &ngx_http_request_t) -> Request {
    if !has_name_of_len(
        &req.headers_in.headers,
        b"cache-control".len(),
        b"pragma".len(),
    ) {
        return Request::default();
    }
    Request::parse(list_lines(&req.headers_in.headers))
}

/// Whether a live line of `list` has a name `a` or `b` bytes long.
fn has_name_of_len(list: &ngx_list_t, a: usize, b: usize) -> bool {
    let mut part: *const ngx_list_part_t = &list.part;
    // SAFETY: a header list of a live request: each part holds `nelts` elements and the last
    // part's `next` is null; the elements are only read.
    unsafe {
        while let Some(p) = part.as_ref() {
            let elts = p.elts as *const ngx_table_elt_t;
            for i in 0..p.nelts {
                let h = &*elts.add(i);
                if (h.key.len == a || h.key.len == b) && h.hash != 0 {
                    return true;
                }
            }
            part = p.next;
        }
    }
    false
}

/// The request's directives when the mode is on in its location and the request has any,
/// `None` otherwise (a plain request refuses nothing: [`pass_at_once`] and [`pass_stored`]
/// then return at once). Read once per step and handed to them.
#[inline]
pub fn directives(req: &ngx_http_request_t, scf: &StaleCacheConf) -> Option<Request> {
    scf.http()?;
    Some(parse(req)).filter(|d| !d.is_plain())
}

/// Before any lookup: the request takes no stored response at all (`true`: passed).
#[inline]
pub fn pass_at_once(state: &mut RequestState, directives: Option<&Request>) -> bool {
    if !directives.is_some_and(Request::refuses_any) {
        return false;
    }
    state.finish(CacheStatus::Pass);
    true
}

/// A stored response of this age, fresh for `fresh_left` more seconds, was found: `true`
/// (passed) when the request does not take it.
#[inline]
pub fn pass_stored(
    state: &mut RequestState,
    directives: Option<&Request>,
    age: Option<u64>,
    fresh_left: Option<i64>,
) -> bool {
    if !directives.is_some_and(|d| d.refuses(age, fresh_left)) {
        return false;
    }
    state.finish(CacheStatus::Pass);
    true
}
