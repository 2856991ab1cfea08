//! The start of a reply in cluster mode, before the location's own reading (`reply`): the
//! replies of the prefix (`ASKING`'s `+OK`, the `CLUSTER SLOTS` map of a refresh), then the
//! first reply of the request's own commands, looked at for `-MOVED`/`-ASK`: a redirection
//! becomes a next-upstream try to the named node (`cluster::get_peer` sends it there).

use ngx::ffi::{ngx_buf_t, ngx_http_upstream_t, ngx_int_t, NGX_LOG_ERR};

use super::clusterstate::{self, REDIRECT_LIMIT, RETRY_FIRST_DELAY_MS, RETRY_LIMIT};
use super::ctx::{peer_name, RedisCtx};
use crate::cluster::{parse_redirect, reply_len, NodeAddr, NotResp, Redirect, SlotMap};
use crate::nginx::log::{limited, Every};
use crate::nginx::util::AGAIN;
use crate::resp::Escaped;

/// nginx's code for "the upstream's response could not be parsed": with
/// `NGX_HTTP_UPSTREAM_FT_INVALID_HEADER` in the location's next_upstream, a next try.
pub(super) const UPSTREAM_INVALID_HEADER: ngx_int_t = 40;

fn unread(b: &ngx_buf_t) -> &[u8] {
    if b.pos.is_null() || b.last <= b.pos {
        return &[];
    }
    // SAFETY: nginx keeps `pos..last` inside the upstream buffer's allocation.
    unsafe { core::slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize) }
}

/// Moves the unread bytes to the buffer's start (room for the rest of a reply).
fn compact(b: &mut ngx_buf_t) {
    let n = unread(b).len();
    // SAFETY: both ranges lie within the buffer; `copy` handles the overlap.
    unsafe {
        core::ptr::copy(b.pos, b.start, n);
        b.pos = b.start;
        b.last = b.start.add(n);
    }
}

fn log_of(ctx: &RedisCtx) -> *mut ngx::ffi::ngx_log_t {
    // SAFETY: the ctx's request is the live request that owns the upstream.
    unsafe { (*(*ctx.request).connection).log }
}

/// A CLUSTER SLOTS answer that gave no map: logged once per interval.
fn slots_error(ctx: &RedisCtx, u: &ngx_http_upstream_t, what: &str) {
    limited(
        log_of(ctx),
        NGX_LOG_ERR,
        "redis cluster slots",
        Every::Interval,
        format_args!("stale_cache: redis server {} {what}", peer_name(u)),
    );
}

/// Steps over `count` whole replies of the prefix (READONLY's, ASKING's: whatever they say, the
/// request's own replies follow). `Some(rc)` when process_header must return.
fn skip(u: &mut ngx_http_upstream_t, count: &mut u8) -> Option<ngx_int_t> {
    while *count > 0 {
        match reply_len(unread(&u.buffer)) {
            Ok(None) => {
                compact(&mut u.buffer);
                return Some(AGAIN);
            }
            Ok(Some(used)) => {
                // SAFETY: `used` ≤ the unread bytes.
                u.buffer.pos = unsafe { u.buffer.pos.add(used) };
                *count -= 1;
            }
            Err(NotResp) => {
                u.peer.tries = 0;
                return Some(UPSTREAM_INVALID_HEADER);
            }
        }
    }
    None
}

