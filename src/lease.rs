//! The fleet lease, as pure rules: the second tier of locks (see ARCHITECTURE.md, "Two tiers
//! of locks"). The zone lock picks one request per node; that request then asks Redis, through
//! the `$cache_lease` location, for the key's lease, so one node in the fleet goes to the
//! backend. Every operation is one `EVAL` of [`SCRIPT`], answered with an integer.
//!
//! Timing: a lease lives [`LEASE_MS`] and its holder renews it every [`RENEW_MS`] while its
//! fill or refresh runs, so a node that dies blocks the key for at most one lease period. A
//! node that finds the lease held polls (the same `fill` operation) after
//! [`poll_interval_ms`] until the entry is stored, the lease is free again, or the key is
//! passed.

/// How long a lease lives without renewal: the longest a dead node holds a key back.
pub const LEASE_MS: u64 = 3_000;
/// How often a holder renews its lease (three chances before it would lapse).
pub const RENEW_MS: u64 = 1_000;
/// How often the worker that keeps leases looks at the zone for the end of their fills and
/// refreshes (no Redis traffic): a lease is released at most this long after its work ended.
pub const KEEPER_TICK_MS: u64 = 50;
/// The first poll of a held lease, and the step it grows by.
pub const POLL_STEP_MS: u64 = 5;
/// The longest interval between two polls: a store on another node is noticed at most this
/// long (plus a Redis round trip) after it happened.
pub const POLL_MAX_MS: u64 = 25;

/// The lease script, for `EVAL <script> 2 <entry key> <lease key> <op> <token> <ms>`.
/// `fill`: 2 if the entry exists, 3 if the key is passed, 0 if another holds the lease, 1 if
/// this token took it (`SET NX PX`). `refresh`: 1 if taken, 0 if held; a fill's lease (its
/// token starts with `f`) whose entry exists is over, so a refresh takes it over instead of
/// waiting for its release. `renew`, `release`,
/// `pass` act only for the token holding the lease (compare, then act): 1 if they did.
/// `pass` turns the lease into a fleet-wide pass mark for `ms` (a fill that stored nothing).
pub const SCRIPT: &str = "local op, held = ARGV[1], redis.call('GET', KEYS[2]) \
if op == 'fill' or op == 'refresh' then \
if op == 'fill' and redis.call('EXISTS', KEYS[1]) == 1 then return 2 end \
if held == 'pass' and op == 'fill' then return 3 end \
if held and not (op == 'refresh' and string.sub(held, 1, 1) == 'f' \
and redis.call('EXISTS', KEYS[1]) == 1) then return 0 end \
if held then redis.call('DEL', KEYS[2]) end \
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end \
return 0 end \
if held ~= ARGV[2] then return 0 end \
if op == 'renew' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) \
elseif op == 'pass' then redis.call('SET', KEYS[2], 'pass', 'PX', ARGV[3]) \
else redis.call('DEL', KEYS[2]) end \
return 1";

/// An operation of the lease location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Before filling a missing key (also each poll of a held lease).
    Fill,
    /// Before refreshing a stale key.
    Refresh,
    Renew,
    Release,
    /// Release as a pass mark: the fill stored nothing.
    Pass,
}

impl Op {
    pub const fn name(self) -> &'static str {
        match self {
            Op::Fill => "fill",
            Op::Refresh => "refresh",
            Op::Renew => "renew",
            Op::Release => "release",
            Op::Pass => "pass",
        }
    }

    pub fn parse(name: &[u8]) -> Option<Op> {
        [Op::Fill, Op::Refresh, Op::Renew, Op::Release, Op::Pass]
            .into_iter()
            .find(|op| op.name().as_bytes() == name)
    }
}

/// What the lease location answered to `fill` or `refresh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This token holds the lease now: go to the backend.
    Taken,
    /// Another node holds it.
    Held,
    /// The entry exists (stored by another node meanwhile).
    Stored,
    /// The key is passed fleet-wide: its last fill stored nothing.
    Passed,
}

impl Answer {
    /// The script's integer, or `None` for a number it never answers.
    pub fn of(n: i64) -> Option<Answer> {
        Some(match n {
            0 => Answer::Held,
            1 => Answer::Taken,
            2 => Answer::Stored,
            3 => Answer::Passed,
            _ => return None,
        })
    }
}

/// The query string of a lease subrequest: the escaped key (as the other lookups), the
/// operation, the token and the lease's (or pass mark's) life in ms.
pub fn arguments(key_argument: &[u8], op: Op, token: &str, ms: u64) -> Vec<u8> {
    let mut out = key_argument.to_vec();
    out.extend_from_slice(format!("&op={}&token={}&ms={}", op.name(), token, ms.max(1)).as_bytes());
    out
}

/// The wait before poll number `n` (0 for the first) of a held lease: 5, 10, 15, 20, then
/// 25 ms. Short at first (a fill that was nearly done), bounded so that a store is noticed
/// within about 25 ms; a fill of T ms costs about T / 25 polls per waiting node.
pub fn poll_interval_ms(n: u32) -> u64 {
    (POLL_STEP_MS * (u64::from(n) + 1)).min(POLL_MAX_MS)
}

/// A lease token, unique across the fleet: `f` (fill) or `r` (refresh), a random per-process
/// part and a per-lease part in hex (never `pass`).
pub fn token_text(fill: bool, random: u64, unique: u64) -> String {
    let kind = if fill { 'f' } else { 'r' };
    format!("{kind}{random:016x}{unique:016x}")
}

