//! The per-request state of a Redis location (`RedisCtx`, reached through the upstream's
//! `input_filter_ctx`), its deadline, and the buffer helpers the request and reply sides share.

use core::ffi::c_void;
use core::ptr;
use std::cell::Cell;

use ngx::ffi::{
    ngx_add_timer, ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_create_temp_buf,
    ngx_del_timer, ngx_event_t, ngx_http_request_t, ngx_http_upstream_t, ngx_msec_t, ngx_pool_t,
    NGX_LOG_ERR,
};

use super::clusterstate::ClusterReq;
use super::conf::{conf_of, ReplyMode};
use crate::nginx::log::{limited, Every};
use crate::nginx::util::{request_log, str_bytes};
use crate::resp::{BulkBody, ReplyFramer, ValueReader};

/// Where a `value`-mode reply stands while it is read.
pub(super) struct ValueState {
    /// Skips the leading commands' replies (AUTH, SELECT, ...) and reads the value's head.
    pub(super) reader: ValueReader,
    /// The bulk payload being streamed, once its length is known.
    pub(super) body: Option<BulkBody>,
    /// An integer or simple-string value, sent from memory once the header is out.
    pub(super) scalar: Option<Vec<u8>>,
}

/// Per-request state of a Redis location, reached through `u->input_filter_ctx`.
pub(super) struct RedisCtx {
    pub(super) request: *mut ngx_http_request_t,
    pub(super) mode: ReplyMode,
    pub(super) commands: usize,
    /// `raw` mode: counts complete replies so the response ends exactly after the last one,
    /// and finds error replies.
    pub(super) framer: ReplyFramer,
    /// `raw` mode: the bytes read before the status was known (see `reply`), sent first.
    pub(super) held: Vec<u8>,
    /// The server answered something unparsable (it is reachable: no backoff).
    pub(super) invalid_reply: Cell<bool>,
    pub(super) value: ValueState,
    pub(super) deadline: Deadline,
    /// This request is the one trying a server group in backoff.
    pub(super) probe: bool,
    /// Cluster mode (`stale_cache_redis_cluster`): the key's slot, redirections, the map.
    pub(super) cluster: ClusterReq,
}

/// The one deadline of a Redis request. nginx's upstream timeouts are per step and its read
/// timeout restarts at every read, so a server trickling a reply byte by byte would hold the
/// request (and the client behind srcache) for as long as it likes. This timer ends the
/// request `connect_timeout + read_timeout` after it started, whatever it is waiting for.
#[repr(C)]
pub(super) struct Deadline {
    /// First, so the timer handler can go from the event to the whole struct.
    event: ngx_event_t,
    request: *mut ngx_http_request_t,
    /// The deadline ended the request: the server is not answering usefully, as after a
    /// timeout, so the backoff starts even if a reply had begun.
    pub(super) hit: Cell<bool>,
}

impl Deadline {
    pub(super) fn new(request: *mut ngx_http_request_t) -> Self {
        Deadline {
            // SAFETY: ngx_event_t is a plain C struct; zeroed is its initial, unarmed state.
            event: unsafe { core::mem::zeroed() },
            request,
            hit: Cell::new(false),
        }
    }

    /// Starts the timer once per request (retries on another server share the deadline).
    pub(super) fn arm(&mut self, r: &ngx_http_request_t, total: ngx_msec_t) {
        if self.event.timer_set() != 0 || self.event.handler.is_some() {
            return;
        }
        // nginx's debug log reads the connection behind a timer's data.
        self.event.data = r.connection as *mut c_void;
        self.event.log = request_log(r);
        self.event.handler = Some(deadline_handler);
        self.event.set_cancelable(1);
        // SAFETY: the event lives in the request's ctx, whose drop (pool cleanup) and the
        // upstream's finalization both remove the timer before the memory goes.
        unsafe { ngx_add_timer(&mut self.event, total.max(1)) };
    }

