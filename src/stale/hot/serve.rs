//! Answering srcache's fetch subrequest from the hot zone: in the subrequest's PREACCESS,
//! a fetch (known by its location's role) of a key planned to be served is given this
//! module's content handler, which answers as the Redis location would have: 200 with the
//! stored response as body. Large bodies are pinned and go out in place (`super::swap`).

use core::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_create_temp_buf, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_int_t, ngx_palloc,
};
use ngx::http::HttpModuleLocationConf;

use super::region::HotZone;
use super::request::InPlace;
use super::swap::body_chain;
use crate::hotcache::{blank_line_end, parse_status, Pin, Plan};
use crate::nginx::bits;
use crate::nginx::filter_chain;
use crate::nginx::log::{debug, Short};
use crate::nginx::role::Role;
use crate::nginx::util::{now_ms, request_log, DECLINED, ERROR, OK};
use crate::policy::CacheStatus;
use crate::stale::lookup;
use crate::stale::role::{self, Declared};
use crate::stale::state::{self, RequestState};
use crate::stale::{main_conf, StaleCacheModule};

/// Bodies from this size on are sent from the zone in place (pinned); smaller ones are
/// copied, which costs less than a pin.
const IN_PLACE_MIN: usize = 8192;
/// Where to look for the end of the stored status line and headers.
const HEADER_SCAN: usize = 16384;
/// Stretches of one response sent in place (a more fragmented copy is copied).
const MAX_RUNS: usize = 64;

/// Whether `sr` is srcache's fetch subrequest (for the request whose cache key is `key`):
/// known by the role of the location it goes to (see `crate::stale::role`).
fn is_fetch(sr: &ngx_http_request_t, key: &[u8]) -> bool {
    if lookup::is_lookup(sr) {
        return false;
    }
    let declared = StaleCacheModule::location_conf(sr).map_or(Declared::Unset, |c| c.role);
    role::of_subrequest(sr, declared, &main_conf(sr).roles, Some(key)) == Some(Role::Fetch)
}

/// Whether `sr` is srcache's store subrequest.
fn is_store(sr: &ngx_http_request_t) -> bool {
    if lookup::is_lookup(sr) {
        return false;
    }
    let declared = StaleCacheModule::location_conf(sr).map_or(Declared::Unset, |c| c.role);
    role::of_subrequest(sr, declared, &main_conf(sr).roles, None) == Some(Role::Store)
}

/// The stretches of a pinned value in the region, as `(offset, len)`.
struct Runs {
    at: [(usize, usize); MAX_RUNS],
    n: usize,
    overflow: bool,
}

impl Runs {
    fn push(&mut self, at: usize, len: usize) {
        if self.n == MAX_RUNS {
            self.overflow = true;
        } else {
            self.at[self.n] = (at, len);
            self.n += 1;
        }
    }
}

/// What the hot tier hands srcache's fetch.
enum Answer {
    /// The whole value, copied into a buffer of the subrequest's pool.
    Copied(usize),
    /// The value pinned in place.
    Pinned(Pin, usize, u32),
}

