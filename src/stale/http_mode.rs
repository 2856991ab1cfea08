//! `stale_cache_http`: the HTTP-semantics mode's directive and variables. The rules are pure
//! (`crate::http`); this file hands them a response's status and headers and gives srcache
//! their answers:
//!
//! - `$stale_cache_http_skip`: why the response is not stored (empty when it is), for
//!   `srcache_store_skip`;
//! - `$stale_cache_http_exptime`: how long Redis keeps it (fresh + stale + grace), for
//!   `srcache_store`'s exptime;
//! - `$stale_cache_http_windows`: the entry's windows, stored beside it in `<key>:w`;
//! - `$stale_cache_http_lookup_script`: the TTL lookup's script, which answers the TTL with the
//!   entry's windows, so each entry is judged by its own;
//! - `$stale_cache_http_store_script`: the store location's script, which merges a `304` into
//!   the stored response;
//! - `$stale_cache_http_age`: the `Age` of a response served from the cache.

use core::ffi::{c_char, c_void};

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_list_part_t, ngx_list_t,
    ngx_table_elt_t, ngx_variable_value_t,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::StaleCacheConf;
use super::lookup;
use super::state;
use crate::http::{invalidate, judge, Limits, Skip, Verdict, Windows, LOOKUP_SCRIPT, STORE_SCRIPT};
use crate::nginx::util::{conf_args, conf_error, pool_str, request_log, str_bytes, CONF_OK};
use crate::nginx::vars::{
    add_output_variable, set_not_found, set_value, set_value_in_pool, value_slot, VAR_OK,
};
use crate::stale::StaleCacheModule;

/// `stale_cache_http on [default=T] [max_fresh=T] [stale=T] [max_stale=T] [stale_if_error=T]
/// [max_stale_if_error=T] [invalidate=URI] | off;`
pub unsafe extern "C" fn set_http(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the directive with the configuration being parsed, the
    // command, and this module's StaleCacheConf of the block.
    let (cfr, cmd, scf) = unsafe { (&*cf, &*cmd, &mut *(conf as *mut StaleCacheConf)) };
    if scf.http.is_some() {
        return conf_error(cf, cmd, "is duplicate");
    }
    let mut args: Vec<&[u8]> = conf_args(cfr)[1..].iter().map(str_bytes).collect();
    if let Some(i) = args.iter().position(|a| a.starts_with(b"invalidate=")) {
        let uri = &args.remove(i)[b"invalidate=".len()..];
        if !uri.starts_with(b"/") {
            return conf_error(
                cf,
                cmd,
                "invalidate= expects a location such as /redisinvalidate",
            );
        }
        scf.http_invalidate = Some(uri.to_vec());
    }
    match Limits::from_args(&args) {
        Ok(limits) => {
            scf.http = Some(limits);
            CONF_OK
        }
        Err(e) => conf_error(cf, cmd, &e),
    }
}

pub fn declare(cf: *mut ngx_conf_t) -> Option<()> {
    add_output_variable(cf, "stale_cache_http_skip", Some(verdict_variable::<SKIP>))?;
    add_output_variable(
        cf,
        "stale_cache_http_exptime",
        Some(verdict_variable::<EXPTIME>),
    )?;
    add_output_variable(
        cf,
        "stale_cache_http_windows",
        Some(verdict_variable::<WINDOWS>),
    )?;
    add_output_variable(cf, "stale_cache_http_age", Some(age_variable))?;
    add_output_variable(cf, "stale_cache_http_lookup_script", Some(script_variable))?;
    super::vary::declare(cf)?;
    add_output_variable(
        cf,
        "stale_cache_http_store_script",
        Some(store_script_variable),
    )
}

/// Fills `v` with a copy of `text` in `r`'s pool.
fn set_pool_value(r: &ngx_http_request_t, v: &mut ngx_variable_value_t, text: &str) {
    match pool_str(r.pool, text.as_bytes()) {
        Some(s) => set_value_in_pool(v, str_bytes(&s)),
        None => set_not_found(v),
    }
}

