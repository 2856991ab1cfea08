//! Redis Cluster mode of a server group: `stale_cache_redis_cluster;` in an `upstream` block
//! of seed nodes makes it a balancer that sends each request to the primary of its key's
//! slot. nginx's upstream framework does the rest: `keepalive` (after this directive) pools
//! connections per node, because it matches idle connections by address; a redirection
//! (`-MOVED`, `-ASK`, see `redirect`) is a next-upstream try to the named node.
//!
//! The slot map is per worker (`clusterstate`). It is read with `CLUSTER SLOTS`, pipelined
//! ahead of one request's own commands on that request's connection: no side connection,
//! and one refresh at a time per worker, started at most every 100 ms, only when a
//! redirection, `-CLUSTERDOWN` or a failed node said the map is out of date. Until the first
//! map arrives, requests go to the seeds round robin and follow `-MOVED`.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use ngx::core::Pool;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_request_t,
    ngx_http_upstream_free_round_robin_peer, ngx_http_upstream_get_round_robin_peer,
    ngx_http_upstream_init_round_robin, ngx_http_upstream_init_round_robin_peer,
    ngx_http_upstream_module, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t,
    ngx_str_t, ngx_uint_t, sockaddr, socklen_t, NGX_HTTP_UPSTREAM_BACKUP, NGX_HTTP_UPSTREAM_CREATE,
    NGX_HTTP_UPSTREAM_DOWN, NGX_HTTP_UPSTREAM_FAIL_TIMEOUT, NGX_HTTP_UPSTREAM_MAX_FAILS,
    NGX_HTTP_UPSTREAM_WEIGHT, NGX_PEER_FAILED,
};
use ngx::http::HttpModule;

use super::clusterstate::{self, ClusterReq, REDIRECT_LIMIT};
use super::conf::{conf_of, RedisArg, RedisConf, RedisModule};
use super::ctx::{push_bytes, RedisCtx};
use crate::cluster::{first_key_index, NodeAddr};
use crate::nginx::util::{
    conf_args, conf_error, current_msec, str_bytes, CONF_OK, DECLINED, ERROR, OK,
};

/// A bit of the server group's flags, beside nginx's `NGX_HTTP_UPSTREAM_*` ones (which use
/// the low bits): `replica_reads` was given.
const REPLICA_READS: ngx_uint_t = 1 << 30;

/// `stale_cache_redis_cluster [replica_reads];` (in an `upstream` block, before `keepalive`).
pub unsafe extern "C" fn set_redis_cluster(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed (an `upstream` block: its ctx is
    // the block's ngx_http_conf_ctx_t) and the command, valid during the call.
    let (cfr, uscf, cmd) = unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let index = (&raw const ngx_http_upstream_module).read().ctx_index;
        (
            &*cf,
            &mut *(*(*ctx).srv_conf.add(index) as *mut ngx_http_upstream_srv_conf_t),
            &*cmd,
        )
    };
    if uscf.peer.init_upstream.is_some() {
        return conf_error(
            cf,
            cmd,
            "must come before \"keepalive\" and cannot be combined with another balancer",
        );
    }
    let replica_reads = match conf_args(cfr).get(1).map(str_bytes) {
        None => false,
        Some(b"replica_reads") => true,
        Some(_) => return conf_error(cf, cmd, "takes only \"replica_reads\""),
    };
    uscf.peer.init_upstream = Some(init_upstream);
    uscf.flags = (NGX_HTTP_UPSTREAM_CREATE
        | NGX_HTTP_UPSTREAM_WEIGHT
        | NGX_HTTP_UPSTREAM_MAX_FAILS
        | NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
        | NGX_HTTP_UPSTREAM_DOWN
        | NGX_HTTP_UPSTREAM_BACKUP) as ngx_uint_t;
    if replica_reads {
        uscf.flags |= REPLICA_READS;
    }
    CONF_OK
}

unsafe extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the configuration and the server group being initialised; the
    // round robin over the seeds is what requests use until a map is known.
    if unsafe { ngx_http_upstream_init_round_robin(cf, us) } != OK {
        return ERROR;
    }
    // SAFETY: as above.
    unsafe { (*us).peer.init = Some(init_peer) };
    OK
}

/// This balancer's data for one request: the round robin's, and the request.
struct PeerData {
    rr: *mut c_void,
    request: *mut ngx_http_request_t,
}

/// The Redis location's state of `r`, when `r` is a native Redis request.
fn redis_ctx<'a>(r: &ngx_http_request_t) -> Option<&'a mut RedisCtx> {
    // SAFETY: r->upstream is live while its balancer runs.
    let u = unsafe { r.upstream.as_ref()? };
    if u.output.tag != RedisModule::module() as *const _ as *mut c_void
        || u.input_filter_ctx.is_null()
    {
        return None;
    }
    // SAFETY: redis_handler set input_filter_ctx to a RedisCtx in the request pool (the tag
    // says this upstream is one of its).
    Some(unsafe { &mut *(u.input_filter_ctx as *mut RedisCtx) })
}

