//! `stale_cache_http`: the request's own caching directives (`crate::http::request`). A
//! request that refuses what the cache holds (`no-cache`, `no-store`, `max-age`, `min-fresh`)
//! is passed to the origin like a key marked "pass": srcache does not fetch, the response
//! is stored as usual (not after `no-store`: `$stale_cache_http_skip`).

use ngx::ffi::ngx_http_request_t;

use super::conf::StaleCacheConf;
use super::http_mode::list_lines;
use super::state::RequestState;
use crate::http::request::Request;
use crate::policy::CacheStatus;

/// The request's directives (its `Cache-Control` and `Pragma` lines).
pub fn parse(req: &ngx_http_request_t) -> Request {
    Request::parse(list_lines(&req.headers_in.headers))
}

/// The request's directives when the mode is on in its location, `None` otherwise. Read
/// once per step and handed to [`pass_at_once`] and [`pass_stored`].
pub fn directives(req: &ngx_http_request_t, scf: &StaleCacheConf) -> Option<Request> {
    scf.http()?;
    Some(parse(req))
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
