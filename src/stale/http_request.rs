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

pub fn directives(req: &ngx_http_request_t) -> Request {
    Request::parse(list_lines(&req.headers_in.headers))
}

/// Before any lookup: the request takes no stored response at all (`true`: passed).
#[inline]
pub fn pass_at_once(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
) -> bool {
    if scf.http().is_none() || !directives(req).refuses_any() {
        return false;
    }
    state.finish(CacheStatus::Pass);
    true
}

/// A stored response of this age, fresh for `fresh_left` more seconds, was found: `true`
/// (passed) when the request does not take it.
pub fn pass_stored(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    age: Option<u64>,
    fresh_left: Option<i64>,
) -> bool {
    if scf.http().is_none() || !directives(req).refuses(age, fresh_left) {
        return false;
    }
    state.finish(CacheStatus::Pass);
    true
}