unsafe extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the live request and its server group.
    if unsafe { ngx_http_upstream_init_round_robin_peer(r, us) } != OK {
        return ERROR;
    }
    // SAFETY: the live request whose upstream was just set up.
    let req = unsafe { &mut *r };
    let Some(ctx) = redis_ctx(req) else {
        // Not a native Redis location (e.g. proxy_pass to the same group): round robin.
        return OK;
    };
    // SAFETY: r->upstream is live; the round robin just filled its peer.
    let u = unsafe { &mut *req.upstream };
    // SAFETY: the request pool outlives the upstream.
    let pool = unsafe { Pool::from_ngx_pool(req.pool) };
    let data = pool.allocate(PeerData {
        rr: u.peer.data,
        request: r,
    });
    if data.is_null() {
        return ERROR;
    }
    u.peer.data = data as *mut c_void;
    u.peer.get = Some(get_peer);
    u.peer.free = Some(free_peer);
    // Each seed once, and the redirections on top.
    u.peer.tries += ngx_uint_t::from(REDIRECT_LIMIT);
    // A try after `-TRYAGAIN`/`-CLUSTERDOWN` sends its request after a pause.
    super::pause::install(u, r, &mut ctx.cluster.pause);

    let c = &mut ctx.cluster;
    c.on = true;
    c.group = us as usize;
    // SAFETY: nginx passes the request's live server group.
    c.replica_ok = unsafe { (*us).flags } & REPLICA_READS != 0 && reads_only(conf_of(req));
    c.commands = u.request_bufs;
    let conf = conf_of(req);
    let timeout = conf.upstream.connect_timeout + conf.upstream.read_timeout;
    c.refresh = clusterstate::with(c.group, |cl| cl.claim_refresh(current_msec(), timeout));
    if build_prefix(req, c) {
        OK
    } else {
        ERROR
    }
}

const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
const READONLY: &[u8] = b"*1\r\n$8\r\nREADONLY\r\n";
const CLUSTER_SLOTS: &[u8] = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";

/// Sets the request's buffers for this try: READONLY for a replica, CLUSTER SLOTS while this
/// request refreshes the map, ASKING after an `-ASK` (it covers the one command after it),
/// then its own commands. (A pause after `-TRYAGAIN`/`-CLUSTERDOWN` holds them back: `pause`.)
pub(super) fn build_prefix(r: &mut ngx_http_request_t, c: &mut ClusterReq) -> bool {
    let mut head = ptr::null_mut();
    let mut tail = &mut head as *mut *mut _;
    c.skip_before = 0;
    c.pause.new_try();
    if c.replica_ok && c.next.is_none() && !c.asking {
        // A replica of the key's slot, if the map knows one (they take turns).
        let replica = c.slot.and_then(|slot| {
            clusterstate::with(c.group, |cl| {
                let replicas: Vec<NodeAddr> = cl.map.replicas(slot).cloned().collect();
                cl.turn = cl.turn.wrapping_add(1);
                (!replicas.is_empty()).then(|| replicas[cl.turn % replicas.len()].clone())
            })
        });
        if let Some(replica) = replica {
            // Replicas answer reads only on connections that said READONLY.
            if !push_bytes(r.pool, &mut tail, READONLY) {
                return false;
            }
            c.skip_before += 1;
            c.next = Some(replica);
        }
    }
    c.expect_slots = c.refresh;
    c.slots_buf.clear();
    if c.refresh && !push_bytes(r.pool, &mut tail, CLUSTER_SLOTS) {
        return false;
    }
    c.skip_after = u8::from(c.asking);
    if c.asking && !push_bytes(r.pool, &mut tail, ASKING) {
        return false;
    }
    c.asking = false;
    c.peeked = false;
    c.redirected = false;
    // SAFETY: `tail` is the `next` slot of the last prefix link, or `head` itself.
    unsafe { *tail = c.commands };
    // SAFETY: r->upstream is live while its request is built.
    unsafe { (*r.upstream).request_bufs = head };
    true
}

/// A node's address as nginx connects to it: allocated once per worker and address, so
/// `keepalive` finds the node's idle connections by comparing it.
struct NodeSock {
    sockaddr: libc::sockaddr_storage,
    socklen: socklen_t,
    name: ngx_str_t,
}

/// Nodes a worker keeps addresses of (a cluster has at most about a thousand).
const MAX_NODES: usize = 4096;

thread_local! {
    static NODES: RefCell<HashMap<NodeAddr, &'static mut NodeSock>> =
        RefCell::new(HashMap::new());
}

