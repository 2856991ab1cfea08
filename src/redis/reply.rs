//! Reading a Redis location's replies: `value` mode streams the last reply's payload as the
//! body (HttpRedis-compatible: nil is 404, an error is 502); `raw` mode streams every reply's
//! bytes (redis2-compatible), with 502 instead of 200 when a command got an error reply
//! (redis2 answers 200). Every error reply counts, whichever command got it (`refusal`).
//! What Redis sends is checked by the RESP reader, never trusted.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_buf_t, ngx_chain_get_free_buf, ngx_http_request_t, ngx_http_upstream_t, ngx_int_t,
    NGX_HTTP_BAD_GATEWAY, NGX_HTTP_NOT_FOUND, NGX_HTTP_OK, NGX_LOG_ERR,
};

use super::conf::ReplyMode;
use super::ctx::{ctx_of, out_bufs_end, peer_name, push_bytes, set_status, RedisCtx};
use super::redirect::{cluster_header, UPSTREAM_INVALID_HEADER};
use super::refusal;
use crate::nginx::bits;
use crate::nginx::util::{AGAIN, ERROR, OK};
use crate::resp::{BulkBody, ValueHead};

/// Logs that the server sent something that is not RESP, or not what the location's reply
/// mode can send, naming the server. A server answering garbage is up: no backoff for it
/// (see finalize_request). Error replies are `refusal`s, logged there.
fn report(u: &ngx_http_upstream_t, ctx: &RedisCtx, what: &str) {
    ctx.invalid_reply.set(true);
    // SAFETY: the ctx's request is the live request that owns this upstream.
    let log = unsafe { (*(*ctx.request).connection).log };
    ngx::ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "stale_cache: redis server {} sent an invalid reply: {}",
        peer_name(u),
        what
    );
}

pub(super) unsafe extern "C" fn process_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: called by the upstream framework with a live request and upstream.
    let u = unsafe { &mut *(*r).upstream };
    let ctx = ctx_of(u);
    if let Some(rc) = cluster_header(u, ctx) {
        return rc;
    }
    match ctx.mode {
        ReplyMode::Value => process_value_header(u, ctx),
        _ => process_raw_header(u, ctx),
    }
}

/// `raw` mode: the status says whether every command succeeded, so it waits for the first
/// line of every reply (the replies before the last are held meanwhile, in `ctx.held`, and
/// sent first once the header is out). 200 when none is an error, 502 when one is; the body
/// is the replies' bytes either way. An error nested in the last reply's array (EXEC's
/// results) comes after the header and is passed through.
fn process_raw_header(u: &mut ngx_http_upstream_t, ctx: &mut RedisCtx) -> ngx_int_t {
    let input = unread(&u.buffer);
    let used = match ctx.framer.feed_until(input, ctx.commands) {
        Ok(used) => used,
        Err(e) => return protocol_error(u, ctx, &e.to_string()),
    };
    ctx.held.extend_from_slice(&input[..used]);
    // SAFETY: the framer consumed `used` ≤ unread bytes.
    u.buffer.pos = unsafe { u.buffer.pos.add(used) };
    if ctx.framer.heads() < ctx.commands {
        compact(&mut u.buffer);
        return AGAIN;
    }
    match ctx.framer.first_error() {
        Some((index, text)) => {
            // SAFETY: the ctx's request is the live request that owns this upstream.
            refusal::report(unsafe { &*ctx.request }, u, index, text);
            set_status(u, NGX_HTTP_BAD_GATEWAY, -1);
        }
        None => set_status(u, NGX_HTTP_OK, -1),
    }
    OK
}

/// Buffer contents between `pos` and `last`.
fn unread(b: &ngx_buf_t) -> &[u8] {
    if b.pos.is_null() || b.last <= b.pos {
        return &[];
    }
    // SAFETY: nginx keeps `pos..last` inside the upstream buffer's allocation.
    unsafe { core::slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize) }
}