/// PREACCESS of a subrequest: srcache's fetch of a request the hot tier serves is answered
/// here (its content handler replaced), or marked to fill the zone.
pub fn subrequest(sr: &mut ngx_http_request_t) -> ngx_int_t {
    let Some(state) = state::find(sr) else {
        return DECLINED;
    };
    // SAFETY: a subrequest's phase runs when no step of its main request does; this is the
    // only borrow of the state until it returns.
    let state = unsafe { &mut *state.as_ptr() };
    let Some(fetch) = state.settings_if_read().map(|s| is_fetch(sr, &s.key)) else {
        return DECLINED;
    };
    if fetch {
        // (How it ends tells a failed fetch from a miss: `driver::entry_gone`.)
        state.note_fetch_request(sr);
    }
    let (hot, Some(key)) = state.hot_and_key() else {
        return DECLINED;
    };
    if hot.plan == Plan::Nothing {
        return DECLINED;
    }
    if hot.plan == Plan::KeepStore {
        // Redis is away and this request fills: note what its store carries.
        if hot.store.is_none() && is_store(sr) {
            hot.store = Some(Box::new(super::request::StoreNote {
                body: sr.request_body,
                exptime: crate::collapse::store_exptime(crate::nginx::util::str_bytes(&sr.args)),
            }));
        }
        return DECLINED;
    }
    if !hot.fetch.is_null() || !fetch {
        return DECLINED;
    }
    hot.fetch = sr;
    if hot.plan == Plan::Fill {
        return DECLINED;
    }
    // SAFETY: the main request is live while its subrequest runs.
    let main = unsafe { &mut *sr.main };
    let Some(scf) = StaleCacheModule::location_conf(main) else {
        return DECLINED;
    };
    // A local copy (Redis away) is served to the end of its fresh period.
    let (zone, max_age) = if hot.local {
        (super::region::local_zone(sr), u64::MAX)
    } else {
        (main_conf(sr).hot.as_ref(), scf.hot_max_age_ms())
    };
    let Some(zone) = zone else {
        return DECLINED;
    };
    let now = now_ms();
    let pool = sr.pool;
    let mut buf: *mut ngx_buf_t = ptr::null_mut();
    // In place only while this module's filters come first (they swap the body).
    // (Without a hot zone the filters do not look for the state: local copies are copied.)
    let in_place_ok = filter_chain::ours_first() && main_conf(sr).hot.is_some();
    let mut runs = Runs {
        at: [(0, 0); MAX_RUNS],
        n: 0,
        overflow: false,
    };
    let answer = zone
        .with_key(key, |t, fp| {
            let len = t.servable_len(fp, key, now, max_age)?;
            if len >= IN_PLACE_MIN && in_place_ok {
                if let Some((pid, owner)) = zone.owner(t) {
                    let pin = t.pin(owner, pid, fp, key, now, max_age, |at, n| runs.push(at, n));
                    match pin {
                        Some(pin) if !runs.overflow => {
                            return Some(Answer::Pinned(pin, owner, pid))
                        }
                        Some(pin) => t.unpin(owner, pid, &pin),
                        None => {}
                    }
                }
            }
            t.read(fp, key, now, max_age, |len| {
                if len == 0 {
                    return None;
                }
                // SAFETY: the subrequest's live pool; the buffer lives as long as it.
                buf = unsafe { ngx_create_temp_buf(pool, len) };
                // SAFETY: a non-null temp buffer has `len` writable bytes at `pos`.
                unsafe { buf.as_mut() }
                    .map(|b| unsafe { core::slice::from_raw_parts_mut(b.pos, len) })
            })
            .map(Answer::Copied)
        })
        .flatten();
    let len = match answer {
        None => {
            // Gone or too old since the decision: srcache asks Redis as usual.
            hot.plan = Plan::Nothing;
            return DECLINED;
        }
        Some(Answer::Copied(len)) => {
            // SAFETY: the buffer made above, `len` bytes filled.
            unsafe { (*buf).last = (*buf).pos.add(len) };
            len
        }
        Some(Answer::Pinned(pin, owner, pid)) => {
            match in_place(zone, main, sr, pin, owner, pid, &runs) {
                Some((head, in_place)) => {
                    buf = head;
                    hot.in_place = Some(in_place);
                    pin.value_len
                }
                None => {
                    zone.with_table(|t| t.unpin(owner, pid, &pin));
                    hot.plan = Plan::Nothing;
                    return DECLINED;
                }
            }
        }
    };
    hot.served = buf;
    let (in_place, local) = (hot.in_place.is_some(), hot.local);
    debug!(
        request_log(sr),
        "stale_cache: \"{}\" answered from the hot tier ({} bytes{})",
        Short(key),
        len,
        if in_place { ", in place" } else { "" }
    );
    if !local {
        // (The borrows of the state's parts ended.)
        state.set_status(CacheStatus::Hot);
    }
    sr.content_handler = Some(serve_content);
    DECLINED
}

