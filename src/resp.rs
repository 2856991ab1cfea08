//! RESP2 (Redis serialization protocol) encoding and decoding.
//!
//! Kept free of nginx symbols so it can be unit-tested on its own. Replies may
//! carry bulk payloads of many megabytes arriving in small reads, so the
//! streaming types ([`ReplyFramer`], [`ValueReader`], [`BulkBody`]) keep only
//! constant-size state and never buffer payloads; [`parse_reply`] and
//! [`parse_integer_reply`] are for small replies that are already complete in
//! memory (e.g. subrequest bodies).

use std::fmt;

/// Largest bulk length or array count accepted; Redis' default `proto-max-bulk-len`.
pub const MAX_LENGTH: usize = 512 * 1024 * 1024;

/// Longest body of a `:`, `$` or `*` line accepted (an `i64` needs at most 20
/// bytes), so that garbage cannot make the line buffer grow.
pub const MAX_HEADER_LINE: usize = 64;

/// Deepest array nesting accepted, bounding framer state and parser depth.
pub const MAX_DEPTH: usize = 32;

/// Error and simple-string texts are kept only up to this many bytes: they are
/// status words or log material, never payloads.
pub const MAX_TEXT_LEN: usize = 200;

const CRLF: &[u8; 2] = b"\r\n";

/* ---------------------------------------------------------------- encoding */

/// Appends `args` as an array of bulk strings, the request form Redis always
/// understands and the only binary-safe one. The nginx layer writes the same
/// thing piecewise with the two header encoders; this is their reference.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    encode_array_header(out, args.len());
    for arg in args {
        encode_bulk_header(out, arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(CRLF);
    }
}

/// Appends `*n\r\n`; `n` bulk strings must follow.
pub fn encode_array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_decimal(out, n);
    out.extend_from_slice(CRLF);
}

/// Appends `$len\r\n`. The caller then sends the `len` payload bytes and
/// `\r\n` itself, so a large payload need not be copied into `out`.
pub fn encode_bulk_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    push_decimal(out, len);
    out.extend_from_slice(CRLF);
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(decimal(n as u64, &mut [0; 20]));
}

/// The decimal digits of `n`, written at the end of `buf` without allocating.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

/* ------------------------------------------------------------------ errors */

/// A reply stream that is not valid RESP2 (or exceeds our limits); the
/// connection cannot be trusted after this. Display text fits an error log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A reply started with a byte that is not `+ - : $ *`.
    BadType(u8),
    /// A line ended with a bare `\r` or `\n` instead of `\r\n`.
    BadLineEnd,
    /// A `:`, `$` or `*` line was longer than [`MAX_HEADER_LINE`].
    LineTooLong,
    /// A `:`, `$` or `*` line did not hold a decimal integer.
    NotANumber,
    /// A `:`, `$` or `*` line held an integer outside the `i64` range.
    IntegerOverflow,
    /// A bulk length or array count below `-1`.
    NegativeLength(i64),
    /// A bulk length or array count above [`MAX_LENGTH`].
    TooLarge(i64),
    /// A bulk payload was not followed by `\r\n`.
    MissingPayloadCrlf,
    /// Arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadType(byte) => write!(
                f,
                "redis protocol error: invalid reply type byte 0x{byte:02x}"
            ),
            Self::BadLineEnd => f.write_str("redis protocol error: line not terminated by CRLF"),
            Self::LineTooLong => write!(
                f,
                "redis protocol error: header line longer than {MAX_HEADER_LINE} bytes"
            ),
            Self::NotANumber => f.write_str("redis protocol error: invalid integer in header line"),
            Self::IntegerOverflow => {
                f.write_str("redis protocol error: integer out of 64-bit range")
            }
            Self::NegativeLength(n) => {
                write!(f, "redis protocol error: invalid negative length {n}")
            }
            Self::TooLarge(n) => write!(
                f,
                "redis protocol error: length {n} exceeds the {MAX_LENGTH} limit"
            ),
            Self::MissingPayloadCrlf => {
                f.write_str("redis protocol error: bulk payload not followed by CRLF")
            }
            Self::TooDeep => write!(
                f,
                "redis protocol error: arrays nested deeper than {MAX_DEPTH} levels"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Why [`parse_integer_reply`] found no integer, worded for an error log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// The buffer ends before the first reply does.
    Incomplete,
    /// The bytes are not valid RESP2.
    Protocol(ProtocolError),
    /// Redis answered with an error; its text, truncated to [`MAX_TEXT_LEN`].
    ErrorReply(Vec<u8>),
    /// The reply is valid but not an integer.
    WrongType(ReplyKind),
    /// More bytes follow the integer reply.
    TrailingData {
        /// How many bytes follow it.
        extra: usize,
    },
}

impl From<ProtocolError> for ReplyError {
    fn from(err: ProtocolError) -> Self {
        Self::Protocol(err)
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete => f.write_str("incomplete redis reply"),
            Self::Protocol(err) => err.fmt(f),
            Self::ErrorReply(text) => write!(f, "redis error reply: {}", Escaped(text)),
            Self::WrongType(kind) => write!(f, "expected a redis integer reply, got {kind}"),
            Self::TrailingData { extra } => {
                write!(f, "{extra} unexpected bytes after the redis integer reply")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

/// Shows untrusted reply text in a log line without raw control bytes.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.0 {
            if byte.is_ascii_graphic() || byte == b' ' {
                write!(f, "{}", char::from(byte))?;
            } else {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/* ------------------------------------------------------------------ values */

/// Type of a reply, for decisions and logs that do not need its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// `+text`
    Simple,
    /// `-text`
    Error,
    /// `:n`
    Integer,
    /// `$len` with a payload
    Bulk,
    /// `$-1` or `*-1`: both mean "no value".
    Nil,
    /// `*n`, including the empty array.
    Array,
}

impl fmt::Display for ReplyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Simple => "simple string",
            Self::Error => "error",
            Self::Integer => "integer",
            Self::Bulk => "bulk string",
            Self::Nil => "nil",
            Self::Array => "array",
        })
    }
}

/// A fully parsed reply, from [`parse_reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Simple(Vec<u8>),
    /// `-text`
    Error(Vec<u8>),
    /// `:n`
    Integer(i64),
    /// `$len` and its payload.
    Bulk(Vec<u8>),
    /// `$-1`
    Nil,
    /// `*n` and its elements.
    Array(Vec<Reply>),
    /// `*-1`
    NilArray,
}

/// The error codes Redis documents that a cache location may meet; any other code is logged
/// under `ERR`, so what a server sends cannot grow the limiter table.
const CAUSES: &[&str] = &[
    "ERR",
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOSCRIPT",
    "NOAUTH",
    "NOPERM",
    "WRONGPASS",
    "WRONGTYPE",
    "MISCONF",
    "EXECABORT",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "CROSSSLOT",
];

/// The code of an error reply: its first word (Redis's error code) when it is a known one,
/// `ERR` otherwise.
pub fn error_code(text: &[u8]) -> &'static str {
    let word = text.split(|&b| b == b' ').next().unwrap_or_default();
    CAUSES
        .iter()
        .find(|c| c.as_bytes() == word)
        .copied()
        .unwrap_or("ERR")
}