fn process_value_header(u: &mut ngx_http_upstream_t, ctx: &mut RedisCtx) -> ngx_int_t {
    let used = match ctx.value.reader.feed(unread(&u.buffer)) {
        Ok(used) => used,
        Err(e) => return protocol_error(u, ctx, &e.to_string()),
    };
    // SAFETY: the reader consumed `used` ≤ unread bytes.
    u.buffer.pos = unsafe { u.buffer.pos.add(used) };
    let Some(head) = ctx.value.reader.head() else {
        // The reader keeps partial lines itself, so the buffer can be reused from its start.
        compact(&mut u.buffer);
        return AGAIN;
    };
    if let Some(text) = ctx.value.reader.first_skipped_error() {
        // The value's own reply is still unread: the connection cannot be reused.
        let (index, text) = (ctx.value.reader.first_skipped_error_reply(), text.to_vec());
        return redis_error_reply(u, ctx, index, &text);
    }
    match head {
        ValueHead::Bulk { len } => {
            let len = *len;
            set_status(u, NGX_HTTP_OK, len as i64);
            ctx.value.body = Some(BulkBody::new(len));
            OK
        }
        ValueHead::Nil => {
            set_status(u, NGX_HTTP_NOT_FOUND, 0);
            OK
        }
        ValueHead::Integer(n) => {
            let text = n.to_string().into_bytes();
            set_status(u, NGX_HTTP_OK, text.len() as i64);
            ctx.value.scalar = Some(text);
            OK
        }
        ValueHead::Simple(text) => {
            let text = text.clone();
            set_status(u, NGX_HTTP_OK, text.len() as i64);
            ctx.value.scalar = Some(text);
            OK
        }
        ValueHead::Error(text) => {
            let text = text.clone();
            redis_error_reply(u, ctx, ctx.commands.saturating_sub(1), &text)
        }
        ValueHead::Array => protocol_error(
            u,
            ctx,
            "array reply in \"value\" mode (use \"stale_cache_redis_reply raw\")",
        ),
    }
}

/// Moves unread bytes to the buffer start so a reply larger than one read can be parsed.
fn compact(b: &mut ngx_buf_t) {
    if b.pos == b.start {
        return;
    }
    let n = unread(b).len();
    // SAFETY: both ranges lie within the buffer; `copy` handles the overlap.
    unsafe {
        ptr::copy(b.pos, b.start, n);
        b.pos = b.start;
        b.last = b.start.add(n);
    }
}

/// Redis refused command `index` (0-based) with `text`: log it (rate-limited) and answer 502
/// to the caller.
fn redis_error_reply(
    u: &mut ngx_http_upstream_t,
    ctx: &RedisCtx,
    index: usize,
    text: &[u8],
) -> ngx_int_t {
    // SAFETY: the ctx's request is the live request that owns this upstream.
    refusal::report(unsafe { &*ctx.request }, u, index, text);
    set_status(u, NGX_HTTP_BAD_GATEWAY, 0);
    OK
}

/// Unparsable bytes before the response header: nginx answers 502 and drops the connection
/// (no next try: another server would not make the reply parse).
fn protocol_error(u: &mut ngx_http_upstream_t, ctx: &RedisCtx, what: &str) -> ngx_int_t {
    report(u, ctx, what);
    u.peer.tries = 0;
    UPSTREAM_INVALID_HEADER
}

