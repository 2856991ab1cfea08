//! A worker's discovery of the current master: a round asks the Sentinels in turn (starting
//! with the one that answered last) for `SENTINEL get-master-addr-by-name`, and accepts an
//! answer only when that server says `ROLE` master. Rounds run every `interval`, at once
//! (at most every 100 ms) when a connection to the master fails or it answers `-READONLY`,
//! and every 200 ms while no master is confirmed. All of it on timers and non-blocking
//! connections (`side`); a round never holds a request.

use ngx::ffi::{ngx_event_t, ngx_str_t, NGX_LOG_NOTICE, NGX_LOG_WARN};

use super::super::side::{exchange, Outcome, PeerAddr};
use super::{Auth, Sentinel};
use crate::nginx::log::{limited, Every};
use crate::nginx::timer::Timer;
use crate::nginx::util::{cycle_log, now_ms};
use crate::resp::{Escaped, Reply};

/// The soonest a failure-triggered round follows the previous one.
const MIN_GAP_MS: u64 = 100;
/// How soon the next round runs while no master is confirmed.
const RETRY_MS: u64 = 200;

/// A master's address and its name as nginx's upstream wants them, made once per address a
/// worker ever uses and never freed: requests point at it without copying, and one that
/// started before a switch keeps a valid address and name until it ends.
pub struct Named {
    pub addr: PeerAddr,
    pub name: ngx_str_t,
}

impl Named {
    fn leak(addr: PeerAddr) -> &'static Named {
        let bytes: &'static mut [u8] = Box::leak(
            addr.socket_addr()
                .to_string()
                .into_bytes()
                .into_boxed_slice(),
        );
        Box::leak(Box::new(Named {
            addr,
            name: ngx_str_t {
                len: bytes.len(),
                data: bytes.as_mut_ptr(),
            },
        }))
    }
}

#[derive(Default)]
pub struct State {
    master: Option<PeerAddr>,
    /// The current master's `Named` (`master` is its address).
    named: Option<&'static Named>,
    /// Every `Named` this worker made, reused when a master comes back.
    seen: Vec<&'static Named>,
    /// This worker has confirmed a master itself (not only inherited the configuration's).
    confirmed: bool,
    /// The Sentinel a round starts with: the last one that answered.
    first: usize,
    running: bool,
    /// A round was asked for while one ran.
    again: bool,
    last_round: u64,
    timer: Option<Timer<&'static Sentinel>>,
}

/// This worker's current master, if one was ever confirmed (kept when every Sentinel is
/// down: the last known master is used).
pub fn master(s: &Sentinel) -> Option<&'static Named> {
    s.state.borrow().named
}

/// Starts the periodic rounds (once per worker).
pub fn start(s: &'static Sentinel) {
    let started = {
        let mut st = s.state.borrow_mut();
        if st.timer.is_some() {
            true
        } else {
            st.timer = Some(Timer::new(s, tick, cycle_log(), true));
            false
        }
    };
    if !started {
        round(s);
    }
}

pub fn ensure_started(s: &'static Sentinel) {
    if s.state.borrow().timer.is_none() {
        start(s);
    }
}

/// A connection to the master failed: look again now (or very soon).
pub fn suspect(s: &'static Sentinel) {
    let soon = {
        let mut st = s.state.borrow_mut();
        if st.running {
            st.again = true;
            return;
        }
        let since = now_ms().saturating_sub(st.last_round);
        if since < MIN_GAP_MS {
            arm(&mut st, MIN_GAP_MS - since);
            return;
        }
        true
    };
    if soon {
        round(s);
    }
}

/// The master answered `-READONLY`: it was demoted.
pub fn demoted(s: &'static Sentinel) {
    suspect(s);
}

fn arm(st: &mut State, ms: u64) {
    if let Some(t) = st.timer.as_mut() {
        t.arm(ms);
    }
}