/* ----------------------------------------------------------- state machine */

/// A complete header line, as seen by the shared state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Simple,
    Error,
    Integer(i64),
    Bulk(usize),
    NilBulk,
    Array(usize),
    NilArray,
}

impl Line {
    fn kind(self) -> ReplyKind {
        match self {
            Self::Simple => ReplyKind::Simple,
            Self::Error => ReplyKind::Error,
            Self::Integer(_) => ReplyKind::Integer,
            Self::Bulk(_) => ReplyKind::Bulk,
            Self::NilBulk | Self::NilArray => ReplyKind::Nil,
            Self::Array(_) => ReplyKind::Array,
        }
    }
}

/// Something the machine finished: a header line, or (`line: None`) a bulk
/// payload with its `\r\n`.
#[derive(Clone, Copy, Debug)]
struct Token {
    line: Option<Line>,
    /// The line is the first line of a top-level reply (not an array element, not a payload).
    head: bool,
    /// This token completed a whole top-level reply.
    reply_done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumberLine {
    Integer,
    Bulk,
    Array,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Expecting the type byte of a reply or array element.
    Type,
    /// Inside a `+`/`-` line (`error` tells which), before its `\r`.
    Text { error: bool },
    /// After the `\r` of a `+`/`-` line.
    TextLf { error: bool },
    /// Inside a `:`/`$`/`*` line, before its `\r`.
    Number(NumberLine),
    /// After the `\r` of a `:`/`$`/`*` line.
    NumberLf(NumberLine),
    /// Skipping a bulk payload and its `\r\n`.
    Payload(BulkBody),
}

/// The one RESP2 tokenizer every reader here is built on, so they all agree
/// on what is valid. Constant size; `text` only grows when `capture` is set.
#[derive(Debug)]
struct Machine {
    state: State,
    number: [u8; MAX_HEADER_LINE],
    number_len: usize,
    /// Elements still expected by each open array, outermost first.
    open: [usize; MAX_DEPTH],
    depth: usize,
    /// Whether to keep `+`/`-` line text (up to [`MAX_TEXT_LEN`]) in `text`.
    capture: bool,
    /// Whether to keep the text of `-` lines even when `capture` is off.
    capture_errors: bool,
    text: Vec<u8>,
    /// Errors are sticky: after one, the stream position is meaningless.
    failed: Option<ProtocolError>,
}

impl Machine {
    fn new(capture: bool) -> Self {
        Self {
            state: State::Type,
            number: [0; MAX_HEADER_LINE],
            number_len: 0,
            open: [0; MAX_DEPTH],
            depth: 0,
            capture,
            capture_errors: capture,
            text: Vec::new(),
            failed: None,
        }
    }

    #[cfg(any(test, fuzzing))]
    fn at_boundary(&self) -> bool {
        matches!(self.state, State::Type) && self.depth == 0 && self.failed.is_none()
    }

    /// Consumes `input` up to and including the next finished token, or all
    /// of it when no token finishes. Returns the bytes consumed.
    fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Token>), ProtocolError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = self.advance_inner(input);
        if let Err(err) = result {
            self.failed = Some(err);
        }
        result
    }

    fn advance_inner(&mut self, input: &[u8]) -> Result<(usize, Option<Token>), ProtocolError> {
        let mut pos = 0;
        while pos < input.len() {
            let byte = input[pos];
            match self.state {
                State::Type => {
                    self.state = match byte {
                        b'+' => State::Text { error: false },
                        b'-' => State::Text { error: true },
                        b':' => State::Number(NumberLine::Integer),
                        b'$' => State::Number(NumberLine::Bulk),
                        b'*' => State::Number(NumberLine::Array),
                        _ => return Err(ProtocolError::BadType(byte)),
                    };
                    self.number_len = 0;
                    self.text.clear();
                    pos += 1;
                }
                State::Text { error } => {
                    let rest = &input[pos..];
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    self.capture_text(&rest[..end], error);
                    pos += end;
                    if end < rest.len() {
                        if rest[end] == b'\n' {
                            return Err(ProtocolError::BadLineEnd);
                        }
                        self.state = State::TextLf { error };
                        pos += 1;
                    }
                }
                State::TextLf { error } => {
                    if byte != b'\n' {
                        return Err(ProtocolError::BadLineEnd);
                    }
                    let line = if error { Line::Error } else { Line::Simple };
                    return Ok((pos + 1, Some(self.finish(Some(line))?)));
                }
                State::Number(kind) => {
                    match byte {
                        b'\r' => self.state = State::NumberLf(kind),
                        b'\n' => return Err(ProtocolError::BadLineEnd),
                        b'0'..=b'9' | b'-' => {
                            if byte == b'-' && self.number_len > 0 {
                                return Err(ProtocolError::NotANumber);
                            }
                            if self.number_len == MAX_HEADER_LINE {
                                return Err(ProtocolError::LineTooLong);
                            }
                            self.number[self.number_len] = byte;
                            self.number_len += 1;
                        }
                        _ => return Err(ProtocolError::NotANumber),
                    }
                    pos += 1;
                }
                State::NumberLf(kind) => {
                    if byte != b'\n' {
                        return Err(ProtocolError::BadLineEnd);
                    }
                    let n = parse_i64(&self.number[..self.number_len])?;
                    let line = match kind {
                        NumberLine::Integer => Line::Integer(n),
                        NumberLine::Bulk => checked_length(n)?.map_or(Line::NilBulk, Line::Bulk),
                        NumberLine::Array => checked_length(n)?.map_or(Line::NilArray, Line::Array),
                    };
                    return Ok((pos + 1, Some(self.finish(Some(line))?)));
                }
                State::Payload(ref mut body) => {
                    pos += body.feed(&input[pos..])?.consumed;
                    if body.is_complete() {
                        return Ok((pos, Some(self.finish(None)?)));
                    }
                }
            }
        }
        Ok((pos, None))
    }

    fn capture_text(&mut self, bytes: &[u8], error: bool) {
        if self.capture || (error && self.capture_errors) {
            let room = MAX_TEXT_LEN - self.text.len();
            self.text.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Updates the array stack once a header line (or a payload) has ended.
    fn finish(&mut self, line: Option<Line>) -> Result<Token, ProtocolError> {
        self.state = State::Type;
        let head = line.is_some() && self.depth == 0;
        let reply_done = match line {
            Some(Line::Bulk(len)) => {
                self.state = State::Payload(BulkBody::new(len));
                false
            }
            Some(Line::Array(count)) if count > 0 => {
                if self.depth == MAX_DEPTH {
                    return Err(ProtocolError::TooDeep);
                }
                self.open[self.depth] = count;
                self.depth += 1;
                false
            }
            _ => self.element_done(),
        };
        Ok(Token {
            line,
            head,
            reply_done,
        })
    }

    /// Counts one finished element against the enclosing arrays, closing
    /// those it completes; true when a whole top-level reply is done.
    fn element_done(&mut self) -> bool {
        while self.depth > 0 {
            let left = &mut self.open[self.depth - 1];
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.depth -= 1;
        }
        true
    }
}

/// Strict decimal: optional `-`, then at least one digit.
fn parse_i64(text: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::NotANumber);
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(digit - b'0')))
            .ok_or(ProtocolError::IntegerOverflow)?;
    }
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    value.ok_or(ProtocolError::IntegerOverflow)
}