/// A lease operation sent by this nginx to itself
/// (`X-Stale-Cache-Lease: SECRET OP TOKEN MS [key=ESCAPED_KEY]`), parsed. `None` for anything
/// malformed.
pub fn parse_op_header(value: &[u8]) -> Option<OpHeader<'_>> {
    let mut parts = value.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let secret = parts.next()?;
    let op = Op::parse(parts.next()?)?;
    let token = parts.next()?;
    let ms = core::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let key_argument = match parts.next() {
        // The key travels as the lookups' `key=` argument: percent-escaped, so the op request
        // needs none of the client's headers to find it.
        Some(k) if k.starts_with(b"key=") && k[4..].iter().all(|&b| escaped_byte(b)) => Some(k),
        Some(_) => return None,
        None => None,
    };
    if parts.next().is_some() || !token.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    Some(OpHeader {
        secret,
        op,
        token,
        ms,
        key_argument,
    })
}

/// The parts of a lease operation header.
#[derive(Debug, PartialEq, Eq)]
pub struct OpHeader<'a> {
    pub secret: &'a [u8],
    pub op: Op,
    pub token: &'a [u8],
    pub ms: u64,
    /// `key=...`, the escaped key the lease is on (headers of older workers have none).
    pub key_argument: Option<&'a [u8]>,
}

fn escaped_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)
}

/// The header a lease operation request carries.
pub const OP_HEADER: &[u8] = b"X-Stale-Cache-Lease";

/// The User-Agent of lease operation requests, so access logs tell them from clients'.
pub const OP_USER_AGENT: &[u8] = b"stale-cache-lease/1";

/// Its value; `key_argument` is `key=...` as `replay::key_argument` writes it.
pub fn op_header_value(
    secret: &[u8],
    op: Op,
    token: &str,
    ms: u64,
    key_argument: &[u8],
) -> Vec<u8> {
    let mut out = secret.to_vec();
    out.extend_from_slice(format!(" {} {} {} ", op.name(), token, ms.max(1)).as_bytes());
    out.extend_from_slice(key_argument);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_the_script() {
        assert_eq!(Answer::of(0), Some(Answer::Held));
        assert_eq!(Answer::of(1), Some(Answer::Taken));
        assert_eq!(Answer::of(2), Some(Answer::Stored));
        assert_eq!(Answer::of(3), Some(Answer::Passed));
        assert_eq!(Answer::of(4), None);
        assert_eq!(Answer::of(-1), None);
    }

    #[test]
    fn polls_back_off_to_a_bound() {
        let waits: Vec<u64> = (0..7).map(poll_interval_ms).collect();
        assert_eq!(waits, [5, 10, 15, 20, 25, 25, 25]);
        assert_eq!(poll_interval_ms(u32::MAX), POLL_MAX_MS);
        // A 300 ms fill costs a dozen polls per waiting node, not one per millisecond.
        let mut t = 0;
        let mut polls = 0;
        while t < 300 {
            t += poll_interval_ms(polls);
            polls += 1;
        }
        assert!(polls <= 15, "{polls}");
    }

    #[test]
    fn renewals_fit_in_a_lease() {
        // Two renewals may be lost (a slow Redis, a busy worker) before the lease lapses.
        assert!(RENEW_MS * 3 <= LEASE_MS);
        assert!(KEEPER_TICK_MS < RENEW_MS);
    }

    #[test]
    fn arguments_and_ops() {
        assert_eq!(
            arguments(b"key=a%20b", Op::Fill, "00ff", 3000),
            b"key=a%20b&op=fill&token=00ff&ms=3000".to_vec()
        );
        // A zero duration would make SET PX fail: at least 1 ms.
        assert!(arguments(b"key=k", Op::Pass, "1", 0).ends_with(b"&ms=1"));
        for op in [Op::Fill, Op::Refresh, Op::Renew, Op::Release, Op::Pass] {
            assert_eq!(Op::parse(op.name().as_bytes()), Some(op));
        }
        assert_eq!(Op::parse(b"FILL"), None);
        assert_eq!(token_text(true, 1, 2), "f00000000000000010000000000000002");
        assert!(token_text(false, 1, 2).starts_with('r'));
    }

    #[test]
    fn op_headers_round_trip_and_reject_garbage() {
        let v = op_header_value(b"s3cr3t", Op::Renew, "0abc", 3000, b"key=ua%7C%2Fapi");
        assert_eq!(v, b"s3cr3t renew 0abc 3000 key=ua%7C%2Fapi".to_vec());
        assert_eq!(
            parse_op_header(&v),
            Some(OpHeader {
                secret: b"s3cr3t",
                op: Op::Renew,
                token: b"0abc",
                ms: 3000,
                key_argument: Some(b"key=ua%7C%2Fapi"),
            })
        );
        assert_eq!(
            parse_op_header(b"s3cr3t renew 0abc 3000").map(|h| (h.ms, h.key_argument)),
            Some((3000, None))
        );
        assert_eq!(parse_op_header(b"s renew 0abc"), None);
        assert_eq!(parse_op_header(b"s grab 0abc 1"), None);
        assert_eq!(parse_op_header(b"s renew x&y 1"), None);
        assert_eq!(parse_op_header(b"s renew 0abc 1 extra"), None);
        assert_eq!(parse_op_header(b"s renew 0abc 1 key=a&op=pass"), None);
        assert_eq!(parse_op_header(b"s renew 0abc 1 key=a key=b"), None);
        assert_eq!(parse_op_header(b"s renew 0abc -1"), None);
    }

    #[test]
    fn the_script_is_one_line_without_nginx_variables() {
        // It is handed to nginx as a variable's value and may be logged: no `$`, no newline.
        assert!(!SCRIPT.contains('$') && !SCRIPT.contains('\n'));
        assert!(SCRIPT.contains("'NX', 'PX'"));
    }
}
