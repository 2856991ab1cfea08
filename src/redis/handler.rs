//! The native Redis locations' content handler, on nginx's upstream framework (keepalive
//! pools, timeouts, next-server retries come from nginx): admission through the backoff, the
//! pipelined RESP request, and the end of the request. Replies are read in `reply`.

use core::ffi::c_void;
use core::ptr;
use std::cell::Cell;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_connection_log_error_e_NGX_ERROR_INFO, ngx_http_complex_value,
    ngx_http_discard_request_body, ngx_http_read_client_request_body, ngx_http_request_t,
    ngx_http_upstream_create, ngx_http_upstream_init, ngx_int_t, ngx_str_t, NGX_HTTP_BAD_GATEWAY,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::HttpModule;

use super::backoff::{admit, end_backoff, start_backoff};
use super::conf::{conf_of, RedisArg, RedisModule};
use super::ctx::{ctx_of, push_buf, push_bytes, Deadline, RedisCtx, ValueState};
use super::reply::{filter, filter_init, process_header};
use crate::nginx::bits;
use crate::nginx::util::{str_bytes, DONE, ERROR, OK};
use crate::resp::{self, ReplyFramer};

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
        mode: conf.reply_mode(),
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

unsafe extern "C" fn reinit_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: called by the upstream framework with a live request and upstream.
    let u = unsafe { &mut *(*r).upstream };
    let ctx = ctx_of(u);
    ctx.framer = ReplyFramer::new();
    ctx.value = ValueState::new(ctx.commands);
    OK
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
    // A Sentinel-managed group rediscovers its master on a `-READONLY`.
    super::sentinel::readonly_hook(conf.upstream.upstream, u);
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
