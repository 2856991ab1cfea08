//! A deliberately plain recursive RESP2 reader, written from the protocol and the
//! limits `resp.rs` documents and sharing none of its code, so the targets compare two
//! implementations rather than one with itself. Inputs are complete buffers, so it only
//! needs to tell a finished reply from one that stops early or goes wrong.

use crate::resp::{MAX_DEPTH, MAX_HEADER_LINE, MAX_LENGTH};

/// A parsed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    NilArray,
    Array(Vec<Value>),
}

/// Why no reply could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The buffer ends first, and nothing before its end is wrong.
    Incomplete,
    /// Not valid RESP2 within our limits.
    Invalid,
}

/// A reply's first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(usize),
    Nil,
    NilArray,
    Array(usize),
}

/// Reads the first line of the reply at `pos`; returns it and the offset after it.
pub fn head(buf: &[u8], pos: usize) -> Result<(Head, usize), Stop> {
    let kind = *buf.get(pos).ok_or(Stop::Incomplete)?;
    let start = pos + 1;
    let mut i = start;
    match kind {
        b'+' | b'-' => loop {
            match buf.get(i) {
                None => return Err(Stop::Incomplete),
                Some(b'\n') => return Err(Stop::Invalid),
                Some(b'\r') => {
                    crlf_at(buf, i)?;
                    let text = buf[start..i].to_vec();
                    let head = if kind == b'+' {
                        Head::Simple(text)
                    } else {
                        Head::Error(text)
                    };
                    return Ok((head, i + 2));
                }
                Some(_) => i += 1,
            }
        },
        b':' | b'$' | b'*' => {
            loop {
                match buf.get(i) {
                    None => return Err(Stop::Incomplete),
                    Some(b'\r') => break,
                    Some(b'0'..=b'9') => {}
                    Some(b'-') if i == start => {}
                    Some(_) => return Err(Stop::Invalid),
                }
                if i - start == MAX_HEADER_LINE {
                    return Err(Stop::Invalid);
                }
                i += 1;
            }
            crlf_at(buf, i)?;
            let n: i64 = std::str::from_utf8(&buf[start..i])
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(Stop::Invalid)?;
            let head = match (kind, n) {
                (b':', n) => Head::Integer(n),
                (b'$', -1) => Head::Nil,
                (b'*', -1) => Head::NilArray,
                (_, n) if n < 0 || n as u64 > MAX_LENGTH as u64 => return Err(Stop::Invalid),
                (b'$', n) => Head::Bulk(n as usize),
                (_, n) => Head::Array(n as usize),
            };
            Ok((head, i + 2))
        }
        _ => Err(Stop::Invalid),
    }
}

/// `buf[i]` is `\r`: is `\n` next?
fn crlf_at(buf: &[u8], i: usize) -> Result<(), Stop> {
    match buf.get(i + 1) {
        None => Err(Stop::Incomplete),
        Some(b'\n') => Ok(()),
        Some(_) => Err(Stop::Invalid),
    }
}

/// Reads the whole reply at `pos`, inside `depth` enclosing arrays.
pub fn value(buf: &[u8], pos: usize, depth: usize) -> Result<(Value, usize), Stop> {
    let (head, mut end) = head(buf, pos)?;
    let value = match head {
        Head::Simple(text) => Value::Simple(text),
        Head::Error(text) => Value::Error(text),
        Head::Integer(n) => Value::Integer(n),
        Head::Nil => Value::Nil,
        Head::NilArray => Value::NilArray,
        Head::Bulk(len) => {
            if buf.len() - end < len {
                return Err(Stop::Incomplete);
            }
            let payload = buf[end..end + len].to_vec();
            end += len;
            // The trailer is checked byte by byte: a wrong byte is wrong even at the end.
            for expected in *b"\r\n" {
                match buf.get(end) {
                    None => return Err(Stop::Incomplete),
                    Some(&b) if b != expected => return Err(Stop::Invalid),
                    Some(_) => end += 1,
                }
            }
            Value::Bulk(payload)
        }
        Head::Array(0) => Value::Array(Vec::new()),
        Head::Array(count) => {
            if depth == MAX_DEPTH {
                return Err(Stop::Invalid);
            }
            let mut items = Vec::new();
            // Each element takes at least 3 bytes, so the input bounds this loop.
            for _ in 0..count {
                let (item, next) = value(buf, end, depth + 1)?;
                items.push(item);
                end = next;
            }
            Value::Array(items)
        }
    };
    Ok((value, end))
}

/// Reads replies back to back: each with the offset where it ends, and what stopped
/// the stream (`None`: it ends exactly after the last reply).
pub fn stream(buf: &[u8]) -> (Vec<(Value, usize)>, Option<Stop>) {
    let mut replies = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match value(buf, pos, 0) {
            Ok((reply, end)) => {
                replies.push((reply, end));
                pos = end;
            }
            Err(stop) => return (replies, Some(stop)),
        }
    }
    (replies, None)
}

/// The first error reply inside `value`, depth first.
pub fn first_error(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Error(text) => Some(text),
        Value::Array(items) => items.iter().find_map(first_error),
        _ => None,
    }
}
