//! The background refresh of a stale key: preparing it while the stale hit's request is in
//! the access phase (a replay of that request, and where to send it), sending it when the
//! request is over, and releasing the refresh lock with its outcome.

use core::fmt;

use ngx::ffi::{ngx_http_request_t, ngx_read_file, ngx_str_t, NGX_LOG_ERR};

use super::conf::StaleCacheConf;
use super::sender::{self, RefreshOutcome, RefreshTarget};
use super::state::{self, RequestState};
use super::waiters::{release, HeldLock};
use crate::nginx::log::{self, debug, Every, Short};
use crate::nginx::util::{live_headers, request_log, str_bytes};
use crate::replay::Replay;
use ngx::http::{HttpModuleServerConf, NgxHttpCoreModule};

/// The header the module's own refresh requests carry the per-start secret in.
pub const SECRET_HEADER: &str = "X-Stale-Cache-Refresh";
/// The largest request body a refresh replays.
const MAX_REPLAY_BODY: usize = 1 << 20;

/// A refresh to start once the client's request is finished.
pub struct PendingRefresh {
    request: Vec<u8>,
    uri: String,
    target: RefreshTarget,
    timeout: u64,
    lock: HeldLock,
    /// Sent if the refresh fails, to give the key it PERSISTed its expiry back.
    restore: Option<Vec<u8>>,
}

/// Why a stale hit starts no refresh.
#[derive(Debug)]
pub enum RefreshError {
    /// The client's listener cannot take a plain HTTP/1.1 refresh and none is configured.
    NoPlainListener,
    /// The body is over MAX_REPLAY_BODY or its temp file cannot be read.
    BodyNotReplayable,
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefreshError::NoPlainListener => {
                "the client came over TLS, HTTP/2 or the PROXY protocol, so the refresh cannot \
                 reuse its listener; set \"stale_cache_refresh_address\" to a plain HTTP \
                 listener (e.g. 127.0.0.1:8080 or unix:/run/nginx-refresh.sock)"
            }
            RefreshError::BodyNotReplayable => {
                "the request body is too large to replay (over 1 MiB) or unreadable; no \
                 refresh for this stale entry"
            }
        })
    }
}

/// Prepares the refresh for the refresh lock this request holds. On failure the lock is
/// released and the reason logged (rate-limited): the client still gets the stale copy.
pub fn prepare(state: &mut RequestState, req: &ngx_http_request_t, scf: &StaleCacheConf) {
    let Some(lock) = state.refresh_lock.take() else {
        return;
    };
    match build(state, req, scf, lock) {
        Ok(pending) => state.refresh = Some(pending),
        Err((lock, error)) => {
            log::limited(
                request_log(req),
                NGX_LOG_ERR,
                "refresh",
                Every::Interval,
                format_args!("stale_cache: {error}"),
            );
            release(&lock, false);
        }
    }
}

/// The refresh request (a replay of this one), where it goes, and its expiry restore.
fn build(
    state: &RequestState,
    req: &ngx_http_request_t,
    scf: &StaleCacheConf,
    lock: HeldLock,
) -> Result<PendingRefresh, (HeldLock, RefreshError)> {
    let settings = state.settings();
    let target = match target(scf, req) {
        Ok(t) => t,
        Err(e) => return Err((lock, e)),
    };
    let body = if has_body(req) {
        match body_bytes(req) {
            Some(body) => Some(body),
            None => return Err((lock, RefreshError::BodyNotReplayable)),
        }
    } else {
        None
    };
    let header_pairs: Vec<(&[u8], &[u8])> = live_headers(req)
        .map(|h| (str_bytes(&h.key), str_bytes(&h.value)))
        .collect();
    let secret = super::module::main_conf(req).secret.as_bytes();
    let mut replay = Replay {
        method: str_bytes(&req.method_name),
        target: str_bytes(&req.unparsed_uri),
        host: replay_host(req, &target),
        headers: &header_pairs,
        body: body.as_deref(),
        skip_header: &settings.skip_fetch,
        secret_header: SECRET_HEADER.as_bytes(),
        secret,
        restore_ttl: None,
    };
    let request = replay.to_bytes();
    // Only a key this request PERSISTs can need its expiry back, and only with a location to
    // send EXPIRE to.
    let restore = (state.persist_pending && settings.expire_uri.is_some()).then(|| {
        replay.restore_ttl = Some(state.ttl.max(1) as u64);
        replay.to_bytes()
    });
    Ok(PendingRefresh {
        request,
        restore,
        uri: String::from_utf8_lossy(str_bytes(&req.unparsed_uri)).into_owned(),
        target,
        timeout: settings.lock_exptime_ms,
        lock,
    })
}

/// Sends a prepared refresh; when it ends, releases its lock and, if it failed, restores the
/// expiry of the key it PERSISTed.
pub fn send(pending: PendingRefresh) {
    let PendingRefresh {
        request,
        uri,
        target,
        timeout,
        lock,
        restore,
    } = pending;
    debug!(
        crate::nginx::util::cycle_log(),
        "stale_cache: sending the refresh for \"{}\" to {}",
        Short(&lock.key),
        target.name
    );
    let (restore_target, restore_uri) = (target.clone(), uri.clone());
    sender::start(
        &target,
        request,
        uri,
        "refresh",
        timeout,
        Box::new(move |outcome: &RefreshOutcome, _ms| {
            let ok = matches!(outcome, RefreshOutcome::Status(s) if (200..300).contains(s));
            release(&lock, ok);
            if let (false, Some(bytes)) = (ok, restore) {
                // The key was PERSISTed for this refresh, which failed: without its expiry
                // back, a deleted page would be served forever.
                sender::start(
                    &restore_target,
                    bytes,
                    restore_uri,
                    "expiry restore",
                    timeout,
                    Box::new(|_: &RefreshOutcome, _| {}),
                );
            }
        }),
    );
}