pub(super) unsafe extern "C" fn filter_init(data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the RedisCtx set as input_filter_ctx.
    let ctx = unsafe { &mut *(data as *mut RedisCtx) };
    // SAFETY: the request and its upstream are live while filters run.
    let u = unsafe { &mut *(*ctx.request).upstream };
    match ctx.mode {
        ReplyMode::Value => {
            if let Some(text) = ctx.value.scalar.take() {
                // SAFETY: the request pool is live.
                let pool = unsafe { (*ctx.request).pool };
                let mut tail = out_bufs_end(u);
                if !push_bytes(pool, &mut tail, &text) {
                    return ERROR;
                }
            }
            match &ctx.value.body {
                Some(body) => u.length = 1 + body.remaining_payload() as i64,
                None => {
                    u.length = 0;
                    // A complete head and no payload: the stream is at a reply boundary.
                    let reusable = ctx.value.reader.first_skipped_error().is_none()
                        && unread(&u.buffer).is_empty();
                    bits::set_upstream_keepalive(u, reusable);
                }
            }
        }
        _ => {
            // The replies read with the header go first.
            let held = core::mem::take(&mut ctx.held);
            // SAFETY: the request pool is live.
            let pool = unsafe { (*ctx.request).pool };
            let mut tail = out_bufs_end(u);
            if !push_bytes(pool, &mut tail, &held) {
                return ERROR;
            }
            if ctx.framer.complete_replies() >= ctx.commands {
                u.length = 0;
                // Bytes after the last reply are reported by the filter.
                bits::set_upstream_keepalive(u, unread(&u.buffer).is_empty());
            } else {
                // Unknown until the last reply is complete; not -1, so that Redis closing
                // the connection early is reported as a truncated reply.
                u.length = 1;
            }
        }
    }
    OK
}

pub(super) unsafe extern "C" fn filter(data: *mut c_void, bytes: isize) -> ngx_int_t {
    // SAFETY: `data` is the RedisCtx set as input_filter_ctx.
    let ctx = unsafe { &mut *(data as *mut RedisCtx) };
    // SAFETY: the request and its upstream are live while filters run.
    let u = unsafe { &mut *(*ctx.request).upstream };
    let start = u.buffer.last;
    let bytes = bytes as usize;
    // SAFETY: nginx just read `bytes` bytes at `last`, within the buffer.
    let incoming = unsafe {
        u.buffer.last = start.add(bytes);
        core::slice::from_raw_parts(start, bytes)
    };

    let (body_len, consumed, done) = match ctx.mode {
        ReplyMode::Value => match ctx.value.body.as_mut() {
            Some(body) => match body.feed(incoming) {
                Ok(split) => {
                    u.length = 1 + body.remaining_payload() as i64;
                    (split.payload, split.consumed, body.is_complete())
                }
                Err(e) => return end_on_garbage(u, ctx, &e.to_string()),
            },
            None => {
                // The answer (404, 502) is already decided; whatever follows is not read,
                // so the connection cannot be reused.
                u.length = 0;
                bits::set_upstream_keepalive(u, false);
                return OK;
            }
        },
        _ => match ctx.framer.feed_until(incoming, ctx.commands) {
            Ok(used) => (used, used, ctx.framer.complete_replies() >= ctx.commands),
            Err(e) => return end_on_garbage(u, ctx, &e.to_string()),
        },
    };

    if body_len > 0 {
        // SAFETY: the request pool is live; the buffer points into u->buffer, which nginx
        // does not reuse until the downstream has sent it (busy_bufs).
        unsafe {
            let pool = (*ctx.request).pool;
            let cl = ngx_chain_get_free_buf(pool, &mut u.free_bufs);
            if cl.is_null() {
                return ERROR;
            }
            let b = (*cl).buf;
            (*b).set_flush(1);
            (*b).set_memory(1);
            (*b).pos = start;
            (*b).last = start.add(body_len);
            (*b).tag = u.output.tag;
            *out_bufs_end(u) = cl;
        }
    }

    if done {
        u.length = 0;
        if consumed < incoming.len() {
            protocol_error(u, ctx, "extra data after the last reply");
            bits::set_upstream_keepalive(u, false);
        } else {
            bits::set_upstream_keepalive(u, true);
        }
    }
    OK
}

/// Garbage in the middle of a reply: log it, end the response here and drop the connection.
/// Ending quietly (not ERROR, which would close the client's connection once the header
/// is out) lets the caller see a short or unparsable answer and fail open.
fn end_on_garbage(u: &mut ngx_http_upstream_t, ctx: &RedisCtx, what: &str) -> ngx_int_t {
    protocol_error(u, ctx, what);
    u.length = 0;
    bits::set_upstream_keepalive(u, false);
    OK
}