/// Validates a bulk length or array count; `None` is the nil marker `-1`.
fn checked_length(n: i64) -> Result<Option<usize>, ProtocolError> {
    match n {
        -1 => Ok(None),
        n if n < -1 => Err(ProtocolError::NegativeLength(n)),
        n => match usize::try_from(n) {
            Ok(len) if len <= MAX_LENGTH => Ok(Some(len)),
            _ => Err(ProtocolError::TooLarge(n)),
        },
    }
}

/* ------------------------------------------------------------------ framer */

/// Finds reply boundaries in a pass-through reply stream without buffering
/// payloads, so the caller knows when the replies it expects are all in and
/// where any surplus bytes begin.
#[derive(Debug)]
pub struct ReplyFramer {
    machine: Machine,
    complete: usize,
    /// Top-level replies whose first line is in.
    heads: usize,
    /// The first error line (top-level or nested): the index of its reply and its text.
    first_error: Option<(usize, Vec<u8>)>,
}

impl Default for ReplyFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyFramer {
    /// A framer at the start of a reply stream.
    pub fn new() -> Self {
        Self {
            // Keeps the text of `-` lines (at most MAX_TEXT_LEN bytes) to report errors.
            machine: Machine {
                capture_errors: true,
                ..Machine::new(false)
            },
            complete: 0,
            heads: 0,
            first_error: None,
        }
    }

    /// Consumes the whole chunk (the return value is always `chunk.len()`).
    #[cfg(any(test, fuzzing))]
    pub fn feed(&mut self, chunk: &[u8]) -> Result<usize, ProtocolError> {
        self.feed_until(chunk, usize::MAX)
    }

    /// Consumes `chunk` but stops right after the reply that brings
    /// [`complete_replies`](Self::complete_replies) to `target_replies`;
    /// returns the bytes consumed, so `chunk[consumed..]` is what follows.
    pub fn feed_until(
        &mut self,
        chunk: &[u8],
        target_replies: usize,
    ) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        while self.complete < target_replies && pos < chunk.len() {
            let (used, token) = self.machine.advance(&chunk[pos..])?;
            pos += used;
            let Some(token) = token else { continue };
            if token.line == Some(Line::Error) && self.first_error.is_none() {
                self.first_error = Some((self.complete, self.machine.text.clone()));
            }
            if token.head {
                self.heads += 1;
            }
            if token.reply_done {
                self.complete += 1;
            }
        }
        Ok(pos)
    }

    /// Top-level replies completed so far.
    pub fn complete_replies(&self) -> usize {
        self.complete
    }

    /// Top-level replies whose first line (type and length, or whole `+`/`-`/`:` line) is in:
    /// once it reaches the number of commands, whether one failed is known, apart from
    /// errors nested in the last reply's array.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The first error seen: the 0-based index of the reply it is in (nested errors, as
    /// in `EXEC` results, count for their reply) and its text, truncated to
    /// [`MAX_TEXT_LEN`].
    pub fn first_error(&self) -> Option<(usize, &[u8])> {
        self.first_error.as_ref().map(|(i, t)| (*i, t.as_slice()))
    }

    /// True when no reply is partially received, e.g. to tell a clean end of
    /// stream from a truncated one.
    #[cfg(any(test, fuzzing))]
    pub fn is_at_boundary(&self) -> bool {
        self.machine.at_boundary()
    }
}

/* ------------------------------------------------------------ value reader */

/// Header of the reply a [`ValueReader`] was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueHead {
    /// `$len`: `len` payload bytes and `\r\n` follow; see [`BulkBody`].
    Bulk {
        /// Payload length.
        len: usize,
    },
    /// `$-1` or `*-1`.
    Nil,
    /// `:n`
    Integer(i64),
    /// `+text`, truncated to [`MAX_TEXT_LEN`].
    Simple(Vec<u8>),
    /// `-text`, truncated to [`MAX_TEXT_LEN`].
    Error(Vec<u8>),
    /// `*n`: not usable as a value; only its header line was consumed.
    Array,
}

/// Reads the header of the last reply of a pipeline (e.g. `GET` after
/// `SELECT`/`AUTH`), skipping the replies before it, so the value can be
/// streamed without buffering.
///
/// Fed incrementally and consuming as it goes, it suits an upstream
/// `process_header` handler: feed the unread part of the buffer, advance the
/// read position by the returned count, and retry with more data until
/// [`head`](Self::head) is set. At that point the bytes consumed end exactly
/// where a bulk payload starts; a [`BulkBody`] then splits the rest (in the
/// same buffer and in later `input_filter` chunks) into payload and trailer.
#[derive(Debug)]
pub struct ValueReader {
    machine: Machine,
    skip: usize,
    skipped: usize,
    first_error: Option<Vec<u8>>,
    /// The 0-based index of the skipped reply `first_error` is in.
    first_error_reply: usize,
    head: Option<ValueHead>,
}

impl ValueReader {
    /// A reader whose value is the reply after the first `skip_replies` ones.
    pub fn new(skip_replies: usize) -> Self {
        Self {
            machine: Machine::new(true),
            skip: skip_replies,
            skipped: 0,
            first_error: None,
            first_error_reply: 0,
            head: None,
        }
    }

    /// Consumes bytes until the value's header is complete (then stops right
    /// after its header line) or the chunk is used up. Returns bytes consumed;
    /// once the head is known it consumes nothing more.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        while self.head.is_none() && pos < chunk.len() {
            let (used, token) = self.machine.advance(&chunk[pos..])?;
            pos += used;
            let Some(token) = token else { break };
            if self.skipped < self.skip {
                if token.line == Some(Line::Error) && self.first_error.is_none() {
                    self.first_error = Some(self.machine.text.clone());
                    self.first_error_reply = self.skipped;
                }
                if token.reply_done {
                    self.skipped += 1;
                }
            } else if let Some(line) = token.line {
                self.head = Some(self.value_head(line));
            }
        }
        Ok(pos)
    }

    fn value_head(&self, line: Line) -> ValueHead {
        match line {
            Line::Simple => ValueHead::Simple(self.machine.text.clone()),
            Line::Error => ValueHead::Error(self.machine.text.clone()),
            Line::Integer(n) => ValueHead::Integer(n),
            Line::Bulk(len) => ValueHead::Bulk { len },
            Line::NilBulk | Line::NilArray => ValueHead::Nil,
            Line::Array(_) => ValueHead::Array,
        }
    }

    /// The value's header, once complete.
    pub fn head(&self) -> Option<&ValueHead> {
        self.head.as_ref()
    }

    /// Text of the first error among the skipped replies (including errors
    /// nested in arrays, as in `EXEC` results), truncated to
    /// [`MAX_TEXT_LEN`], for logging why a setup command failed.
    pub fn first_skipped_error(&self) -> Option<&[u8]> {
        self.first_error.as_deref()
    }

    /// The 0-based index of the reply [`first_skipped_error`](Self::first_skipped_error)
    /// is in (0 when there is none).
    pub fn first_skipped_error_reply(&self) -> usize {
        self.first_error_reply
    }
}