/// Prepares a pinned value to be sent in place: the buffer srcache's fetch gets (status
/// line, headers, the body's first byte) and the body's buffers for the main request.
/// `None`: not a stored response this can split (the caller unpins and lets Redis answer).
fn in_place(
    zone: &HotZone,
    main: &mut ngx_http_request_t,
    sr: &ngx_http_request_t,
    pin: Pin,
    owner: usize,
    pid: u32,
    runs: &Runs,
) -> Option<(*mut ngx_buf_t, InPlace)> {
    let m = zone.mapping()?;
    let runs = &runs.at[..runs.n];
    // SAFETY: pinned stretches of the mapped region: no writer touches them until unpinned.
    let piece =
        |&(at, len): &(usize, usize)| unsafe { core::slice::from_raw_parts(m.region.add(at), len) };
    // The stored head: status line and headers, up to the blank line.
    let body_at = blank_line_end(runs.iter().map(piece), HEADER_SCAN)?;
    let body_len = pin.value_len.checked_sub(body_at).filter(|&n| n > 0)?;
    // srcache gets the head and the body's first byte (swapped later for the whole body).
    let head_len = body_at + 1;
    // SAFETY: the subrequest's live pool.
    let head = unsafe { ngx_create_temp_buf(sr.pool, head_len) };
    // SAFETY: a non-null temp buffer has `head_len` writable bytes at `pos`.
    let head_bytes = unsafe { core::slice::from_raw_parts_mut(head.as_mut()?.pos, head_len) };
    let mut copied = 0;
    for p in runs.iter().map(piece) {
        let n = p.len().min(head_len - copied);
        head_bytes[copied..copied + n].copy_from_slice(&p[..n]);
        copied += n;
        if copied == head_len {
            break;
        }
    }
    let status = parse_status(head_bytes)?;
    // SAFETY: `head_len` bytes were written at `pos`.
    unsafe { (*head).last = (*head).pos.add(head_len) };
    let body = body_chain(&m, main, runs, body_at)?;
    Some((
        head,
        InPlace {
            pin,
            owner,
            pid,
            body,
            body_len,
            status,
            armed: false,
            replaced: false,
            swapped: false,
        },
    ))
}

/// The fetch subrequest's content handler when the hot tier answers it: a 200 with the
/// stored value as body, as the Redis location would answer.
unsafe extern "C" fn serve_content(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let sr = unsafe { &mut *r };
    let Some(state) = state::find(sr) else {
        return ERROR;
    };
    // SAFETY: as in `subrequest`: no step of the main request runs now.
    let buf = unsafe { (*RequestState::hot_ptr(state)).served };
    // SAFETY: the buffer was made in this subrequest's pool by `subrequest`.
    let Some(b) = (unsafe { buf.as_mut() }) else {
        return ERROR;
    };
    // SAFETY: as above.
    let len = unsafe { b.last.offset_from(b.pos) } as i64;
    sr.headers_out.status = 200;
    sr.headers_out.content_length_n = len;
    // SAFETY: a live subrequest whose headers are set.
    let rc = unsafe { ngx_http_send_header(sr) };
    if rc == ERROR || rc > OK || bits::header_only(sr) {
        return rc;
    }
    b.set_last_in_chain(1);
    // SAFETY: the subrequest's pool; the chain link lives as long as the request.
    let cl =
        unsafe { ngx_palloc(sr.pool, core::mem::size_of::<ngx_chain_t>()) } as *mut ngx_chain_t;
    if cl.is_null() {
        return ERROR;
    }
    // SAFETY: a fresh allocation of one chain link.
    unsafe {
        cl.write(ngx_chain_t {
            buf,
            next: ptr::null_mut(),
        })
    };
    // SAFETY: a live subrequest and a valid one-link chain.
    unsafe { ngx_http_output_filter(sr, cl) }
}