/// The header lines of an nginx list, deleted ones (hash 0) left out.
pub(super) fn list_lines(list: &ngx_list_t) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut part: *const ngx_list_part_t = &list.part;
    let mut index = 0;
    core::iter::from_fn(move || {
        // SAFETY: a header list of a live request: each part holds `nelts` elements and the
        // last part's `next` is null; the elements are only read.
        unsafe {
            while !part.is_null() {
                if index < (*part).nelts {
                    let h = &*((*part).elts as *const ngx_table_elt_t).add(index);
                    index += 1;
                    if h.hash != 0 {
                        return Some((str_bytes(&h.key), str_bytes(&h.value)));
                    }
                } else {
                    part = (*part).next;
                    index = 0;
                }
            }
        }
        None
    })
}

/// What the backend sent (X-Accel-Expires included, which nginx does not pass on), else the
/// response's own headers.
pub(super) fn response_headers(r: &ngx_http_request_t) -> &ngx_list_t {
    // SAFETY: r is live; its upstream, when set, lives in its pool.
    match unsafe { r.upstream.as_ref() } {
        Some(u) if u.headers_in.headers.part.nelts > 0 => &u.headers_in.headers,
        _ => &r.headers_out.headers,
    }
}

/// The mode's verdict on `r`'s response, `None` when the mode is off in its location or the
/// response has no status yet.
fn verdict(r: &ngx_http_request_t) -> Option<Verdict> {
    let limits = StaleCacheModule::location_conf(r)?.http()?;
    let status = u16::try_from(r.headers_out.status)
        .ok()
        .filter(|&s| s != 0)?;
    // A request with no-store: nothing of the exchange is stored (RFC 9111 5.2.1.5).
    if super::http_request::parse(r).no_store {
        return Some(Verdict::Skip(Skip::NoStore));
    }
    let headers = response_headers(r);
    let authorization = !r.headers_in.authorization.is_null();
    // SAFETY: nginx's cached time is set up before any request runs.
    let now = unsafe { (*ngx::ffi::ngx_cached_time).sec };
    let verdict = judge(status, list_lines(headers), authorization, now, limits);
    Some(match verdict {
        // A refresh revalidating an entry got a full answer the cache would not keep: it is
        // kept for one second, stale from birth, so that the requests waiting for the
        // refresh are served this answer (from Redis, as every collapsed request is) and
        // the next request asks the origin again. Answers that must not be stored at all
        // (no-store, private, ...) are not.
        Verdict::Skip(Skip::NoFreshness | Skip::Expired | Skip::Status)
            if status != 304 && state::peek(r).is_some_and(|p| p.is_refresh) =>
        {
            Verdict::Store(Windows {
                fresh: 0,
                stale: 0,
                grace: 1,
                age: 0,
            })
        }
        v => v,
    })
}

/// The variables of the store verdict: `$stale_cache_http_skip` (why not stored, or empty),
/// `$stale_cache_http_exptime` (the store's life), `$stale_cache_http_windows` (the entry's
/// windows, and the names it varies on).
const SKIP: u8 = 0;
const EXPTIME: u8 = 1;
const WINDOWS: u8 = 2;

unsafe extern "C" fn verdict_variable<const WHICH: u8>(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    match (WHICH, verdict(r)) {
        (SKIP, Some(Verdict::Skip(why))) => set_value(v, why.as_str().as_bytes()),
        (SKIP, _) => set_value(v, b""),
        (EXPTIME, Some(Verdict::Store(w))) => set_pool_value(r, v, &w.total().to_string()),
        (WINDOWS, Some(Verdict::Store(w))) => {
            // A response that varies: its names ride along, for the URL's vary record.
            let names = super::vary::response_vary(r).unwrap_or_default();
            let text = if names.is_empty() {
                w.encode()
            } else {
                format!("{}~{names}", w.encode())
            };
            set_pool_value(r, v, &text)
        }
        _ => set_not_found(v),
    }
    VAR_OK
}

unsafe extern "C" fn age_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    // Empty while `add_header` could add a second Age to the one the filter wrote.
    let age = state::peek(r)
        .and_then(|p| p.entry_age)
        .filter(|_| !super::age_header::hidden(r));
    // Static below 100 s, else formatted on the stack and copied into the pool.
    match age.and_then(|age| super::age_header::age_value(r, age)) {
        Some(s) => set_value_in_pool(v, str_bytes(&s)),
        None => set_not_found(v),
    }
    VAR_OK
}

unsafe extern "C" fn script_variable(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_value(unsafe { value_slot(v) }, LOOKUP_SCRIPT.as_bytes());
    VAR_OK
}

