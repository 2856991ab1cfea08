//! The native Redis locations' content handler, on nginx's upstream framework (keepalive
//! pools, timeouts, next-server retries come from nginx): the backoff after an outage, the
//! per-request context and the pipelined RESP request. Replies are read in `reply`.

use core::ffi::c_void;
use core::ptr;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_add_timer, ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t,
    ngx_connection_log_error_e_NGX_ERROR_INFO, ngx_create_temp_buf, ngx_del_timer, ngx_event_t,
    ngx_http_complex_value, ngx_http_discard_request_body, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_http_upstream_create, ngx_http_upstream_init,
    ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_int_t, ngx_msec_t, ngx_str_t,
    NGX_HTTP_BAD_GATEWAY, NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};

use super::conf::{RedisArg, RedisConf, ReplyMode};
use super::module::RedisModule;
use super::reply::{filter, filter_init, process_header};
use crate::nginx::bits;
use crate::nginx::log::{limited, Every};
use crate::nginx::util::{current_msec, request_log, str_bytes, DONE, ERROR, OK};
use crate::resp::{self, BulkBody, ReplyFramer, ValueReader};

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
    /// `raw` mode: counts complete replies so the response ends exactly after the last one.
    pub(super) framer: ReplyFramer,
    /// The server answered something unparsable (it is reachable: no backoff).
    pub(super) invalid_reply: core::cell::Cell<bool>,
    pub(super) value: ValueState,
    pub(super) deadline: Deadline,
    /// This request is the one trying a server group in backoff.
    probe: bool,
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
    hit: Cell<bool>,
}

impl Deadline {
    fn new(request: *mut ngx_http_request_t) -> Self {
        Deadline {
            // SAFETY: ngx_event_t is a plain C struct; zeroed is its initial, unarmed state.
            event: unsafe { core::mem::zeroed() },
            request,
            hit: Cell::new(false),
        }
    }