unsafe extern "C" fn tick(ev: *mut ngx_event_t) {
    // SAFETY: `ev` is the event of the Timer in this Sentinel's state (see `start`), and the
    // state is not borrowed while timers fire.
    let s: &'static Sentinel = unsafe { Timer::<&'static Sentinel>::data_of(ev) };
    let busy = s.state.borrow().running;
    if busy {
        s.state.borrow_mut().again = true;
    } else {
        round(s);
    }
}

/// The worker is shutting down gracefully: no new exchange (each would hold the exit back).
fn exiting() -> bool {
    // SAFETY: a plain global nginx sets from this worker's own event loop.
    unsafe { ngx::ffi::ngx_exiting != 0 }
}

fn round(s: &'static Sentinel) {
    if exiting() {
        return;
    }
    {
        let mut st = s.state.borrow_mut();
        st.running = true;
        st.again = false;
        st.last_round = now_ms();
        // The periodic round; an earlier one replaces it when something fails.
        let interval = s.interval as u64;
        arm(&mut st, interval);
    }
    ask(s, 0, Vec::new());
}

/// Asks Sentinel number `tried` of this round (counting from the first).
fn ask(s: &'static Sentinel, tried: usize, mut why: Vec<String>) {
    let n = s.sentinels.len();
    if exiting() {
        s.state.borrow_mut().running = false;
        return;
    }
    if tried == n {
        failed(s, why);
        return;
    }
    let index = (s.state.borrow().first + tried) % n;
    let sentinel = s.sentinels[index];
    let mut commands: Vec<Vec<&[u8]>> = Vec::new();
    let auth = Auth::command(&s.sentinel_auth);
    let authed = auth.is_some();
    commands.extend(auth);
    commands.push(vec![
        b"SENTINEL",
        b"get-master-addr-by-name",
        &s.master_name,
    ]);
    exchange(
        sentinel,
        &commands,
        s.timeout as u64,
        cycle_log(),
        Box::new(move |outcome| {
            s.counters.lookup(outcome.is_ok());
            match master_of(outcome, authed) {
                Ok(addr) => check_role(s, tried, index, addr, why),
                Err(e) => {
                    why.push(format!("sentinel {}: {e}", sentinel.socket_addr()));
                    ask(s, tried + 1, why);
                }
            }
        }),
    );
}

/// The address in a Sentinel's answer.
pub(super) fn master_of(outcome: Outcome, authed: bool) -> Result<PeerAddr, String> {
    let replies = outcome.map_err(|e| e.to_string())?;
    if authed {
        if let Some(Reply::Error(text)) = replies.first() {
            return Err(format!("AUTH refused: {}", Escaped(text)));
        }
    }
    match replies.last() {
        Some(Reply::Array(items)) => match items.as_slice() {
            [Reply::Bulk(ip), Reply::Bulk(port)] => {
                let text = format!(
                    "{}:{}",
                    String::from_utf8_lossy(ip),
                    String::from_utf8_lossy(port)
                );
                let ip: std::net::IpAddr = String::from_utf8_lossy(ip)
                    .parse()
                    .map_err(|_| format!("not an IP address: {}", Escaped(text.as_bytes())))?;
                // Read as an address with the IP: the port's own digits are checked with it.
                let port = format!("0.0.0.0:{}", String::from_utf8_lossy(port))
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| format!("not a port: {}", Escaped(text.as_bytes())))?
                    .port();
                Ok(PeerAddr::new(std::net::SocketAddr::new(ip, port)))
            }
            _ => Err("unexpected answer".into()),
        },
        Some(Reply::NilArray) | Some(Reply::Nil) => Err("does not know this master name".into()),
        Some(Reply::Error(text)) => Err(format!("error: {}", Escaped(text))),
        _ => Err("unexpected answer".into()),
    }
}

