//! `stale_cache_http`, Vary: the variant lookup and the variables that name a request's
//! variant (`crate::http::vary` has the rules).
//!
//! `$stale_cache_http_variant`, appended to the entry's Redis key: in the TTL and fetch
//! locations (subrequests) this request's variant suffix once the lookup found that its URL
//! varies; in `srcache_store`'s arguments (the main request, its response known) the variant
//! of the response being stored, from its `Vary`; else empty. The response's normalised
//! names travel in `$stale_cache_http_windows` (`<windows>~<names>`).

use ngx::ffi::{ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_variable_value_t};
use ngx::http::HttpModuleLocationConf;

use super::error::StaleError;
use super::http_mode::{list_lines, response_headers};
use super::lookup;
use super::state::{self, Next, RequestState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::http::vary::{self, Variant};
use crate::metrics::Counter;
use crate::nginx::log::{debug, Short};
use crate::nginx::util::{pool_str, request_log, str_bytes, AGAIN};
use crate::nginx::vars::{
    add_output_variable, set_not_found, set_value, set_value_in_pool, value_slot, VAR_OK,
};
use crate::nginx::zone::ZoneRef;
use crate::policy::CacheStatus;
use crate::replay::key_argument;
use crate::stale::StaleCacheModule;

pub fn declare(cf: *mut ngx_conf_t) -> Option<()> {
    add_output_variable(cf, "stale_cache_http_variant", Some(variant_variable))
}

/// The longest this worker's memory of varying URLs grows; when full it is emptied.
const REMEMBERED_MAX: usize = 4096;

thread_local! {
    /// URLs this worker found varying (their key): the names, until when (ms) it holds. It
    /// lets a request of a varying URL go straight to its variant's memo or lookup, so that
    /// only the first request of a variant costs an extra round trip (the URL's record).
    static REMEMBERED: RefCell<HashMap<Vec<u8>, (String, u64)>> = RefCell::new(HashMap::new());
}

/// How many URLs `REMEMBERED` holds: a site without Vary skips the map (a thread-local
/// access and a hash of the key) on every request. A worker runs one thread.
static REMEMBERED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Remembers that the URL of `key` varies on `names` until `until_ms`.
pub fn remember(key: &[u8], names: &str, until_ms: u64) {
    REMEMBERED.with_borrow_mut(|m| {
        if m.len() >= REMEMBERED_MAX && !m.contains_key(key) {
            m.clear();
        }
        m.insert(key.to_vec(), (names.to_owned(), until_ms));
        REMEMBERED_LEN.store(m.len(), Ordering::Relaxed);
    });
}

/// Forgets the URL of `key` (its record may have changed).
pub fn forget(key: &[u8]) {
    REMEMBERED.with_borrow_mut(|m| {
        m.remove(key);
        REMEMBERED_LEN.store(m.len(), Ordering::Relaxed);
    });
}

fn remembered(key: &[u8], now: u64) -> Option<String> {
    if REMEMBERED_LEN.load(Ordering::Relaxed) == 0 {
        return None;
    }
    REMEMBERED.with_borrow_mut(|m| {
        let names = match m.get(key) {
            Some((names, until)) if *until > now => Some(names.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        };
        REMEMBERED_LEN.store(m.len(), Ordering::Relaxed);
        names
    })
}

fn variant_of(req: &ngx_http_request_t, names: String) -> Variant {
    let suffix = vary::variant(&names, list_lines(&req.headers_in.headers));
    Variant { names, suffix }
}

/// The first look at a request of a URL this worker knows to vary: its variant is set (so
/// the lookup, if any, is of the variant) and its variant's freshness memo asked. `true`
/// when the memo says fresh (the request is done with, as a FRESH hit).
pub fn first_look(
    state: &mut RequestState,
    req: &ngx_http_request_t,
    directives: Option<&crate::http::request::Request>,
    zone: ZoneRef,
    memo: bool,
    now: u64,
) -> bool {
    let Some(names) = remembered(&state.settings().key, now) else {
        return false;
    };
    let variant = variant_of(req, names);
    let memo_key = variant.memo_key(&state.settings().key);
    state.set_variant(Some(variant));
    let memo = if memo {
        zone.with_key(&memo_key, |t, fp| t.memo_get_born(fp, now))
            .flatten()
    } else {
        None
    };
    let Some((until_ms, born)) = memo else {
        return false;
    };
    debug!(
        request_log(req),
        "stale_cache: \"{}\" variant fresh by the memo",
        Short(&state.settings().key)
    );
    state.begin(zone, now);
    let left = crate::cache_status::memo_ttl_left(until_ms, now);
    state.set_ttl_left(Some(left));
    let age = super::memo_age::age(born, now);
    state.set_entry_age(age);
    if super::http_request::pass_stored(state, directives, age, Some(left)) {
        return true;
    }
    zone.count(Counter::MemoHits);
    state.finish(CacheStatus::Fresh);
    true
}

/// A fresh variant (`true`): its memo is set, and the worker remembers its URL varies for
/// as long. `false` for a request without a variant.
pub fn fresh(
    state: &RequestState,
    zone: ZoneRef,
    memo: bool,
    memo_ms: u64,
    now: u64,
    age: Option<u64>,
) -> bool {
    let Some(v) = state.variant() else {
        return false;
    };
    let key = &state.settings().key;
    if memo && memo_ms > 0 {
        let memo_key = v.memo_key(key);
        let born = super::memo_age::born(age, now);
        zone.with_key(&memo_key, |t, fp| {
            t.memo_set_born(fp, now.saturating_add(memo_ms), born, now)
        });
        remember(key, &v.names, now + memo_ms);
    }
    true
}

/// The lookup's answer as far as Vary goes: the URL varies (a lookup of the request's
/// variant starts), the variant is missing (`ttl` becomes -2), or the URL does not vary any
/// more (-3: it is looked up again as a whole). `None`: go on with `ttl`.
pub fn after_answer(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    vary: Option<Vec<u8>>,
    ttl: &mut i64,
) -> Option<Result<Next, StaleError>> {
    if let Some(names) = vary {
        if state
            .variant()
            .is_none_or(|v| v.names.as_bytes() != &names[..])
        {
            return Some(look_up_variant(state, req, &names));
        }
        *ttl = -2;
    }
    (*ttl == -3).then(|| no_longer_varies(state, req))
}

/// The variant's freshness memo goes (srcache missed it).
pub fn memo_clear(state: &RequestState, zone: ZoneRef, now: u64) {
    if let Some(v) = state.variant() {
        zone.with_key(&v.memo_key(&state.settings().key), |t, fp| {
            t.memo_clear(fp, now)
        });
    }
}

/// The variant lookup found the URL without its vary record: it does not vary any more. It
/// is looked up again as a whole (rare: once per change of the URL, per worker).
fn no_longer_varies(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
) -> Result<Next, StaleError> {
    if state.variant().is_none() {
        // Only a variant's lookup answers so.
        return Err(StaleError::Lookup(crate::policy::FailReason::BadReply));
    }
    forget(&state.settings().key);
    state.set_variant(None);
    start_lookup(state, req)
}

/// Starts the TTL lookup of the request's key (its variant's once `look_up_variant` set one:
/// the TTL location's keys end with `$stale_cache_http_variant`).
pub(crate) fn start_lookup(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
) -> Result<Next, StaleError> {
    let (ttl_uri, args) = {
        let settings = state.settings();
        (settings.ttl_uri.clone(), key_argument(&settings.key))
    };
    lookup::start(state.capture_mut(), req, &ttl_uri, &args)?;
    state.looking_up();
    Ok(Next::Return(AGAIN))
}

/// The URL varies on `names`: look this request's variant up (the same TTL location, whose
/// keys end with `$stale_cache_http_variant`).
fn look_up_variant(
    state: &mut RequestState,
    req: &mut ngx_http_request_t,
    names: &[u8],
) -> Result<Next, StaleError> {
    let variant = variant_of(req, String::from_utf8_lossy(names).into_owned());
    debug!(
        request_log(req),
        "stale_cache: \"{}\" varies on {}: variant {}",
        Short(&state.settings().key),
        Short(variant.names.as_bytes()),
        variant.suffix
    );
    state.set_variant(Some(variant));
    start_lookup(state, req)
}

fn set_text(r: &ngx_http_request_t, v: &mut ngx_variable_value_t, text: &str) {
    if text.is_empty() {
        set_value(v, b"");
        return;
    }
    match pool_str(r.pool, text.as_bytes()) {
        Some(s) => set_value_in_pool(v, str_bytes(&s)),
        None => set_not_found(v),
    }
}

unsafe extern "C" fn variant_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the value slot being evaluated.
    let (r, v) = unsafe { (&*r, value_slot(v)) };
    if core::ptr::eq(r.main, r) && r.headers_out.status != 0 {
        response_variant(r, v);
    } else if state::with_variant_suffix(r, |suffix| set_text(r, v, suffix)).is_none() {
        // The lookups of a URL without Vary (the usual hit): nothing to copy.
        set_value(v, b"");
    }
    VAR_OK
}

/// srcache_store's arguments: the response's variant. Out of line, so that the lookups'
/// evaluation (every hit) stays small.
#[inline(never)]
fn response_variant(r: &ngx_http_request_t, v: &mut ngx_variable_value_t) {
    let names = response_vary(r).unwrap_or_default();
    set_text(
        r,
        v,
        &vary::variant(&names, list_lines(&r.headers_in.headers)),
    );
}

/// The response's normalised Vary names, when the mode is on and the response has a status.
pub fn response_vary(r: &ngx_http_request_t) -> Option<String> {
    StaleCacheModule::location_conf(r)?.http()?;
    if r.headers_out.status == 0 {
        return None;
    }
    let lines = list_lines(response_headers(r))
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
        .map(|(_, v)| v);
    Some(vary::names(lines))
}