/// `Some(rc)`: process_header returns `rc` (more to read, or a redirection); `None`: the
/// location reads the reply as usual, from `u.buffer.pos`.
pub(super) fn cluster_header(u: &mut ngx_http_upstream_t, ctx: &mut RedisCtx) -> Option<ngx_int_t> {
    if !ctx.cluster.on {
        return None;
    }
    if let Some(rc) = skip(u, &mut ctx.cluster.skip_before) {
        return Some(rc);
    }
    if ctx.cluster.expect_slots {
        let c = &mut ctx.cluster;
        c.slots_buf.extend_from_slice(unread(&u.buffer));
        let used = match reply_len(&c.slots_buf) {
            Ok(None) => {
                // All of it is kept in slots_buf: the whole buffer is free for the rest.
                u.buffer.pos = u.buffer.start;
                u.buffer.last = u.buffer.start;
                return Some(AGAIN);
            }
            Ok(Some(used)) => used,
            Err(NotResp) => {
                slots_error(ctx, u, "sent an invalid CLUSTER SLOTS reply");
                u.peer.tries = 0;
                return Some(UPSTREAM_INVALID_HEADER);
            }
        };
        let map = SlotMap::from_cluster_slots(&c.slots_buf[..used])
            .ok()
            .map(|(map, _)| map)
            .filter(|map| map.covered() > 0);
        if map.is_none() {
            slots_error(
                ctx,
                u,
                "answered CLUSTER SLOTS without a slot map (is it a cluster node?)",
            );
        }
        let c = &mut ctx.cluster;
        clusterstate::with(c.group, |cl| cl.end_refresh(map));
        c.refresh = false;
        c.expect_slots = false;
        // What followed the map goes back to the buffer's start (it came with the last read,
        // so it fits).
        let rest = c.slots_buf.split_off(used);
        c.slots_buf = Vec::new();
        // SAFETY: `rest` is at most the last read's length, within the buffer's size.
        unsafe {
            core::ptr::copy_nonoverlapping(rest.as_ptr(), u.buffer.start, rest.len());
            u.buffer.pos = u.buffer.start;
            u.buffer.last = u.buffer.start.add(rest.len());
        }
    }
    if let Some(rc) = skip(u, &mut ctx.cluster.skip_after) {
        return Some(rc);
    }
    if ctx.cluster.peeked {
        return None;
    }
    let data = unread(&u.buffer);
    if data.is_empty() {
        compact(&mut u.buffer);
        return Some(AGAIN);
    }
    if data[0] != b'-' {
        ctx.cluster.peeked = true;
        return None;
    }
    let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
        compact(&mut u.buffer);
        return Some(AGAIN);
    };
    ctx.cluster.peeked = true;
    let redirect = parse_redirect(&data[1..end])?;
    let c = &mut ctx.cluster;
    let (node, ask) = match redirect {
        Redirect::Moved { slot, node } => {
            clusterstate::with(c.group, |cl| {
                cl.map.set_primary(slot, &node);
                cl.stale = true;
            });
            (node, false)
        }
        // ASKING covers one command: a location of several (SET + EXPIRE) would run the
        // others unasked on the importing node. It fails open instead (the cluster
        // configuration stores with one SET ... EX).
        Redirect::Ask { node, .. } if ctx.commands == 1 => (node, true),
        Redirect::Ask { .. } => return None,
        Redirect::ClusterDown | Redirect::TryAgain => {
            if matches!(redirect, Redirect::ClusterDown) {
                clusterstate::with(c.group, |cl| cl.stale = true);
            }
            if c.retries >= RETRY_LIMIT {
                return None;
            }
            // The same node again, after a pause that doubles with each retry.
            let node = NodeAddr::parse(peer_name(u).as_bytes())?;
            c.pause.next_ms = RETRY_FIRST_DELAY_MS << c.retries;
            c.retries += 1;
            c.next = Some(node);
            c.redirected = true;
            return Some(UPSTREAM_INVALID_HEADER);
        }
    };
    if c.redirects >= REDIRECT_LIMIT {
        limited(
            log_of(ctx),
            NGX_LOG_ERR,
            "redis redirect limit",
            Every::Interval,
            format_args!(
                "stale_cache: redis cluster redirected a request {} times, giving up: \"{}\"",
                REDIRECT_LIMIT,
                Escaped(&data[1..end])
            ),
        );
        return None;
    }
    c.redirects += 1;
    c.next = Some(node);
    c.asking = ask;
    c.redirected = true;
    Some(UPSTREAM_INVALID_HEADER)
}
