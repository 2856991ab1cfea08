//! The side client: one non-blocking RESP exchange outside any request. It connects with
//! nginx's `ngx_event_connect_peer`, sends pipelined commands, reads exactly one reply per
//! command, closes the connection and calls back, all within one deadline. For what a worker
//! asks Redis or a Sentinel from a timer (master discovery, role checks): the worker never
//! blocks, and a server that stalls costs at most the deadline.
//!
//! A leaf: it knows sockets, RESP and nginx's event loop, nothing of locations or balancers.

use core::ffi::c_void;
use core::fmt;
use core::ptr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_INFO,
    ngx_connection_t, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_handle_read_event, ngx_handle_write_event, ngx_log_t, ngx_peer_connection_t, ngx_str_t,
    sockaddr,
};

use crate::nginx::util::{no_connection, AGAIN, OK};
use crate::resp::{self, Reply};

/// A socket address in the form nginx's connect takes.
#[derive(Clone, Copy)]
pub struct PeerAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl PeerAddr {
    pub fn new(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) address.
        let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                core::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe { ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                core::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        PeerAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// The address as Rust sees it (for names and comparisons).
    pub fn socket_addr(&self) -> SocketAddr {
        if i32::from(self.storage.ss_family) == libc::AF_INET6 {
            // SAFETY: the family says the storage holds a sockaddr_in6 (written by `new`).
            let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            SocketAddr::new(IpAddr::V6(ip), u16::from_be(sin6.sin6_port))
        } else {
            // SAFETY: otherwise `new` wrote a sockaddr_in.
            let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port))
        }
    }

    pub fn as_ptr(&self) -> *const sockaddr {
        &self.storage as *const _ as *const sockaddr
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }
}

impl PartialEq for PeerAddr {
    fn eq(&self, other: &Self) -> bool {
        self.socket_addr() == other.socket_addr()
    }
}

/// Why an exchange gave no replies.
#[derive(Debug)]
pub enum SideError {
    /// The connection could not be made (refused, unreachable, no free connection).
    Connect,
    /// The server closed the connection or a read/write failed before all replies came.
    Closed,
    /// The deadline passed.
    Timeout,
    /// The server sent something that is not RESP.
    Protocol(String),
}

impl fmt::Display for SideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SideError::Connect => f.write_str("connection failed"),
            SideError::Closed => f.write_str("connection closed before the reply"),
            SideError::Timeout => f.write_str("timed out"),
            SideError::Protocol(what) => write!(f, "invalid reply: {what}"),
        }
    }
}

/// What the caller gets: one reply per command (error replies included), or why not.
pub type Outcome = Result<Vec<Reply>, SideError>;
/// Called once, from the event loop (never from inside [`exchange`]).
pub type Done = Box<dyn FnOnce(Outcome)>;

/// Replies larger than this are refused: the side client reads small answers only.
const MAX_REPLY_BYTES: usize = 64 * 1024;

#[repr(C)]
struct Exchange {
    /// First, so the timer handler finds the exchange from its event.
    deadline: ngx_event_t,
    pc: ngx_peer_connection_t,
    name: Vec<u8>,
    name_str: ngx_str_t,
    addr: PeerAddr,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    parsed: usize,
    wanted: usize,
    replies: Vec<Reply>,
    /// A failure found before the event loop took over, reported from the timer.
    early: Option<SideError>,
    done: Option<Done>,
}