/// Accepts `addr` if it says it is a master.
fn check_role(
    s: &'static Sentinel,
    tried: usize,
    index: usize,
    addr: PeerAddr,
    mut why: Vec<String>,
) {
    if exiting() {
        s.state.borrow_mut().running = false;
        return;
    }
    let mut commands: Vec<Vec<&[u8]>> = Vec::new();
    let auth = Auth::command(&s.redis_auth);
    let authed = auth.is_some();
    commands.extend(auth);
    commands.push(vec![b"ROLE"]);
    exchange(
        addr,
        &commands,
        s.timeout as u64,
        cycle_log(),
        Box::new(move |outcome| match role_of(outcome, authed) {
            Ok(()) => accepted(s, index, addr),
            Err(e) => {
                why.push(format!(
                    "master {} named by a sentinel: {e}",
                    addr.socket_addr()
                ));
                ask(s, tried + 1, why);
            }
        }),
    );
}

pub(super) fn role_of(outcome: Outcome, authed: bool) -> Result<(), String> {
    let replies = outcome.map_err(|e| e.to_string())?;
    if authed {
        if let Some(Reply::Error(text)) = replies.first() {
            return Err(format!("AUTH refused: {}", Escaped(text)));
        }
    }
    match replies.last() {
        Some(Reply::Array(items)) => match items.first() {
            Some(Reply::Bulk(role)) if role == b"master" => Ok(()),
            Some(Reply::Bulk(role)) => Err(format!("its role is {}", Escaped(role))),
            _ => Err("unexpected ROLE answer".into()),
        },
        Some(Reply::Error(text)) => Err(format!("error: {}", Escaped(text))),
        _ => Err("unexpected ROLE answer".into()),
    }
}

/// The master found as the configuration was read (`boot`): the workers start with it.
pub(super) fn preset(s: &Sentinel, index: usize, addr: PeerAddr) {
    let mut st = s.state.borrow_mut();
    st.first = index;
    set_master(&mut st, addr);
    s.counters.master_seen(&addr.socket_addr());
}

/// Makes `addr` the current master; answers the previous one.
fn set_master(st: &mut State, addr: PeerAddr) -> Option<PeerAddr> {
    let previous = st.master.replace(addr);
    if previous != Some(addr) {
        let named = match st.seen.iter().find(|n| n.addr == addr) {
            Some(n) => *n,
            None => {
                let n = Named::leak(addr);
                st.seen.push(n);
                n
            }
        };
        st.named = Some(named);
    }
    previous
}

fn accepted(s: &'static Sentinel, index: usize, addr: PeerAddr) {
    let (previous, again, first) = {
        let mut st = s.state.borrow_mut();
        let previous = set_master(&mut st, addr);
        st.first = index;
        st.running = false;
        // The worker's first confirmation is logged even when it confirms the master found
        // as the configuration was read.
        let first = !st.confirmed;
        st.confirmed = true;
        (previous, st.again, first)
    };
    if previous != Some(addr) || first {
        let new = addr.socket_addr();
        let was = match previous {
            Some(old) if old != addr => format!(" (was {})", old.socket_addr()),
            _ => String::new(),
        };
        ngx::ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "stale_cache: redis master \"{}\" of upstream \"{}\" is {}{}",
            Escaped(&s.master_name),
            s.upstream_name,
            new,
            was
        );
        s.counters.master_seen(&new);
        // The group's backoff was about the old master: the new one gets requests at once.
        super::super::backoff::end_group_backoff(s.group);
    }
    if again {
        suspect(s);
    }
}

/// No Sentinel named a master that confirmed it: keep the last known one, warn once per
/// 10 s, and try again soon.
fn failed(s: &'static Sentinel, why: Vec<String>) {
    let master = {
        let mut st = s.state.borrow_mut();
        st.running = false;
        arm(&mut st, RETRY_MS);
        st.master
    };
    let kept = match master {
        Some(m) => format!("keeping the last known master {}", m.socket_addr()),
        None => "no master known yet: its locations answer 502".to_string(),
    };
    limited(
        cycle_log(),
        NGX_LOG_WARN,
        "sentinel lookup",
        Every::Interval,
        format_args!(
            "stale_cache: no Sentinel of upstream \"{}\" named a working master \"{}\" ({}); {}",
            s.upstream_name,
            Escaped(&s.master_name),
            why.join("; "),
            kept
        ),
    );
}