/// The Host the refresh sends: the client's; for a request without one (HTTP/1.0), the
/// server's name, else the address the refresh goes to (HTTP/1.1 requires a Host).
pub(super) fn replay_host<'a>(req: &'a ngx_http_request_t, target: &'a RefreshTarget) -> &'a [u8] {
    let client = str_bytes(&req.headers_in.server);
    if !client.is_empty() {
        return client;
    }
    let server_name =
        NgxHttpCoreModule::server_conf(req).map_or(&[][..], |cscf| str_bytes(&cscf.server_name));
    if !server_name.is_empty() {
        return server_name;
    }
    target.name.as_bytes()
}

pub fn has_body(req: &ngx_http_request_t) -> bool {
    req.headers_in.content_length_n > 0 || req.headers_in.chunked() != 0
}

/// The request body's bytes, from memory and temp-file buffers; `None` when too large.
fn body_bytes(req: &ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: the read body's chain and buffers live in the request pool; file buffers refer
    // to the body's temp file, open while the request lives.
    let Some(body) = (unsafe { req.request_body.as_ref() }) else {
        return Some(out);
    };
    let mut cl = body.bufs;
    // SAFETY: as above, links are valid to the end of the chain.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        let b = unsafe { &*link.buf };
        let in_file = b.in_file() != 0 && b.memory() == 0 && b.temporary() == 0;
        let len = if in_file {
            (b.file_last - b.file_pos) as usize
        } else {
            // SAFETY: a memory buffer's `pos..last` lies within one allocation.
            unsafe { b.last.offset_from(b.pos) as usize }
        };
        if out.len() + len > MAX_REPLAY_BODY {
            return None;
        }
        let start = out.len();
        out.resize(start + len, 0);
        if in_file {
            // SAFETY: reads `len` bytes of the open temp file into the space just made.
            let n = unsafe { ngx_read_file(b.file, out.as_mut_ptr().add(start), len, b.file_pos) };
            if n != len as isize {
                return None;
            }
        } else if len > 0 {
            // SAFETY: as above.
            out[start..].copy_from_slice(unsafe { core::slice::from_raw_parts(b.pos, len) });
        }
        cl = link.next;
    }
    Some(out)
}

/// Where this request's refresh goes: the configured address, or the plain-HTTP listener the
/// client used (a wildcard one through loopback).
pub(super) fn target(
    scf: &StaleCacheConf,
    r: &ngx_http_request_t,
) -> Result<RefreshTarget, RefreshError> {
    if let Some(target) = &scf.refresh_target {
        return Ok(target.clone());
    }
    // SAFETY: a live request has its connection, and an HTTP connection its address
    // configuration.
    let (plain_listener, tls) = unsafe {
        let plain = match r.http_connection.as_ref() {
            None => true,
            Some(hc) => {
                let addr = &*hc.addr_conf;
                addr.ssl() == 0 && addr.http2() == 0 && addr.proxy_protocol() == 0
            }
        };
        (plain, !(*r.connection).ssl.is_null())
    };
    if !plain_listener || !r.stream.is_null() || tls {
        return Err(RefreshError::NoPlainListener);
    }
    // SAFETY: the connection's listener is live; its sockaddr spans socklen bytes.
    let sockaddr = unsafe {
        let ls = &*(*r.connection).listening;
        core::slice::from_raw_parts(ls.sockaddr as *const u8, ls.socklen as usize)
    };
    Ok(sender::loopback_if_wildcard(sockaddr))
}

/// A refresh that srcache answered from the cache refreshes nothing: say how to fix the
/// configuration (once per interval). Called for main requests as their header goes out.
pub fn warn_if_refresh_was_a_hit(req: &mut ngx_http_request_t) {
    if !state::peek(req).is_some_and(|s| s.is_refresh) {
        return;
    }
    let name = b"srcache_fetch_status";
    let mut key = ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: a live main request; nginx looks the variable up by name (not found: null or
    // not_found), and its value lives in the request pool.
    let hit = unsafe {
        let hash = ngx::ffi::ngx_hash_key(key.data, key.len);
        let v = ngx::ffi::ngx_http_get_variable(req, &mut key, hash);
        v.as_ref().is_some_and(|v| {
            v.valid() != 0
                && v.not_found() == 0
                && core::slice::from_raw_parts(v.data, v.len() as usize) == b"HIT"
        })
    };
    if hit {
        super::error::warn(
            req,
            "refresh-hit",
            format_args!(
                "stale_cache: the refresh of \"{}\" was answered from the cache, so nothing was \
                 refreshed; skip srcache_fetch for refreshes with \"srcache_fetch_skip \
                 $stale_cache_skip_fetch;\" (or the \"if ($http_x_skip_fetch != TRUE)\" line)",
                String::from_utf8_lossy(str_bytes(&req.unparsed_uri))
            ),
        );
    }
}