/// Sends `commands` (each a list of arguments) to `addr` pipelined on a new connection and
/// calls `done` with their replies, or the failure, within `deadline_ms`. `done` always runs
/// later from the event loop, so the caller may hold its own state borrowed while calling.
pub fn exchange(
    addr: PeerAddr,
    commands: &[Vec<&[u8]>],
    deadline_ms: u64,
    log: *mut ngx_log_t,
    done: Done,
) {
    let mut out = Vec::with_capacity(128);
    for command in commands {
        resp::encode_array_header(&mut out, command.len());
        for arg in command {
            resp::encode_bulk_header(&mut out, arg.len());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
    let name = addr.socket_addr().to_string().into_bytes();
    let ex = Box::into_raw(Box::new(Exchange {
        // SAFETY: zeroed is the initial state of nginx's event and peer structs.
        deadline: unsafe { core::mem::zeroed() },
        // SAFETY: as above.
        pc: unsafe { core::mem::zeroed() },
        name,
        name_str: ngx_str_t::default(),
        addr,
        out,
        sent: 0,
        input: Vec::new(),
        parsed: 0,
        wanted: commands.len(),
        replies: Vec::new(),
        early: None,
        done: Some(done),
    }));
    // SAFETY: `ex` was just leaked from a Box; it is freed only by `finish`.
    let e = unsafe { &mut *ex };
    e.name_str = ngx_str_t {
        len: e.name.len(),
        data: e.name.as_mut_ptr(),
    };
    e.deadline.handler = Some(deadline_handler);
    e.deadline.data = no_connection();
    e.deadline.log = log;
    // Not cancelable: a worker shutting down gracefully waits for the exchange to end (at
    // most the deadline) instead of exiting with its socket open, which nginx reports as an
    // alert ("open socket left in connection").
    e.deadline.set_cancelable(0);
    e.pc.sockaddr = e.addr.as_ptr() as *mut sockaddr;
    e.pc.socklen = e.addr.len();
    e.pc.name = &mut e.name_str;
    e.pc.get = Some(ngx_event_get_peer);
    e.pc.log = log;
    e.pc.tries = 1;
    // A Sentinel or Redis that is down is expected during a failover: the caller decides
    // what to log; nginx's own connect lines go to info.
    e.pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_INFO);

    // SAFETY: the peer connection is fully set up; nginx allocates the connection.
    let rc = unsafe { ngx_event_connect_peer(&mut e.pc) };
    if rc != OK && rc != AGAIN {
        // NGX_ERROR, NGX_BUSY or NGX_DECLINED (a connection that failed at once).
        close(e);
        e.early = Some(SideError::Connect);
        // SAFETY: the event lives in the leaked box until `finish`.
        unsafe { ngx_add_timer(&mut e.deadline, 1) };
        return;
    }
    // SAFETY: the event lives in the leaked box until `finish`, which deletes the timer.
    unsafe { ngx_add_timer(&mut e.deadline, deadline_ms.max(1) as _) };
    let c = e.pc.connection;
    // SAFETY: connect_peer succeeded or is in progress: `c` is a live connection of ours.
    unsafe {
        (*c).data = ex as *mut c_void;
        (*c).log = log;
        (*(*c).read).handler = Some(read_handler);
        (*(*c).write).handler = Some(write_handler);
        (*(*c).read).log = log;
        (*(*c).write).log = log;
        // Connected at once (common on loopback): the write event is reported by the next
        // loop iteration, never from here, so `done` never runs inside this call. Level-
        // triggered event methods need the event added first; epoll has it already.
        if rc == OK && ngx_handle_write_event((*c).write, 0) != OK {
            close(e);
            e.early = Some(SideError::Connect);
            ngx_add_timer(&mut e.deadline, 1);
        }
    }
}

fn close(e: &mut Exchange) {
    if !e.pc.connection.is_null() {
        // SAFETY: a connection made by connect_peer for this exchange; closing removes its
        // events from the loop, so no handler runs for it afterwards.
        unsafe { ngx_close_connection(e.pc.connection) };
        e.pc.connection = ptr::null_mut();
    }
}

/// Ends the exchange: closes, frees, and calls back.
fn finish(ex: *mut Exchange, outcome: Outcome) {
    // SAFETY: `ex` is the box leaked by `exchange`, finished exactly once (every handler
    // returns right after calling this, and the connection and timer are gone).
    let mut e = unsafe { Box::from_raw(ex) };
    if e.deadline.timer_set() != 0 {
        // SAFETY: the timer is armed and ours.
        unsafe { ngx_del_timer(&mut e.deadline) };
    }
    close(&mut e);
    let done = e.done.take();
    drop(e);
    if let Some(done) = done {
        done(outcome);
    }
}

/// The exchange a connection event belongs to.
///
/// # Safety
/// `ev` must be an event of a connection made by `exchange`.
unsafe fn exchange_of(ev: *mut ngx_event_t) -> *mut Exchange {
    // SAFETY: (caller) the event's data is the connection, whose data is the exchange.
    unsafe { (*((*ev).data as *mut ngx_connection_t)).data as *mut Exchange }
}

unsafe extern "C" fn deadline_handler(ev: *mut ngx_event_t) {
    let ex = ev as *mut Exchange;
    // SAFETY: the deadline is the first field of a live Exchange (repr(C)).
    let early = unsafe { (*ex).early.take() };
    finish(ex, Err(early.unwrap_or(SideError::Timeout)));
}

unsafe extern "C" fn write_handler(wev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for our connection's write event.
    let ex = unsafe { exchange_of(wev) };
    // SAFETY: the exchange is live until `finish`.
    let e = unsafe { &mut *ex };
    let c = e.pc.connection;
    while e.sent < e.out.len() {
        let rest = &e.out[e.sent..];
        // SAFETY: `c` is live; `send` writes at most `rest.len()` bytes from it.
        let n = unsafe {
            ((*c).send.expect("connections have send"))(c, rest.as_ptr() as *mut u8, rest.len())
        };
        if n > 0 {
            e.sent += n as usize;
        } else if n as i64 == AGAIN as i64 {
            // SAFETY: live connection event.
            if unsafe { ngx_handle_write_event(wev, 0) } != OK {
                finish(ex, Err(SideError::Closed));
            }
            return;
        } else {
            finish(ex, Err(SideError::Connect));
            return;
        }
    }
    // SAFETY: live connection; the answer may already be there.
    unsafe { read_handler((*c).read) };
}

unsafe extern "C" fn read_handler(rev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for our connection's read event.
    let ex = unsafe { exchange_of(rev) };
    // SAFETY: the exchange is live until `finish`.
    let e = unsafe { &mut *ex };
    let c = e.pc.connection;
    if e.sent < e.out.len() {
        // Replies come after the commands; the write side resumes reading when done.
        return;
    }
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: `c` is live; `recv` writes at most `chunk.len()` bytes.
        let n = unsafe {
            ((*c).recv.expect("connections have recv"))(c, chunk.as_mut_ptr(), chunk.len())
        };
        if n > 0 {
            e.input.extend_from_slice(&chunk[..n as usize]);
            match parse(e) {
                Ok(true) => {
                    let replies = core::mem::take(&mut e.replies);
                    finish(ex, Ok(replies));
                    return;
                }
                Ok(false) if e.input.len() > MAX_REPLY_BYTES => {
                    finish(ex, Err(SideError::Protocol("reply too large".into())));
                    return;
                }
                Ok(false) => continue,
                Err(what) => {
                    finish(ex, Err(SideError::Protocol(what)));
                    return;
                }
            }
        } else if n == 0 {
            finish(ex, Err(SideError::Closed));
            return;
        } else if n as i64 == AGAIN as i64 {
            // SAFETY: live connection event.
            if unsafe { ngx_handle_read_event(rev, 0) } != OK {
                finish(ex, Err(SideError::Closed));
            }
            return;
        } else {
            finish(ex, Err(SideError::Closed));
            return;
        }
    }
}

/// Parses the complete replies in the input; `true` once all are there.
fn parse(e: &mut Exchange) -> Result<bool, String> {
    while e.replies.len() < e.wanted {
        match resp::parse_reply(&e.input[e.parsed..]) {
            Ok(Some((reply, used))) => {
                e.parsed += used;
                e.replies.push(reply);
            }
            Ok(None) => return Ok(false),
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok(true)
}