    /// Starts the timer once per request (retries on another server share the deadline).
    fn arm(&mut self, r: &ngx_http_request_t, total: ngx_msec_t) {
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

    fn disarm(&mut self) {
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

/// The location's settings, valid for the whole configuration cycle (ngx's accessor).
fn conf_of(r: &ngx_http_request_t) -> &'static RedisConf {
    RedisModule::location_conf(r).expect("every location has a RedisConf")
}

pub(super) fn peer_name(u: &ngx_http_upstream_t) -> String {
    if u.peer.name.is_null() {
        return "redis".into();
    }
    // SAFETY: `peer.name` points at the chosen peer's address string while connected.
    String::from_utf8_lossy(str_bytes(unsafe { &*u.peer.name })).into_owned()
}

/// A server group's state in this worker after a failure (absent: up).
#[derive(Clone, Copy)]
struct Backoff {
    /// Until then, every location using the group answers 502 without trying.
    until: ngx_msec_t,
    /// Once `until` has passed, one request (the probe) tries the server while the others
    /// still answer 502; set when it started, 0 when none runs.
    probe_since: ngx_msec_t,
    /// How long a probe may run before another may start (a probe whose request never
    /// reached the upstream finalizer must not keep the group down for ever).
    probe_limit: ngx_msec_t,
}

impl Backoff {
    fn probing(&self, now: ngx_msec_t) -> bool {
        self.probe_since != 0 && now.wrapping_sub(self.probe_since) < self.probe_limit
    }

    /// Whether requests are answered 502 without trying the server.
    fn refusing(&self, now: ngx_msec_t) -> bool {
        now < self.until || self.probing(now)
    }
}

thread_local! {
    /// Per worker and Redis server group: after a connect failure or timeout, every location
    /// using the group answers 502 at once (srcache's fetch and store locations share one
    /// outage, and its one log line), then one request at a time probes the server.
    static BACKOFF: RefCell<HashMap<usize, Backoff>> = RefCell::new(HashMap::new());
}

fn group_of(conf: &RedisConf) -> usize {
    conf.upstream.upstream as usize
}

/// What a request to `conf`'s group does now: `None` to answer 502 at once, `Some(probe)` to
/// go to the server (`probe`: it is the one request trying a group in backoff).
fn admit(conf: &RedisConf) -> Option<bool> {
    let now = current_msec();
    BACKOFF.with(|b| {
        let mut b = b.borrow_mut();
        let Some(state) = b.get_mut(&group_of(conf)) else {
            return Some(false);
        };
        if state.refusing(now) {
            return None;
        }
        state.probe_since = now.max(1);
        Some(true)
    })
}

/// Whether this worker's Redis locations of `group` (null: of any group) answer 502 without
/// asking Redis right now (`$stale_cache_redis_down`).
pub(super) fn group_down(group: *mut ngx_http_upstream_srv_conf_t) -> bool {
    let now = current_msec();
    BACKOFF.with(|b| {
        let b = b.borrow();
        if group.is_null() {
            b.values().any(|state| state.refusing(now))
        } else {
            b.get(&(group as usize))
                .is_some_and(|state| state.refusing(now))
        }
    })
}

/// A request to the group failed (connect, timeout, deadline): refuse for `backoff`. The
/// failure that ends a working period is logged; a failed probe (the server is still down)
/// is logged once per log interval; the requests in flight with either fail quietly
/// (nginx's own line for each is at info, see redis_handler).
fn start_backoff(r: &ngx_http_request_t, u: &ngx_http_upstream_t, conf: &RedisConf) {
    let now = current_msec();
    let previous = BACKOFF.with(|b| {
        b.borrow_mut().insert(
            group_of(conf),
            Backoff {
                until: now + conf.backoff,
                probe_since: 0,
                probe_limit: conf.backoff
                    + conf.upstream.connect_timeout
                    + conf.upstream.send_timeout
                    + conf.upstream.read_timeout,
            },
        )
    });
    let message = format_args!(
        "stale_cache: redis server {} failed (connection refused, reset or timed out); its \
         locations answer 502 for {} ms at a time until one request gets through",
        peer_name(u),
        conf.backoff
    );
    match previous {
        None => {
            ngx::ngx_log_error!(NGX_LOG_ERR, request_log(r), "{}", message);
        }
        Some(state) if now >= state.until => limited(
            request_log(r),
            NGX_LOG_ERR,
            "redis still down",
            Every::Interval,
            message,
        ),
        // Already in backoff: a request that was in flight when the server went away.
        Some(_) => {}
    }
}

/// A request reached the server and got an answer: the group is up again.
fn end_backoff(conf: &RedisConf) {
    BACKOFF.with(|b| b.borrow_mut().remove(&group_of(conf)));
}

/// Content handler of a location with `stale_cache_redis_pass`.
pub unsafe extern "C" fn redis_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let req = unsafe { &mut *r };
    let conf = conf_of(req);

    // A server that just failed is not asked again for `backoff`: one log line per outage
    // instead of one per request, and callers fail over at once instead of after a timeout.
    let Some(probe) = admit(conf) else {
        if conf.uses_request_body {
            // SAFETY: live request; discarding is how a handler refuses a body.
            unsafe { ngx_http_discard_request_body(r) };
        }
        return NGX_HTTP_BAD_GATEWAY as ngx_int_t;
    };

    // SAFETY: live request; creates r->upstream from the request pool.
    if unsafe { ngx_http_upstream_create(r) } != OK {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // SAFETY: ngx_http_upstream_create just set a valid r->upstream.
    let u = unsafe { &mut *req.upstream };
    u.schema = ngx::ngx_string!("redis://");
    // nginx logs every failed connect/recv/send of an upstream at error level: during an
    // outage, one line per request in flight. Those go to info; the failure that starts the
    // backoff is logged once by start_backoff.
    u.peer
        .set_log_error(ngx_connection_log_error_e_NGX_ERROR_INFO);
    u.output.tag = RedisModule::module() as *const _ as *mut c_void;
    u.conf = &conf.upstream as *const _ as *mut _;
    u.create_request = Some(create_request);
    u.reinit_request = Some(reinit_request);
    u.process_header = Some(process_header);
    u.abort_request = Some(abort_request);
    u.finalize_request = Some(finalize_request);

    // SAFETY: the request pool outlives the upstream; the ctx is dropped with the pool.
    let pool = unsafe { Pool::from_ngx_pool(req.pool) };
    let ctx = pool.allocate(RedisCtx {
        request: r,
        mode: conf.reply,
        commands: conf.commands.len(),
        framer: ReplyFramer::new(),
        invalid_reply: Cell::new(false),
        value: ValueState::new(conf.commands.len()),
        deadline: Deadline::new(r),
        probe,
    });
    if ctx.is_null() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    u.input_filter_init = Some(filter_init);
    u.input_filter = Some(filter);
    u.input_filter_ctx = ctx as *mut c_void;

    if conf.uses_request_body {
        // srcache hands its store subrequest the response as request body; for subrequests
        // this returns at once and calls ngx_http_upstream_init itself.
        // SAFETY: live request; nginx takes its own reference on r->main while reading.
        let rc = unsafe { ngx_http_read_client_request_body(r, Some(ngx_http_upstream_init)) };
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
        return DONE;
    }

    // SAFETY: live request.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != OK {
        return rc;
    }
    // The upstream holds the request until it finalizes it.
    // SAFETY: r->main is the live main request (`r` itself for a main request; `req` is not
    // used past this point).
    let main = unsafe { &mut *(*r).main };
    bits::set_count(main, bits::count(main) + 1);
    // SAFETY: live request with its upstream set up above.
    unsafe { ngx_http_upstream_init(r) };
    DONE
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
    pool: *mut ngx::ffi::ngx_pool_t,
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
fn push_buf(
    pool: *mut ngx::ffi::ngx_pool_t,
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

/// The request body as a list of buffers and its total length.
fn request_body_bufs(r: &ngx_http_request_t) -> (Vec<*mut ngx_buf_t>, usize) {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    if r.request_body.is_null() {
        return (bufs, 0);
    }
    // SAFETY: a read request body's chain links and buffers live in the request pool.
    unsafe {
        let mut cl = (*r.request_body).bufs;
        while !cl.is_null() {
            let b = (*cl).buf;
            let size = if (*b).in_file() != 0 && (*b).memory() == 0 && (*b).temporary() == 0 {
                ((*b).file_last - (*b).file_pos) as usize
            } else {
                (*b).last.offset_from((*b).pos) as usize
            };
            if size > 0 {
                bufs.push(b);
                total += size;
            }
            cl = (*cl).next;
        }
    }
    (bufs, total)
}

unsafe extern "C" fn create_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: called by the upstream framework with the live request it serves.
    let req = unsafe { &mut *r };
    let conf = conf_of(req);
    let pool = req.pool;
    let total = conf.upstream.connect_timeout + conf.upstream.read_timeout;
    // SAFETY: r->upstream is set while the upstream framework drives this request.
    let u = unsafe { &*req.upstream };
    ctx_of(u).deadline.arm(req, total);
    let mut head: *mut ngx_chain_t = ptr::null_mut();
    let mut tail: *mut *mut ngx_chain_t = &mut head;
    let mut pending: Vec<u8> = Vec::with_capacity(256);

    for command in &conf.commands {
        resp::encode_array_header(&mut pending, command.len());
        for arg in command {
            match arg {
                RedisArg::Literal(bytes) => push_bulk(&mut pending, bytes),
                RedisArg::Complex(cv) => {
                    let mut value = ngx_str_t::default();
                    // SAFETY: `cv` was compiled at configuration time; r is live.
                    if unsafe { ngx_http_complex_value(r, *cv, &mut value) } != OK {
                        return ERROR;
                    }
                    push_bulk(&mut pending, str_bytes(&value));
                }
                RedisArg::RequestBody => {
                    let (bufs, total) = request_body_bufs(req);
                    resp::encode_bulk_header(&mut pending, total);
                    if !push_bytes(pool, &mut tail, &pending) {
                        return ERROR;
                    }
                    pending.clear();
                    for b in bufs {
                        // A shallow copy: the upstream advances its own positions while
                        // sending, and a retry on another server must start from the start.
                        // SAFETY: `b` is a live body buffer; the copy comes from the pool.
                        let copy = unsafe {
                            let copy =
                                ngx::ffi::ngx_pcalloc(pool, core::mem::size_of::<ngx_buf_t>())
                                    as *mut ngx_buf_t;
                            if copy.is_null() {
                                return ERROR;
                            }
                            *copy = *b;
                            // A retry on another server resends from `start`.
                            (*copy).start = (*copy).pos;
                            copy
                        };
                        if !push_buf(pool, &mut tail, copy) {
                            return ERROR;
                        }
                    }
                    pending.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    if !push_bytes(pool, &mut tail, &pending) {
        return ERROR;
    }
    // SAFETY: r->upstream is set while the upstream framework drives this request.
    unsafe { (*req.upstream).request_bufs = head };
    OK
}

fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    resp::encode_bulk_header(out, bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn ctx_of<'a>(u: &ngx_http_upstream_t) -> &'a mut RedisCtx {
    // SAFETY: redis_handler stored a RedisCtx from the request pool as input_filter_ctx.
    unsafe { &mut *(u.input_filter_ctx as *mut RedisCtx) }
}

unsafe extern "C" fn reinit_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: called by the upstream framework with a live request and upstream.
    let u = unsafe { &mut *(*r).upstream };
    let ctx = ctx_of(u);
    ctx.framer = ReplyFramer::new();
    ctx.value = ValueState::new(ctx.commands);
    OK
}

pub(super) fn set_status(u: &mut ngx_http_upstream_t, status: u32, content_length: i64) {
    u.headers_in.status_n = status as _;
    u.headers_in.content_length_n = content_length;
    if !u.state.is_null() {
        // SAFETY: the upstream state entry of the current try, set by nginx.
        unsafe { (*u.state).status = status as _ };
    }
}

unsafe extern "C" fn abort_request(_r: *mut ngx_http_request_t) {}

unsafe extern "C" fn finalize_request(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: called by the upstream framework with a live request and upstream.
    let req = unsafe { &*r };
    // SAFETY: as above, the upstream is set while the framework finalizes it.
    let u = unsafe { &*req.upstream };
    let ctx = u.input_filter_ctx as *mut RedisCtx;
    // SAFETY: when set, the ctx redis_handler allocated in the request pool.
    let Some(ctx) = (unsafe { ctx.as_mut() }) else {
        return;
    };
    ctx.deadline.disarm();
    let conf = conf_of(req);
    // A failure before any reply (refused, unreachable, timed out), or a reply that did not
    // arrive by the deadline, opens the backoff window.
    let failed =
        rc == NGX_HTTP_BAD_GATEWAY as ngx_int_t || rc == NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t;
    if ctx.deadline.hit.get() || (failed && u.headers_in.status_n == 0 && !ctx.invalid_reply.get())
    {
        start_backoff(req, u, conf);
    } else if ctx.probe || u.headers_in.status_n != 0 {
        end_backoff(conf);
    }
}