/* --------------------------------------------------------------- bulk body */

/// How [`BulkBody::feed`] split a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodySplit {
    /// `chunk[..payload]` is payload.
    pub payload: usize,
    /// `chunk[..consumed]` was payload or trailer; the rest is not this reply's.
    pub consumed: usize,
}

/// Tracks a bulk payload of known length and validates its mandatory
/// `\r\n`, so payload bytes can be passed on as they arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkBody {
    remaining: usize,
    trailer_seen: usize,
}

impl BulkBody {
    /// A body of `len` payload bytes still to come.
    pub fn new(len: usize) -> Self {
        Self {
            remaining: len,
            trailer_seen: 0,
        }
    }

    /// Splits the next chunk into payload and trailer bytes; stops consuming
    /// after the trailer.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<BodySplit, ProtocolError> {
        let payload = self.remaining.min(chunk.len());
        self.remaining -= payload;
        let mut consumed = payload;
        while self.remaining == 0 && self.trailer_seen < CRLF.len() && consumed < chunk.len() {
            if chunk[consumed] != CRLF[self.trailer_seen] {
                return Err(ProtocolError::MissingPayloadCrlf);
            }
            self.trailer_seen += 1;
            consumed += 1;
        }
        Ok(BodySplit { payload, consumed })
    }

    /// Payload bytes not yet seen.
    pub fn remaining_payload(&self) -> usize {
        self.remaining
    }

    /// True once the payload and its `\r\n` have been consumed.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0 && self.trailer_seen == CRLF.len()
    }
}

/* ------------------------------------------------------- complete buffers */

/// Parses the first reply in `buf`, which should hold it entirely: returns the
/// reply and its length in bytes, or `None` if `buf` ends before it does.
/// The Redis locations stream; this tree form is the oracle for tests and fuzz
/// targets, and reads the small replies of the side client (`redis::side`).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut machine = Machine::new(false);
    // Arrays being filled: their elements so far and their element count.
    let mut open: Vec<(Vec<Reply>, usize)> = Vec::new();
    let mut pos = 0;
    let mut payload_start = 0;
    'tokens: loop {
        // The machine returns after each token, and `buf` holds the whole
        // reply, so each call consumes exactly one line or one payload.
        let start = pos;
        let (used, token) = machine.advance(&buf[pos..])?;
        pos += used;
        let Some(token) = token else {
            return Ok(None);
        };
        let mut value = match token.line {
            Some(Line::Simple) => Reply::Simple(buf[start + 1..pos - 2].to_vec()),
            Some(Line::Error) => Reply::Error(buf[start + 1..pos - 2].to_vec()),
            Some(Line::Integer(n)) => Reply::Integer(n),
            Some(Line::Bulk(_)) => {
                payload_start = pos;
                continue;
            }
            None => Reply::Bulk(buf[payload_start..pos - 2].to_vec()),
            Some(Line::NilBulk) => Reply::Nil,
            Some(Line::NilArray) => Reply::NilArray,
            Some(Line::Array(0)) => Reply::Array(Vec::new()),
            Some(Line::Array(count)) => {
                // The count is untrusted: don't let it size the allocation.
                open.push((Vec::with_capacity(count.min(64)), count));
                continue;
            }
        };
        // Attach the finished value to its array, closing every array it fills.
        while let Some((mut items, count)) = open.pop() {
            items.push(value);
            if items.len() < count {
                open.push((items, count));
                continue 'tokens;
            }
            value = Reply::Array(items);
        }
        return Ok(Some((value, pos)));
    }
}

/// Reads a buffer that must hold exactly one integer reply (`:N\r\n`), as
/// Redis answers `TTL` or `PERSIST`, e.g. a subrequest body from a redis
/// location or redis2-nginx-module.
pub fn parse_integer_reply(buf: &[u8]) -> Result<i64, ReplyError> {
    let mut machine = Machine::new(true);
    let (used, token) = machine.advance(buf)?;
    let Some(token) = token else {
        return Err(ReplyError::Incomplete);
    };
    match token.line {
        Some(Line::Integer(n)) if used == buf.len() => Ok(n),
        Some(Line::Integer(_)) => Err(ReplyError::TrailingData {
            extra: buf.len() - used,
        }),
        Some(Line::Error) => Err(ReplyError::ErrorReply(machine.text)),
        line => Err(ReplyError::WrongType(
            line.map_or(ReplyKind::Bulk, Line::kind),
        )),
    }
}