    pub(super) fn disarm(&mut self) {
        if self.event.timer_set() != 0 {
            // SAFETY: the event is ours and armed; removing it only touches nginx's tree.
            unsafe { ngx_del_timer(&mut self.event) };
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The deadline passed: end the request through nginx's own read-timeout path, so the
/// upstream is finalized (504 before a reply began, a cut-off body after) the usual way.
unsafe extern "C" fn deadline_handler(ev: *mut ngx_event_t) {
    // SAFETY: the event is the first field of a live Deadline (repr(C)); see Deadline::arm.
    let deadline = unsafe { &*(ev as *const Deadline) };
    // SAFETY: the request outlives its ctx, and with it this armed timer.
    let req = unsafe { &*deadline.request };
    if req.upstream.is_null() {
        return;
    }
    // SAFETY: the upstream of a live request.
    let u = unsafe { &*req.upstream };
    let c = u.peer.connection;
    if c.is_null() {
        return;
    }
    deadline.hit.set(true);
    let conf = conf_of(req);
    limited(
        request_log(req),
        NGX_LOG_ERR,
        "redis deadline",
        Every::Interval,
        format_args!(
            "stale_cache: redis server {} sent no complete reply within {} ms, giving up",
            peer_name(u),
            conf.upstream.connect_timeout + conf.upstream.read_timeout
        ),
    );
    // SAFETY: `c` is the upstream's live connection; its read handler is nginx's upstream
    // handler, which checks `timedout` first and finalizes the request.
    unsafe {
        let rev = (*c).read;
        (*rev).set_timedout(1);
        if let Some(handler) = (*rev).handler {
            handler(rev);
        }
    }
}

impl ValueState {
    pub(super) fn new(commands: usize) -> Self {
        ValueState {
            reader: ValueReader::new(commands.saturating_sub(1)),
            body: None,
            scalar: None,
        }
    }
}

/// The `next` slot after the last link of the upstream's pending output.
pub(super) fn out_bufs_end(u: &mut ngx_http_upstream_t) -> *mut *mut ngx_chain_t {
    let mut tail: *mut *mut ngx_chain_t = &mut u.out_bufs;
    // SAFETY: walks the upstream's own output chain, whose links are valid to its end.
    unsafe {
        while !(*tail).is_null() {
            tail = &mut (**tail).next;
        }
    }
    tail
}

/// Appends a pool buffer holding `bytes` to `chain`.
pub(super) fn push_bytes(
    pool: *mut ngx_pool_t,
    chain: &mut *mut *mut ngx_chain_t,
    bytes: &[u8],
) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: `pool` is the live request pool; the buffer is sized for the copy.
    unsafe {
        let b = ngx_create_temp_buf(pool, bytes.len());
        if b.is_null() {
            return false;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), (*b).last, bytes.len());
        (*b).last = (*b).last.add(bytes.len());
        push_buf(pool, chain, b)
    }
}

/// Links `b` at the end of `chain` (a pointer to the last `next` field).
pub(super) fn push_buf(
    pool: *mut ngx_pool_t,
    chain: &mut *mut *mut ngx_chain_t,
    b: *mut ngx_buf_t,
) -> bool {
    // SAFETY: `pool` is live; `*chain` points at the `next` slot of the last link (or head).
    unsafe {
        let cl = ngx_alloc_chain_link(pool);
        if cl.is_null() {
            return false;
        }
        (*cl).buf = b;
        (*cl).next = ptr::null_mut();
        **chain = cl;
        *chain = &mut (*cl).next;
    }
    true
}

pub(super) fn ctx_of<'a>(u: &ngx_http_upstream_t) -> &'a mut RedisCtx {
    // SAFETY: redis_handler stored a RedisCtx from the request pool as input_filter_ctx.
    unsafe { &mut *(u.input_filter_ctx as *mut RedisCtx) }
}

pub(super) fn peer_name(u: &ngx_http_upstream_t) -> String {
    if u.peer.name.is_null() {
        return "redis".into();
    }
    // SAFETY: `peer.name` points at the chosen peer's address string while connected.
    String::from_utf8_lossy(str_bytes(unsafe { &*u.peer.name })).into_owned()
}

pub(super) fn set_status(u: &mut ngx_http_upstream_t, status: u32, content_length: i64) {
    u.headers_in.status_n = status as _;
    u.headers_in.content_length_n = content_length;
    if !u.state.is_null() {
        // SAFETY: the upstream state entry of the current try, set by nginx.
        unsafe { (*u.state).status = status as _ };
    }
}