/// The main request's response header: an unsafe request answered 2xx/3xx invalidates its
/// URL (and its same-host Location/Content-Location) through the `invalidate=` location.
/// Safe methods return after a few field tests (`is_refresh`: the request is a refresh);
/// the rare work is out of line, so the usual hit pays no more.
#[inline]
pub fn on_main_header(req: &mut ngx_http_request_t, is_refresh: bool) {
    const SAFE: usize = (ngx::ffi::NGX_HTTP_GET
        | ngx::ffi::NGX_HTTP_HEAD
        | ngx::ffi::NGX_HTTP_OPTIONS
        | ngx::ffi::NGX_HTTP_TRACE) as usize;
    if req.method & SAFE != 0 {
        if !req.headers_in.if_none_match.is_null() && !req.headers_in.if_modified_since.is_null() {
            both_conditions(req);
        }
        if is_refresh && (200..300).contains(&req.headers_out.status) {
            refresh_answered(req);
        }
        return;
    }
    unsafe_method(req);
}

/// RFC 9110 13.2.2: If-Modified-Since is evaluated only without If-None-Match; nginx's
/// not-modified filter (after this one) would let it overrule a matching ETag.
#[inline(never)]
fn both_conditions(req: &mut ngx_http_request_t) {
    if StaleCacheConf::http_mode_in(req) {
        req.headers_in.if_modified_since = core::ptr::null_mut();
    }
}

/// A refresh whose answer may not be stored at all (no-store, private, ...): the entry it
/// was to replace goes, so nobody is served the old answer in its place. (A 304 is not a new
/// answer: the stored one stays.)
#[inline(never)]
fn refresh_answered(req: &mut ngx_http_request_t) {
    if StaleCacheConf::http_mode_in(req) && matches!(verdict(req), Some(Verdict::Skip(_))) {
        invalidate_urls(req, false);
    }
}

#[inline(never)]
fn unsafe_method(req: &mut ngx_http_request_t) {
    if !invalidate::is_unsafe(str_bytes(&req.method_name))
        || !invalidate::invalidating_status(req.headers_out.status)
    {
        return;
    }
    invalidate_urls(req, true);
}

/// Sends the `invalidate=` location the request's URL, and with `locations` its same-host
/// Location and Content-Location.
fn invalidate_urls(req: &mut ngx_http_request_t, locations: bool) {
    let Some(uri) = StaleCacheModule::location_conf(req)
        .filter(|c| c.http().is_some())
        .and_then(|c| c.http_invalidate.clone())
    else {
        return;
    };
    let scheme = crate::nginx::vars::by_name(req, b"scheme").map(<[u8]>::to_vec);
    let host = crate::nginx::vars::by_name(req, b"host").map(<[u8]>::to_vec);
    let (Some(scheme), Some(host)) = (scheme, host) else {
        return;
    };
    let origin = [&scheme[..], b"://", &host[..]].concat();
    let url = [&origin[..], str_bytes(&req.unparsed_uri)].concat();
    let line = |name: &[u8]| {
        list_lines(&req.headers_out.headers)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| invalidate::same_origin_url(&origin, v))
    };
    let (loc, cl) = if locations {
        (line(b"location"), line(b"content-location"))
    } else {
        (None, None)
    };
    let args = invalidate::arguments(&url, loc.as_deref(), cl.as_deref());
    let Some(mut state) = state::attach(req) else {
        return;
    };
    // SAFETY: one step at a time (see `state`): a response header filter of the main request
    // holds no other borrow of its state.
    let state = unsafe { state.as_mut() };
    // This node's own memory of the URLs goes first, synchronously: the DEL below answers
    // later, or not at all while Redis is away.
    let mut keys = vec![url];
    for k in [loc, cl].into_iter().flatten() {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    super::invalidation::begin(state, req, keys);
    if lookup::start(state.capture_mut(), req, &uri, &args).is_err() {
        crate::nginx::log::limited(
            request_log(req),
            ngx::ffi::NGX_LOG_ERR,
            "invalidate",
            crate::nginx::log::Every::Interval,
            format_args!("stale_cache: the invalidation subrequest could not start"),
        );
    }
}

unsafe extern "C" fn store_script_variable(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_value(unsafe { value_slot(v) }, STORE_SCRIPT.as_bytes());
    VAR_OK
}