/* ------------------------------------------------------------------- tests */

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &[u8]) -> Vec<u8> {
        s.to_vec()
    }

    /// Sample replies covering every type, with what they must parse to.
    fn samples() -> Vec<(&'static [u8], Reply)> {
        use Reply::*;
        vec![
            (b"+OK\r\n", Simple(bytes(b"OK"))),
            (b"+\r\n", Simple(Vec::new())),
            (
                b"-ERR unknown command 'FOO'\r\n",
                Error(bytes(b"ERR unknown command 'FOO'")),
            ),
            (b":0\r\n", Integer(0)),
            (b":-2\r\n", Integer(-2)),
            (b":9223372036854775807\r\n", Integer(i64::MAX)),
            (b":-9223372036854775808\r\n", Integer(i64::MIN)),
            (b"$5\r\nhello\r\n", Bulk(bytes(b"hello"))),
            (b"$0\r\n\r\n", Bulk(Vec::new())),
            (b"$-1\r\n", Nil),
            // A payload that looks like protocol must not confuse anyone.
            (
                b"$8\r\n\x00\xff\r\n+-:*\r\n",
                Bulk(bytes(b"\x00\xff\r\n+-:*")),
            ),
            (b"*0\r\n", Array(Vec::new())),
            (b"*-1\r\n", NilArray),
            (
                b"*3\r\n:1\r\n$3\r\nfoo\r\n$-1\r\n",
                Array(vec![Integer(1), Bulk(bytes(b"foo")), Nil]),
            ),
            (
                b"*2\r\n*3\r\n+QUEUED\r\n-WRONGTYPE nested\r\n*0\r\n*1\r\n*1\r\n$2\r\nhi\r\n",
                Array(vec![
                    Array(vec![
                        Simple(bytes(b"QUEUED")),
                        Error(bytes(b"WRONGTYPE nested")),
                        Array(Vec::new()),
                    ]),
                    Array(vec![Array(vec![Bulk(bytes(b"hi"))])]),
                ]),
            ),
            (
                b"-MOVED 3999 127.0.0.1:6381\r\n",
                Error(bytes(b"MOVED 3999 127.0.0.1:6381")),
            ),
            (b"$3\r\nend\r\n", Bulk(bytes(b"end"))),
        ]
    }

    /// All samples back to back, and the offset where each one ends.
    fn sample_stream() -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (wire, _) in samples() {
            stream.extend_from_slice(wire);
            ends.push(stream.len());
        }
        (stream, ends)
    }

    /// Ways to deliver `data`: whole, byte by byte, and cut in two at every
    /// offset (including empty first/last pieces).
    fn chunkings(data: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![vec![data], data.chunks(1).collect()];
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            all.push(vec![a, b]);
        }
        all
    }

    /// Frames `chunks` one reply at a time with `feed_until`, returning the
    /// stream offset where each completed reply ends.
    fn frame(chunks: &[&[u8]]) -> Result<Vec<usize>, ProtocolError> {
        let mut framer = ReplyFramer::new();
        let mut found = Vec::new();
        let mut offset = 0;
        for chunk in chunks {
            let mut pos = 0;
            loop {
                let target = framer.complete_replies() + 1;
                pos += framer.feed_until(&chunk[pos..], target)?;
                if framer.complete_replies() == target {
                    found.push(offset + pos);
                    assert!(framer.is_at_boundary());
                }
                if pos == chunk.len() {
                    break;
                }
            }
            offset += chunk.len();
        }
        Ok(found)
    }

    /// What a [`ValueReader`] plus [`BulkBody`] extracted from a stream.
    #[derive(Debug, PartialEq)]
    struct ValueRead {
        head: ValueHead,
        /// Stream offset right after the head line (where a payload starts).
        head_end: usize,
        payload: Vec<u8>,
        /// Stream offset right after the whole value reply.
        end: usize,
        first_error: Option<Vec<u8>>,
    }

    /// What the nginx layer builds once the head says bulk.
    fn bulk_body(reader: &ValueReader) -> Option<BulkBody> {
        match reader.head() {
            Some(&ValueHead::Bulk { len }) => Some(BulkBody::new(len)),
            _ => None,
        }
    }

    /// Drives a reader the way an upstream handler would: header first,
    /// then the payload through a `BulkBody`, chunk by chunk.
    fn read_value(chunks: &[&[u8]], skip: usize) -> Result<ValueRead, ProtocolError> {
        let mut reader = ValueReader::new(skip);
        let mut body: Option<BulkBody> = None;
        let (mut head_end, mut end) = (None, None);
        let mut payload = Vec::new();
        let mut offset = 0;
        for chunk in chunks {
            let mut pos = 0;
            if head_end.is_none() {
                pos = reader.feed(chunk)?;
                if reader.head().is_some() {
                    head_end = Some(offset + pos);
                    body = bulk_body(&reader);
                    if body.is_none() {
                        end = head_end;
                    }
                } else {
                    assert_eq!(
                        pos,
                        chunk.len(),
                        "a reader without a head consumes everything"
                    );
                }
            }
            if let Some(body) = body.as_mut().filter(|body| !body.is_complete()) {
                let split = body.feed(&chunk[pos..])?;
                payload.extend_from_slice(&chunk[pos..pos + split.payload]);
                pos += split.consumed;
                if body.is_complete() {
                    end = Some(offset + pos);
                } else {
                    assert_eq!(pos, chunk.len());
                }
            }
            offset += chunk.len();
        }
        Ok(ValueRead {
            head: reader.head().cloned().expect("value head"),
            head_end: head_end.unwrap(),
            payload,
            end: end.expect("complete value"),
            first_error: reader.first_skipped_error().map(<[u8]>::to_vec),
        })
    }

    fn first_error_in(replies: &[Reply]) -> Option<Vec<u8>> {
        replies.iter().find_map(|reply| match reply {
            Reply::Error(text) => Some(text.clone()),
            Reply::Array(items) => first_error_in(items),
            _ => None,
        })
    }

    /* encoding */

    #[test]
    fn encodes_command_with_empty_arg() {
        let mut out = bytes(b"prefix:");
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"prefix:*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn encodes_every_byte_value_binary_safe() {
        let all: Vec<u8> = (0..=255).collect();
        let args: [&[u8]; 4] = [b"SET", b"key\r\n", &all, b""];
        let mut out = Vec::new();
        encode_command(&mut out, &args);
        assert!(out.starts_with(b"*4\r\n$3\r\nSET\r\n$5\r\nkey\r\n\r\n$256\r\n"));
        let expected = Reply::Array(args.iter().map(|a| Reply::Bulk(a.to_vec())).collect());
        assert_eq!(parse_reply(&out), Ok(Some((expected, out.len()))));
    }

    #[test]
    fn encodes_empty_command() {
        let mut out = Vec::new();
        encode_command(&mut out, &[]);
        assert_eq!(out, b"*0\r\n");
    }

    #[test]
    fn header_encoders_match_encode_command() {
        let big = vec![b'x'; 1234];
        let mut whole = Vec::new();
        encode_command(&mut whole, &[b"SET", b"key", &big]);
        let mut parts = Vec::new();
        encode_array_header(&mut parts, 3);
        for arg in [&b"SET"[..], b"key", &big] {
            encode_bulk_header(&mut parts, arg.len());
            parts.extend_from_slice(arg);
            parts.extend_from_slice(b"\r\n");
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn encodes_lengths_at_digit_boundaries() {
        for n in [0, 9, 10, 99, 100, 12_345, usize::MAX] {
            let mut out = Vec::new();
            encode_bulk_header(&mut out, n);
            assert_eq!(out, format!("${n}\r\n").into_bytes());
        }
    }

    /* parse_reply */

    #[test]
    fn parses_every_sample() {
        for (wire, reply) in samples() {
            assert_eq!(
                parse_reply(wire),
                Ok(Some((reply, wire.len()))),
                "{}",
                Escaped(wire)
            );
        }
    }

    #[test]
    fn parse_reply_needs_the_whole_reply() {
        for (wire, _) in samples() {
            for cut in 0..wire.len() {
                assert_eq!(
                    parse_reply(&wire[..cut]),
                    Ok(None),
                    "{}",
                    Escaped(&wire[..cut])
                );
            }
        }
    }

    #[test]
    fn parse_reply_reads_a_stream_reply_by_reply() {
        let (stream, _) = sample_stream();
        let mut rest = &stream[..];
        for (_, expected) in samples() {
            let (reply, used) = parse_reply(rest).unwrap().unwrap();
            assert_eq!(reply, expected);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn nesting_up_to_the_limit() {
        let mut wire = b"*1\r\n".repeat(MAX_DEPTH);
        wire.extend_from_slice(b":7\r\n");
        let mut expected = Reply::Integer(7);
        for _ in 0..MAX_DEPTH {
            expected = Reply::Array(vec![expected]);
        }
        assert_eq!(parse_reply(&wire), Ok(Some((expected, wire.len()))));
        for chunks in chunkings(&wire) {
            assert_eq!(frame(&chunks), Ok(vec![wire.len()]));
        }
        // Empty and nil arrays open no level, so they are fine at the limit.
        let mut wire = b"*1\r\n".repeat(MAX_DEPTH - 1);
        wire.extend_from_slice(b"*2\r\n*0\r\n*-1\r\n");
        assert_eq!(parse_reply(&wire).unwrap().unwrap().1, wire.len());
    }

    #[test]
    fn header_line_at_the_length_limit() {
        let mut wire = bytes(b":");
        wire.extend(std::iter::repeat_n(b'0', MAX_HEADER_LINE - 1));
        wire.extend_from_slice(b"9\r\n");
        assert_eq!(
            parse_reply(&wire),
            Ok(Some((Reply::Integer(9), wire.len())))
        );
    }

    #[test]
    fn array_count_does_not_size_allocation() {
        // A huge (valid) count with few elements is just incomplete.
        assert_eq!(parse_reply(b"*536870912\r\n:1\r\n"), Ok(None));
    }

    /* malformed input */

    fn malformed() -> Vec<(Vec<u8>, ProtocolError)> {
        use ProtocolError::*;
        let mut too_long = bytes(b"$");
        too_long.extend(std::iter::repeat_n(b'0', MAX_HEADER_LINE + 1));
        too_long.extend_from_slice(b"\r\n");
        let mut too_deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        too_deep.extend_from_slice(b":1\r\n");
        vec![
            (bytes(b"?x\r\n"), BadType(b'?')),
            (bytes(b"\r\n"), BadType(b'\r')),
            (bytes(b"*2\r\n:1\r\nhello\r\n"), BadType(b'h')),
            (bytes(b"+OK\n"), BadLineEnd),
            (bytes(b"+OK\rX\r\n"), BadLineEnd),
            (bytes(b"-ERR\r\r\n"), BadLineEnd),
            (bytes(b":12\n"), BadLineEnd),
            (bytes(b"$3\rfoo\r\n"), BadLineEnd),
            (too_long, LineTooLong),
            (bytes(b":abc\r\n"), NotANumber),
            (bytes(b"$\r\n"), NotANumber),
            (bytes(b":-\r\n"), NotANumber),
            (bytes(b":1-2\r\n"), NotANumber),
            (bytes(b":+1\r\n"), NotANumber),
            (bytes(b"* 1\r\n"), NotANumber),
            (bytes(b":9223372036854775808\r\n"), IntegerOverflow),
            (bytes(b":-9223372036854775809\r\n"), IntegerOverflow),
            (bytes(b"$99999999999999999999\r\n"), IntegerOverflow),
            (bytes(b"$-2\r\nxx\r\n"), NegativeLength(-2)),
            (bytes(b"*-5\r\n"), NegativeLength(-5)),
            (bytes(b"$536870913\r\n"), TooLarge(536_870_913)),
            (bytes(b"*9223372036854775807\r\n"), TooLarge(i64::MAX)),
            (bytes(b"$3\r\nfooX\r\n"), MissingPayloadCrlf),
            (bytes(b"$3\r\nfoo\rX"), MissingPayloadCrlf),
            (bytes(b"$0\r\n\n"), MissingPayloadCrlf),
            (too_deep, TooDeep),
        ]
    }

    #[test]
    fn malformed_input_is_rejected_by_every_reader() {
        for (wire, err) in malformed() {
            let shown = Escaped(&wire).to_string();
            assert_eq!(parse_reply(&wire), Err(err), "parse_reply {shown}");
            for chunks in chunkings(&wire) {
                assert_eq!(frame(&chunks), Err(err), "framer {shown}");
                assert_eq!(read_value(&chunks, 1), Err(err), "value reader {shown}");
            }
        }
    }

    #[test]
    fn largest_allowed_length_is_accepted() {
        assert_eq!(parse_reply(b"$536870912\r\n"), Ok(None));
        assert_eq!(parse_reply(b"*536870912\r\n"), Ok(None));
        let mut framer = ReplyFramer::new();
        assert_eq!(framer.feed(b"$536870912\r\nabc"), Ok(15));
        assert!(!framer.is_at_boundary());
    }

    #[test]
    fn errors_are_sticky() {
        let mut framer = ReplyFramer::new();
        assert_eq!(framer.feed(b"+OK\r\n!"), Err(ProtocolError::BadType(b'!')));
        assert_eq!(framer.feed(b"+OK\r\n"), Err(ProtocolError::BadType(b'!')));
        assert_eq!(framer.complete_replies(), 1);
        assert!(!framer.is_at_boundary());

        let mut reader = ValueReader::new(0);
        assert_eq!(reader.feed(b":x"), Err(ProtocolError::NotANumber));
        assert_eq!(reader.feed(b":1\r\n"), Err(ProtocolError::NotANumber));
        assert_eq!(reader.head(), None);
    }

    #[test]
    fn error_messages_are_single_log_lines() {
        let mut all: Vec<ProtocolError> = malformed().into_iter().map(|(_, err)| err).collect();
        all.push(ProtocolError::BadType(0x01));
        for err in all {
            let msg = err.to_string();
            assert!(msg.starts_with("redis protocol error: "), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
            assert_eq!(ReplyError::from(err).to_string(), msg);
        }
        assert!(ProtocolError::BadType(0x01).to_string().ends_with("0x01"));
        assert!(ProtocolError::TooLarge(600_000_000)
            .to_string()
            .contains("600000000"));
        assert!(ProtocolError::NegativeLength(-3).to_string().contains("-3"));
    }

    /* framer */

    #[test]
    fn framer_finds_every_boundary_however_the_stream_is_split() {
        let (stream, ends) = sample_stream();
        for chunks in chunkings(&stream) {
            assert_eq!(frame(&chunks), Ok(ends.clone()));
        }
    }

    #[test]
    fn framer_feed_consumes_whole_chunks() {
        let (stream, _) = sample_stream();
        for chunks in chunkings(&stream) {
            let mut framer = ReplyFramer::default();
            for chunk in &chunks {
                assert_eq!(framer.feed(chunk), Ok(chunk.len()));
            }
            assert_eq!(framer.complete_replies(), samples().len());
            assert!(framer.is_at_boundary());
        }
    }

    #[test]
    fn feed_until_stops_exactly_after_the_target_reply() {
        let stream = b"+OK\r\n*2\r\n:1\r\n$-1\r\n$3\r\nabc\r\n-ERR next\r\n";
        let mut framer = ReplyFramer::new();
        assert_eq!(framer.feed_until(stream, 0), Ok(0));
        assert_eq!(framer.complete_replies(), 0);

        let used = framer.feed_until(stream, 3).unwrap();
        assert_eq!(&stream[used..], b"-ERR next\r\n");
        assert_eq!(framer.complete_replies(), 3);
        assert!(framer.is_at_boundary());
        // Already there: nothing more is consumed, even for a lower target.
        assert_eq!(framer.feed_until(&stream[used..], 3), Ok(0));
        assert_eq!(framer.feed_until(&stream[used..], 1), Ok(0));

        assert_eq!(
            framer.feed_until(&stream[used..], 4),
            Ok(stream.len() - used)
        );
        assert_eq!(framer.complete_replies(), 4);
    }

    #[test]
    fn feed_until_leaves_garbage_after_the_target_unread() {
        let stream = b"$2\r\nhi\r\n:5\r\nnot redis at all";
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut framer = ReplyFramer::new();
            let used_a = framer.feed_until(a, 2).unwrap();
            let used_b = framer.feed_until(b, 2).unwrap();
            assert_eq!(used_a + used_b, 12, "cut at {cut}");
            assert_eq!(framer.complete_replies(), 2);
            assert_eq!(
                framer.feed(&stream[12..]),
                Err(ProtocolError::BadType(b'n'))
            );
        }
    }

    #[test]
    fn framer_reports_partial_replies() {
        let mut framer = ReplyFramer::new();
        assert!(framer.is_at_boundary());
        framer.feed(b"*2\r\n+a\r\n").unwrap();
        assert!(!framer.is_at_boundary());
        assert_eq!(framer.complete_replies(), 0);
        framer.feed(b"*-1\r\n").unwrap();
        assert!(framer.is_at_boundary());
        assert_eq!(framer.complete_replies(), 1);
        framer.feed(b"*-1\r\n").unwrap();
        assert_eq!(framer.complete_replies(), 2);
    }

    fn large_bulk(len: usize) -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        encode_bulk_header(&mut wire, len);
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        (payload, wire)
    }

    #[test]
    fn framer_passes_a_large_bulk_in_small_chunks() {
        let (_, mut wire) = large_bulk(2 << 20);
        wire.extend_from_slice(b"+OK\r\n");
        let mut framer = ReplyFramer::new();
        for chunk in wire.chunks(1000) {
            assert_eq!(framer.feed(chunk), Ok(chunk.len()));
        }
        assert_eq!(framer.complete_replies(), 2);
        // Constant-size state: no text capture, no payload buffer.
        assert_eq!(framer.machine.text.capacity(), 0);
        assert!(std::mem::size_of::<ReplyFramer>() < 1024);
    }

    /* value reader */

    #[test]
    fn value_reader_reads_any_reply_however_the_stream_is_split() {
        let (stream, ends) = sample_stream();
        let replies: Vec<Reply> = samples().into_iter().map(|(_, reply)| reply).collect();
        for (skip, (wire, reply)) in samples().into_iter().enumerate() {
            let start = ends[skip] - wire.len();
            let head_len = wire.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            let (head, payload) = match reply {
                Reply::Simple(text) => (ValueHead::Simple(text), Vec::new()),
                Reply::Error(text) => (ValueHead::Error(text), Vec::new()),
                Reply::Integer(n) => (ValueHead::Integer(n), Vec::new()),
                Reply::Bulk(data) => (ValueHead::Bulk { len: data.len() }, data),
                Reply::Nil | Reply::NilArray => (ValueHead::Nil, Vec::new()),
                Reply::Array(_) => (ValueHead::Array, Vec::new()),
            };
            let end = if matches!(head, ValueHead::Array) {
                start + head_len
            } else {
                ends[skip]
            };
            let expected = ValueRead {
                head,
                head_end: start + head_len,
                payload,
                end,
                first_error: first_error_in(&replies[..skip]),
            };
            for chunks in chunkings(&stream) {
                assert_eq!(
                    read_value(&chunks, skip).as_ref(),
                    Ok(&expected),
                    "skip {skip}"
                );
            }
        }
    }

    #[test]
    fn error_codes_are_known_codes_or_err() {
        assert_eq!(error_code(b"OOM command not allowed"), "OOM");
        assert_eq!(
            error_code(b"READONLY You can't write against a read only replica."),
            "READONLY"
        );
        assert_eq!(error_code(b"LOADING"), "LOADING");
        assert_eq!(error_code(b"oom lower case"), "ERR");
        assert_eq!(error_code(b"SOMETHINGNEW x"), "ERR");
        assert_eq!(error_code(b""), "ERR");
    }

    #[test]
    fn framer_reports_heads_and_the_first_error_with_its_reply() {
        // SET refused, EXPIRE applied, then an EXEC with a nested error.
        let stream = b"-OOM command not allowed\r\n:1\r\n*2\r\n+OK\r\n-ERR nested\r\n";
        for chunks in chunkings(stream) {
            let mut framer = ReplyFramer::new();
            for chunk in &chunks {
                assert_eq!(framer.feed(chunk), Ok(chunk.len()));
            }
            assert_eq!(framer.heads(), 3);
            assert_eq!(framer.complete_replies(), 3);
            assert_eq!(
                framer.first_error(),
                Some((0, &b"OOM command not allowed"[..]))
            );
        }
        let mut framer = ReplyFramer::new();
        framer.feed(b"+OK\r\n*2\r\n:1\r\n-ERR nested\r\n").unwrap();
        assert_eq!(framer.first_error(), Some((1, &b"ERR nested"[..])));
        // A bulk's head is in once its length line is, before its payload.
        let mut framer = ReplyFramer::new();
        framer.feed(b"+OK\r\n$5\r\nab").unwrap();
        assert_eq!((framer.heads(), framer.complete_replies()), (2, 1));
        assert_eq!(framer.first_error(), None);
    }

    #[test]
    fn value_reader_names_the_reply_of_the_first_skipped_error() {
        let mut reader = ValueReader::new(3);
        reader
            .feed(b"+OK\r\n-READONLY replica\r\n-ERR x\r\n$-1\r\n")
            .unwrap();
        assert_eq!(reader.first_skipped_error(), Some(&b"READONLY replica"[..]));
        assert_eq!(reader.first_skipped_error_reply(), 1);
    }

    #[test]
    fn value_reader_keeps_only_the_first_skipped_error() {
        let stream = b"*2\r\n+OK\r\n-ERR in exec\r\n-ERR later\r\n:1\r\n";
        let mut reader = ValueReader::new(2);
        assert_eq!(reader.feed(stream), Ok(stream.len()));
        assert_eq!(reader.first_skipped_error(), Some(&b"ERR in exec"[..]));
        assert_eq!(reader.head(), Some(&ValueHead::Integer(1)));
        assert_eq!(reader.feed(b"+more\r\n"), Ok(0));
    }

    #[test]
    fn value_error_is_the_head_not_a_skipped_error() {
        let mut reader = ValueReader::new(0);
        assert_eq!(reader.feed(b"-NOAUTH required\r\n"), Ok(18));
        assert_eq!(
            reader.head(),
            Some(&ValueHead::Error(bytes(b"NOAUTH required")))
        );
        assert_eq!(reader.first_skipped_error(), None);
    }

    #[test]
    fn value_reader_truncates_long_texts() {
        let long = vec![b'e'; 1000];
        let mut stream = bytes(b"-");
        stream.extend_from_slice(&long);
        stream.extend_from_slice(b"\r\n+");
        stream.extend_from_slice(&long);
        stream.extend_from_slice(b"\r\n");
        for chunks in chunkings(&stream) {
            let mut reader = ValueReader::new(1);
            for chunk in chunks {
                reader.feed(chunk).unwrap();
            }
            assert_eq!(reader.first_skipped_error(), Some(&long[..MAX_TEXT_LEN]));
            assert_eq!(
                reader.head(),
                Some(&ValueHead::Simple(long[..MAX_TEXT_LEN].to_vec()))
            );
        }
    }

    #[test]
    fn value_reader_streams_a_large_bulk() {
        let (payload, wire) = large_bulk(2 << 20);
        let mut stream = bytes(b"+OK\r\n");
        stream.extend_from_slice(&wire);
        let chunks: Vec<&[u8]> = stream.chunks(1000).collect();
        let read = read_value(&chunks, 1).unwrap();
        assert_eq!(read.head, ValueHead::Bulk { len: payload.len() });
        assert_eq!(read.end, stream.len());
        assert!(read.payload == payload);

        // A large bulk among the skipped replies is skipped, not buffered.
        let mut stream = wire;
        stream.extend_from_slice(b":42\r\n");
        let chunks: Vec<&[u8]> = stream.chunks(1000).collect();
        assert_eq!(read_value(&chunks, 1).unwrap().head, ValueHead::Integer(42));
    }

    #[test]
    fn value_reader_as_driven_by_an_upstream() {
        // SELECT's reply, then GET's, then bytes that belong to no reply.
        let wire = b"+OK\r\n$11\r\nhello world\r\nEXTRA";
        let mut reader = ValueReader::new(1);
        // process_header: a growing buffer, consumed as far as possible.
        let mut buffer = Vec::new();
        let mut read_pos = 0;
        let mut arrived = wire.chunks(4);
        while reader.head().is_none() {
            buffer.extend_from_slice(arrived.next().unwrap());
            read_pos += reader.feed(&buffer[read_pos..]).unwrap();
        }
        assert_eq!(read_pos, 10);
        let mut body = bulk_body(&reader).unwrap();
        assert_eq!(body.remaining_payload(), 11);
        // input_filter: what is left in the buffer, then later chunks.
        let mut value = Vec::new();
        let mut extra = Vec::new();
        let rest = buffer[read_pos..].to_vec();
        for chunk in std::iter::once(&rest[..]).chain(arrived) {
            let split = body.feed(chunk).unwrap();
            value.extend_from_slice(&chunk[..split.payload]);
            extra.extend_from_slice(&chunk[split.consumed..]);
        }
        assert!(body.is_complete());
        assert_eq!(value, b"hello world");
        assert_eq!(extra, b"EXTRA");
    }

    #[test]
    fn bulk_body_splits_payload_and_trailer() {
        let mut body = BulkBody::new(3);
        assert_eq!(
            body.feed(b""),
            Ok(BodySplit {
                payload: 0,
                consumed: 0
            })
        );
        assert_eq!(
            body.feed(b"ab"),
            Ok(BodySplit {
                payload: 2,
                consumed: 2
            })
        );
        assert_eq!(body.remaining_payload(), 1);
        assert_eq!(
            body.feed(b"c\r"),
            Ok(BodySplit {
                payload: 1,
                consumed: 2
            })
        );
        assert!(!body.is_complete());
        assert_eq!(
            body.feed(b"\n+OK"),
            Ok(BodySplit {
                payload: 0,
                consumed: 1
            })
        );
        assert!(body.is_complete());
        assert_eq!(
            body.feed(b"+OK"),
            Ok(BodySplit {
                payload: 0,
                consumed: 0
            })
        );

        let mut body = BulkBody::new(0);
        assert_eq!(
            body.feed(b"\r\nX"),
            Ok(BodySplit {
                payload: 0,
                consumed: 2
            })
        );
        assert!(body.is_complete());

        let mut body = BulkBody::new(2);
        assert_eq!(body.feed(b"abc"), Err(ProtocolError::MissingPayloadCrlf));
        assert_eq!(
            body.feed(b"\r\n"),
            Ok(BodySplit {
                payload: 0,
                consumed: 2
            })
        );
    }

    /* parse_integer_reply */

    #[test]
    fn integer_reply_values() {
        for (wire, n) in [
            (&b":42\r\n"[..], 42),
            (b":-2\r\n", -2),
            (b":-1\r\n", -1),
            (b":0\r\n", 0),
            (b":9223372036854775807\r\n", i64::MAX),
            (b":-9223372036854775808\r\n", i64::MIN),
        ] {
            assert_eq!(parse_integer_reply(wire), Ok(n));
        }
    }

    #[test]
    fn integer_reply_failures() {
        use ReplyError::*;
        let cases: [(&[u8], ReplyError); 14] = [
            (b"", Incomplete),
            (b":42", Incomplete),
            (b":42\r", Incomplete),
            (b"-ERR wrong", Incomplete),
            (
                b"-ERR wrong number of arguments\r\n",
                ErrorReply(bytes(b"ERR wrong number of arguments")),
            ),
            (b"+OK\r\n", WrongType(ReplyKind::Simple)),
            (b"$2\r\n42\r\n", WrongType(ReplyKind::Bulk)),
            (b"$-1\r\n", WrongType(ReplyKind::Nil)),
            (b"*1\r\n:1\r\n", WrongType(ReplyKind::Array)),
            (b":42\r\n:1\r\n", TrailingData { extra: 4 }),
            (b":42\r\n\r\n", TrailingData { extra: 2 }),
            (b":4x\r\n", Protocol(ProtocolError::NotANumber)),
            (
                b":99999999999999999999\r\n",
                Protocol(ProtocolError::IntegerOverflow),
            ),
            (b"42\r\n", Protocol(ProtocolError::BadType(b'4'))),
        ];
        for (wire, err) in cases {
            assert_eq!(parse_integer_reply(wire), Err(err), "{}", Escaped(wire));
        }
    }

    #[test]
    fn integer_reply_error_messages() {
        let msg = |wire: &[u8]| parse_integer_reply(wire).unwrap_err().to_string();
        assert_eq!(msg(b":1"), "incomplete redis reply");
        assert_eq!(
            msg(b"-ERR bad\x00\xff\r\n"),
            "redis error reply: ERR bad\\x00\\xff"
        );
        assert_eq!(
            msg(b"+OK\r\n"),
            "expected a redis integer reply, got simple string"
        );
        assert_eq!(msg(b"*0\r\n"), "expected a redis integer reply, got array");
        assert_eq!(msg(b"-E\r\n"), "redis error reply: E");
        assert_eq!(msg(b"$-1\r\n"), "expected a redis integer reply, got nil");
        assert_eq!(
            msg(b"$1\r\n"),
            "expected a redis integer reply, got bulk string"
        );
        assert_eq!(
            msg(b":1\r\n:"),
            "1 unexpected bytes after the redis integer reply"
        );
        assert_eq!(
            msg(b":x"),
            "redis protocol error: invalid integer in header line"
        );
        let kinds = [ReplyKind::Integer, ReplyKind::Error];
        assert_eq!(kinds.map(|k| k.to_string()), ["integer", "error"]);
        let long_error = [&b"-"[..], &[b'x'; 500], b"\r\n"].concat();
        assert_eq!(
            parse_integer_reply(&long_error),
            Err(ReplyError::ErrorReply(vec![b'x'; MAX_TEXT_LEN]))
        );
    }
}
