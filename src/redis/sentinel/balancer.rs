//! nginx's peer selection for a Sentinel-managed group, shaped like nginx's own balancers
//! (hash, least_conn): `init_upstream` at configuration, `init_peer` per request, `get` hands
//! the upstream this worker's current master, `free` reports failures to discovery.
//!
//! `keepalive` after `stale_cache_redis_sentinel` wraps these functions: it looks a cached
//! connection up by the address `get` chose, so after a failover the connections to the
//! demoted master are never reused; they stay idle in the pool until Redis closes them or
//! newer ones push them out.

use core::ffi::c_void;

use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_int_t,
    ngx_peer_connection_t, ngx_str_t, ngx_uint_t, sockaddr, NGX_BUSY, NGX_PEER_FAILED,
};

use super::{discover, find, Sentinel};
use crate::nginx::util::OK;

pub unsafe extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the group being initialised; `servers` holds the placeholder
    // set_sentinel added, and any `server` line of the block.
    let servers = unsafe { (*(*us).servers).nelts };
    if servers != 1 {
        ngx::ngx_conf_log_error!(
            ngx::ffi::NGX_LOG_EMERG,
            cf,
            "\"stale_cache_redis_sentinel\" finds the server itself: remove the \"server\" \
             lines of its upstream block"
        );
        return crate::nginx::util::ERROR;
    }
    // SAFETY: as above.
    unsafe { (*us).peer.init = Some(init_peer) };
    OK
}

unsafe extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request with its upstream and the group whose peer data
    // set_sentinel made a Sentinel of the configuration's pool.
    let (req, sentinel) = unsafe { (&mut *r, &*((*us).peer.data as *const Sentinel)) };
    discover::ensure_started(sentinel);
    // SAFETY: the request's upstream, created before init_peer is called.
    let u: &mut ngx_http_upstream_t = unsafe { &mut *req.upstream };
    // The peer data is the group itself: `get` needs nothing of the request's own.
    u.peer.data = sentinel as *const Sentinel as *mut c_void;
    u.peer.get = Some(get);
    u.peer.free = Some(free);
    u.peer.tries = 1;
    OK
}

unsafe extern "C" fn get(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the Sentinel init_peer set (keepalive passes it through).
    let (pc, sentinel) = unsafe { (&mut *pc, &*(data as *const Sentinel)) };
    let Some(master) = discover::master(sentinel) else {
        // No master known yet (the worker just started and no Sentinel answered): nginx
        // answers "no live upstreams", a 502 the callers fail open on.
        return NGX_BUSY as ngx_int_t;
    };
    // Never freed (see discover::Named): valid for as long as the connection is used.
    pc.sockaddr = master.addr.as_ptr() as *mut sockaddr;
    pc.socklen = master.addr.len();
    pc.name = &master.name as *const ngx_str_t as *mut ngx_str_t;
    OK
}

unsafe extern "C" fn free(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: as in `get`; the Sentinel lives in the configuration's pool.
    let (pc, sentinel) = unsafe { (&mut *pc, &*(data as *const Sentinel)) };
    if state & NGX_PEER_FAILED as ngx_uint_t != 0 {
        // Refused, reset or timed out: the master may have changed; ask now.
        discover::suspect(sentinel);
    }
    pc.tries = 0;
}

/// A server of `group` refused a write with `-READONLY`: for a Sentinel-managed group this
/// worker talks to a demoted master, so discovery runs at once. Costs nothing for other
/// groups beyond one look at this cycle's (usually empty) list.
pub fn master_refused_write(group: *mut ngx_http_upstream_srv_conf_t) {
    if let Some(sentinel) = find(group) {
        discover::demoted(sentinel);
    }
}
