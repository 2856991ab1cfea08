//! `stale_cache_purge METHOD ...;`: a request with one of those methods deletes its URL's
//! entry instead of being served. The key is the location's own `$cache_key`; the entry is
//! deleted through the `$cache_purge` location (Redis `DEL`), and the zone forgets the key's
//! memo, pass mark and last-store memory, so the next request looks the key up, finds it
//! missing and collapses into one fill. A fill under way keeps its lock.
//!
//! Variants: the subrequest's arguments are `key=<escaped key>&url=<escaped $uri>`. A
//! `DEL $redis_key` location ignores `url`; one that runs `$stale_cache_purge_script`
//! ([`crate::purge_script`]) deletes every key the store location listed in the URL's variant
//! set as well (docs/purge.md, "All variants of a URL").
//!
//! It runs in PRECONTENT, after the access phase, so nginx's `allow`/`deny` (inside
//! `limit_except`) guard it, and before the location's content handler (`proxy_pass`).

use core::ffi::{c_char, c_void};

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_discard_request_body, ngx_http_finalize_request,
    ngx_http_request_t, ngx_int_t, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_NOT_FOUND, NGX_HTTP_OK,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ERR,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf};

use super::conf::StaleCacheConf;
use super::lookup;
use super::metrics::{count, send_text};
use super::state::{self, Purge, RequestState};
use super::variables::read_cache_variables;
use crate::locktable::Forgotten;
use crate::metrics::Counter;
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{
    conf_args, conf_error, now_ms, request_log, str_bytes, AGAIN, CONF_ERROR, CONF_OK, DECLINED,
    DONE,
};
use crate::nginx::zone;
use crate::nginx::zone::ZoneRef;
use crate::replay::key_argument;
use crate::resp::parse_integer_reply;
use crate::settings::Settings;
use crate::stale::{main_conf, StaleCacheModule};

/// `stale_cache_purge METHOD ... | off;`
pub unsafe extern "C" fn set_purge(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for the location-level directive with the configuration being
    // parsed, the command, and this module's StaleCacheConf of the location.
    let (cfr, cmd, scf) = unsafe { (&*cf, &*cmd, &mut *(conf as *mut StaleCacheConf)) };
    if scf.purge_methods.is_some() {
        return conf_error(cf, cmd, "is duplicate");
    }
    let args = &conf_args(cfr)[1..];
    if args.len() == 1 && str_bytes(&args[0]) == b"off" {
        scf.purge_methods = Some(Vec::new());
        return CONF_OK;
    }
    let mut methods = Vec::new();
    for arg in args {
        let m = str_bytes(arg);
        if m.is_empty() || m.len() > 32 || !m.iter().all(u8::is_ascii_uppercase) {
            let message = format!(
                "invalid method \"{}\" (an uppercase method such as PURGE or DELETE)",
                String::from_utf8_lossy(m)
            );
            return conf_error(cf, cmd, &message);
        }
        if m == b"GET" || m == b"HEAD" {
            return conf_error(cf, cmd, "GET and HEAD would purge on every read");
        }
        methods.push(m.to_vec());
    }
    scf.purge_methods = Some(methods);
    let Some(mcf) = StaleCacheModule::main_conf_mut(cfr) else {
        return CONF_ERROR;
    };
    mcf.purges = true;
    CONF_OK
}

/// The PRECONTENT handler: answers the purge methods of the location.
pub unsafe extern "C" fn precontent_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs phase handlers with a live request.
    let req = unsafe { &mut *r };
    if !core::ptr::eq(req.main, r) {
        return DECLINED;
    }
    let scf = StaleCacheModule::location_conf(req).expect("every location has a conf");
    let method = str_bytes(&req.method_name);
    if !scf
        .purge_methods
        .as_ref()
        .is_some_and(|ms| ms.iter().any(|m| m == method))
    {
        return DECLINED;
    }
    let Some(mut state) = state::attach(req) else {
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    };
    // SAFETY: one step at a time (see `state`): this handler is the only borrower.
    let state = unsafe { state.as_mut() };
    match state.purge() {
        None => start(state, req),
        Some(p) if p.answered => DECLINED,
        Some(_) if !state.capture().done => AGAIN,
        Some(_) => answer(state, req),
    }
}

