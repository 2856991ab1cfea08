//! The master as the configuration is read: one blocking round in the master process (like
//! nginx's own name resolution of `server` lines), so the workers start with a master and
//! their first requests need not wait for their own first round. Each exchange is bounded by
//! the group's `timeout`; a failure only leaves the workers to find the master themselves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::super::side::{Outcome, PeerAddr, SideError};
use super::discover;
use super::{Auth, Sentinel};
use crate::resp::{self, Reply};

/// Asks the Sentinels in turn until one names a master that confirms it.
pub fn initial_master(s: &Sentinel) {
    let timeout = Duration::from_millis(s.timeout.max(1) as u64);
    for (index, sentinel) in s.sentinels.iter().enumerate() {
        let mut lookup: Vec<Vec<&[u8]>> = Auth::command(&s.sentinel_auth).into_iter().collect();
        let authed = !lookup.is_empty();
        lookup.push(vec![
            b"SENTINEL",
            b"get-master-addr-by-name",
            &s.master_name,
        ]);
        let Ok(addr) = discover::master_of(blocking(*sentinel, &lookup, timeout), authed) else {
            continue;
        };
        let mut role: Vec<Vec<&[u8]>> = Auth::command(&s.redis_auth).into_iter().collect();
        let authed = !role.is_empty();
        role.push(vec![b"ROLE"]);
        if discover::role_of(blocking(addr, &role, timeout), authed).is_ok() {
            discover::preset(s, index, addr);
            return;
        }
    }
}

fn blocking(addr: PeerAddr, commands: &[Vec<&[u8]>], timeout: Duration) -> Outcome {
    let mut out = Vec::new();
    for command in commands {
        resp::encode_array_header(&mut out, command.len());
        for arg in command {
            resp::encode_bulk_header(&mut out, arg.len());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut stream =
        TcpStream::connect_timeout(&addr.socket_addr(), timeout).map_err(|_| SideError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|_| SideError::Connect)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|_| SideError::Connect)?;
    stream.write_all(&out).map_err(|_| SideError::Closed)?;
    let mut input = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    let mut parsed = 0;
    let mut chunk = [0u8; 4096];
    while replies.len() < commands.len() {
        match resp::parse_reply(&input[parsed..]) {
            Ok(Some((reply, used))) => {
                parsed += used;
                replies.push(reply);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(SideError::Protocol(e.to_string())),
        }
        if input.len() > 64 * 1024 {
            return Err(SideError::Protocol("reply too large".into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(SideError::Closed),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(SideError::Timeout),
        }
    }
    Ok(replies)
}