fn node_sock(node: &NodeAddr) -> Option<*mut NodeSock> {
    NODES.with(|n| {
        let mut n = n.borrow_mut();
        if let Some(s) = n.get_mut(node) {
            return Some(&mut **s as *mut NodeSock);
        }
        if n.len() >= MAX_NODES {
            return None;
        }
        let addr: SocketAddr = node.0.parse().ok()?;
        // SAFETY: sockaddr_storage is plain data; zeroed is a valid (and comparable) start.
        let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let socklen = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                core::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_in6 is plain data; zeroed is its empty state.
                let mut sin6: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                core::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        // Kept for the worker's life: nginx holds the name and address while connected.
        let name: &'static mut [u8] = Box::leak(node.0.clone().into_bytes().into_boxed_slice());
        let sock = Box::leak(Box::new(NodeSock {
            sockaddr: storage,
            socklen: socklen as socklen_t,
            name: ngx_str_t {
                len: name.len(),
                data: name.as_mut_ptr(),
            },
        }));
        let p = sock as *mut NodeSock;
        n.insert(node.clone(), sock);
        Some(p)
    })
}

unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes the peer connection and the PeerData init_peer set.
    let (pc, data) = unsafe { (&mut *pc, &mut *(data as *mut PeerData)) };
    // SAFETY: the request outlives its upstream's peer.
    let req = unsafe { &*data.request };
    let Some(ctx) = redis_ctx(req) else {
        return ERROR;
    };
    let c = &mut ctx.cluster;
    let target = c.next.take().or_else(|| {
        let slot = c.slot?;
        clusterstate::with(c.group, |cl| cl.map.primary(slot).cloned())
    });
    if let Some(node) = &target {
        if clusterstate::with(c.group, |cl| cl.is_down(node, current_msec())) {
            // The node failed a moment ago: fail open at once (no try, no log line), as
            // the group backoff does for one Redis. DECLINED is nginx's quiet "no peer".
            // (`cached` from an earlier try would make nginx grant one more try: none.)
            pc.tries = 0;
            pc.set_cached(0);
            return DECLINED;
        }
    }
    let sock = target.as_ref().and_then(node_sock);
    let Some(sock) = sock else {
        c.used_rr = true;
        // SAFETY: the round robin's own data for this request.
        return unsafe { ngx_http_upstream_get_round_robin_peer(pc, data.rr) };
    };
    c.used_rr = false;
    // SAFETY: the NodeSock lives for the worker's life.
    let sock = unsafe { &mut *sock };
    pc.set_cached(0);
    pc.connection = ptr::null_mut();
    pc.sockaddr = &mut sock.sockaddr as *mut _ as *mut sockaddr;
    pc.socklen = sock.socklen;
    pc.name = &mut sock.name;
    OK
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: nginx passes the peer connection and the PeerData init_peer set.
    let (pc, data) = unsafe { (&mut *pc, &mut *(data as *mut PeerData)) };
    // SAFETY: the request outlives its upstream's peer.
    let req = unsafe { &*data.request };
    let tries = pc.tries;
    let Some(ctx) = redis_ctx(req) else {
        return;
    };
    let c = &mut ctx.cluster;
    // A redirection is an answer, not a failure of the server.
    let failed = state & NGX_PEER_FAILED as ngx_uint_t != 0 && !c.redirected;
    if c.used_rr {
        let state = if failed { state } else { 0 };
        // SAFETY: the round robin chose this try's peer; its data is this request's.
        unsafe { ngx_http_upstream_free_round_robin_peer(pc, data.rr, state) };
    }
    if failed {
        // A node refusing or timing out may be a primary that failed over: read the map
        // again (one request per worker does); until its backoff ends, requests for it
        // fail open at once instead of each waiting for a timeout.
        let name = if c.used_rr || pc.name.is_null() {
            None
        } else {
            // SAFETY: the name of this try's peer, one of our NodeSocks (never freed).
            Some(unsafe { &*pc.name })
        };
        let node = name.map(|n| NodeAddr(String::from_utf8_lossy(str_bytes(n)).into_owned()));
        let backoff = conf_of(req).backoff();
        clusterstate::with(c.group, |cl| {
            cl.stale = true;
            if let Some(node) = &node {
                cl.mark_down(node, current_msec(), backoff);
            }
        });
    }
    // Our own count: the round robin zeroes it for a single seed. A node of the map that
    // failed ends the tries: until the map changes, every try would go to it again, so the
    // request fails open at once (the seeds' round robin tries the next seed as usual).
    pc.tries = if failed && !c.used_rr {
        0
    } else {
        tries.saturating_sub(1)
    };
}

/// Whether every command of the location only reads (what a replica may answer).
fn reads_only(conf: &RedisConf) -> bool {
    conf.commands.iter().all(|command| match command.first() {
        Some(RedisArg::Literal(name)) => matches!(
            name.to_ascii_uppercase().as_slice(),
            b"GET" | b"TTL" | b"PTTL" | b"EXISTS" | b"STRLEN" | b"MGET"
        ),
        _ => false,
    })
}

/// Which argument of `command` is its first key, when its name (and EVAL's key count) are
/// literal.
pub(super) fn key_index(command: &[RedisArg]) -> Option<usize> {
    let literal = |i: usize| match command.get(i) {
        Some(RedisArg::Literal(bytes)) => Some(bytes.as_slice()),
        _ => None,
    };
    first_key_index(literal(0)?, command.len(), literal(2))
}