/// Forgets the key in the zone and sends the `DEL`.
fn start(state: &mut RequestState, req: &mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: live main request; a purge's body means nothing and is dropped.
    let rc = unsafe { ngx_http_discard_request_body(req) };
    if rc != 0 {
        return rc;
    }
    let settings = match Settings::parse(&read_cache_variables(req)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return fail(
                state,
                req,
                None,
                "$cache_lock, $cache_ttl and $cache_key are unset",
            )
        }
        Err(e) => return fail(state, req, None, &e.to_string()),
    };
    let zone = zone::find(&main_conf(req).zones, &settings.lock_zone).map(ZoneRef::new);
    let now = now_ms();
    let forgotten = zone
        .and_then(|z| z.with_key(&settings.key, |t, fp| t.forget(fp, now)))
        .unwrap_or_default();
    // The hot copy on this node goes too (other nodes' within their max age).
    super::hot::forget(req, &settings.key);
    debug!(
        request_log(req),
        "stale_cache: purge of \"{}\": zone had {:?}",
        Short(&settings.key),
        forgotten
    );
    state.set_purge(Purge {
        key: settings.key.to_vec(),
        zone,
        forgotten,
        answered: false,
    });
    let Some(uri) = settings.purge_uri.clone() else {
        return fail(state, req, zone, "$cache_purge names no location");
    };
    // `url` names the variant set of a store location that keeps one (ignored otherwise).
    let mut args = key_argument(&settings.key);
    args.extend_from_slice(b"&url=");
    args.extend(key_argument(str_bytes(&req.uri)).iter().skip(b"key=".len()));
    if lookup::start(state.capture_mut(), req, &uri, &args).is_err() {
        return fail(
            state,
            req,
            zone,
            "the $cache_purge subrequest could not start",
        );
    }
    AGAIN
}

/// The `DEL` answered: report what was removed.
fn answer(state: &mut RequestState, req: &mut ngx_http_request_t) -> ngx_int_t {
    let capture = state.capture();
    let deleted = if capture.answered_ok() {
        parse_integer_reply(&capture.body).ok()
    } else {
        None
    };
    let purge = state.purge().expect("a purge under way");
    let zone = purge.zone;
    let Some(deleted) = deleted else {
        return fail(state, req, zone, "the $cache_purge location failed");
    };
    let f = purge.forgotten;
    let removed = deleted > 0 || f.memo || f.pass_mark;
    let word = |b: bool| if b { "removed" } else { "none" };
    let redis = match deleted {
        ..=0 => "not found".to_string(),
        1 => "deleted".to_string(),
        n => format!("deleted {n} keys"),
    };
    let body = format!(
        "key: {}\nredis: {}\nmemo: {}\npass-mark: {}\n",
        String::from_utf8_lossy(&purge.key),
        redis,
        word(f.memo),
        word(f.pass_mark),
    );
    let (status, result) = if removed {
        (NGX_HTTP_OK, 0)
    } else {
        (NGX_HTTP_NOT_FOUND, 1)
    };
    count(zone, Counter::Purges(result));
    respond(state, req, status as usize, body.as_bytes())
}

/// The purge could not be done: logged (rate-limited), answered 502 with the reason.
fn fail(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    zone: Option<ZoneRef>,
    why: &str,
) -> ngx_int_t {
    log::limited(
        request_log(req),
        NGX_LOG_ERR,
        "purge",
        Every::Interval,
        format_args!("stale_cache: purge failed: {why}"),
    );
    count(zone, Counter::Purges(2));
    let body = format!("purge failed: {why}\n");
    respond(state, req, NGX_HTTP_BAD_GATEWAY as usize, body.as_bytes())
}

fn respond(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    status: usize,
    body: &[u8],
) -> ngx_int_t {
    match state.purge_mut() {
        Some(p) => p.answered = true,
        None => state.set_purge(Purge {
            key: Vec::new(),
            zone: None,
            forgotten: Forgotten::default(),
            answered: true,
        }),
    }
    let rc = send_text(req, status, "text/plain", body);
    // SAFETY: live main request; ends it with the output's result, as the content phase
    // does; the phase engine is told the request is taken care of (DONE).
    unsafe { ngx_http_finalize_request(req, rc) };
    DONE
}
