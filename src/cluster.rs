//! Redis Cluster, the pure parts: the slot of a key (CRC16/XMODEM of the key or of its hash
//! tag, modulo 16384), the redirections a node answers (`-MOVED`, `-ASK`, `-TRYAGAIN`,
//! `-CLUSTERDOWN`), and the slot map read from a `CLUSTER SLOTS` reply. What a server sends
//! is untrusted: every parser here returns an error instead of panicking, and is fuzzed
//! (fuzz/fuzz_targets/cluster_*.rs).
//!
//! No nginx symbols (unit-tested with `cargo test`); the nginx side is `redis::cluster`.

use std::net::IpAddr;

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16 as Redis Cluster uses it: XMODEM (polynomial 0x1021, initial 0, no reflection).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of `key` that is hashed: between the first `{` and the first `}` after it, when
/// that is not empty; the whole key otherwise (Redis's rule, so `{}` and `a{}b` hash whole).
pub fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&c| c == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&c| c == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The slot of `key` (0..16384).
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_part(key)) & (SLOTS as u16 - 1)
}

/// Which argument of a command is its first key, for the commands the module's Redis
/// locations send (`None`: no key, e.g. PING, or an EVAL without keys).
pub fn first_key_index(name: &[u8], args: usize, numkeys: Option<&[u8]>) -> Option<usize> {
    // Every Redis request of every location asks this: no allocation.
    let is = |list: &[&[u8]]| list.iter().any(|n| n.eq_ignore_ascii_case(name));
    if is(&[
        b"EVAL",
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ]) {
        let n: usize = std::str::from_utf8(numkeys?).ok()?.parse().ok()?;
        return (n > 0 && args > 3).then_some(3);
    }
    let keyless: &[&[u8]] = &[
        b"PING",
        b"AUTH",
        b"SELECT",
        b"ECHO",
        b"INFO",
        b"CLUSTER",
        b"READONLY",
        b"READWRITE",
        b"ASKING",
        b"MULTI",
        b"EXEC",
        b"SCRIPT",
        b"HELLO",
        b"CLIENT",
    ];
    if is(keyless) {
        return None;
    }
    (args > 1).then_some(1)
}

/// A node's address as Redis names it (`ip:port`), checked: a literal IP and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr(pub String);

impl NodeAddr {
    /// `host:port` split at the last colon (IPv6 comes unbracketed from Redis).
    pub fn parse(text: &[u8]) -> Option<NodeAddr> {
        let text = std::str::from_utf8(text).ok()?;
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        NodeAddr::new(host, port.parse().ok()?)
    }

    pub fn new(host: &str, port: u16) -> Option<NodeAddr> {
        let ip: IpAddr = host.parse().ok()?;
        if port == 0 {
            return None;
        }
        Some(NodeAddr(match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        }))
    }
}

/// What an error reply means for a request in cluster mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED <slot> <addr>`: the slot lives there now; ask there, and refresh the map.
    Moved { slot: u16, node: NodeAddr },
    /// `ASK <slot> <addr>`: this one key is being migrated; ask there once, after ASKING.
    Ask { slot: u16, node: NodeAddr },
    /// `TRYAGAIN ...`: a multi-key command during a migration; try again a bit later.
    TryAgain,
    /// `CLUSTERDOWN ...`: the cluster cannot serve (a failover in progress).
    ClusterDown,
}

/// Reads the text of an error reply (without `-` and CRLF). `None`: an ordinary error, or a
/// redirection that does not parse (which is then an ordinary error, never trusted).
pub fn parse_redirect(text: &[u8]) -> Option<Redirect> {
    // Exactly as Redis writes them: single spaces, nothing before the kind.
    let mut words = text.split(|&c| c == b' ');
    let kind = words.next()?;
    match kind {
        b"MOVED" | b"ASK" => {
            let slot = std::str::from_utf8(words.next()?)
                .ok()?
                .parse::<u16>()
                .ok()?;
            if usize::from(slot) >= SLOTS {
                return None;
            }
            let node = NodeAddr::parse(words.next()?)?;
            if words.next().is_some() {
                return None;
            }
            Some(if kind == b"MOVED" {
                Redirect::Moved { slot, node }
            } else {
                Redirect::Ask { slot, node }
            })
        }
        b"TRYAGAIN" => Some(Redirect::TryAgain),
        b"CLUSTERDOWN" => Some(Redirect::ClusterDown),
        _ => None,
    }
}

/// A complete RESP value, as far as the slot map needs one.
#[derive(Debug, PartialEq, Eq)]
enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    Nil,
    Error,
    Array(Vec<Value<'a>>),
}

const MAX_DEPTH: usize = 6;

/// One line ending in CRLF at `buf[pos..]`: its text and the position after it.
fn line(buf: &[u8], pos: usize) -> Result<(&[u8], usize), Incomplete> {
    let rest = buf.get(pos..).ok_or(Incomplete::Invalid)?;
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(Incomplete::More)?;
    Ok((&rest[..end], pos + end + 2))
}

fn number(text: &[u8]) -> Result<i64, Incomplete> {
    let text = std::str::from_utf8(text).map_err(|_| Incomplete::Invalid)?;
    if text.is_empty() || text.len() > 20 || text.starts_with('+') {
        return Err(Incomplete::Invalid);
    }
    text.parse().map_err(|_| Incomplete::Invalid)
}

/// Why a value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Incomplete {
    /// The buffer ends before the value does.
    More,
    Invalid,
}

fn value(buf: &[u8], pos: usize, depth: usize) -> Result<(Value<'_>, usize), Incomplete> {
    if depth > MAX_DEPTH {
        return Err(Incomplete::Invalid);
    }
    let kind = *buf.get(pos).ok_or(Incomplete::More)?;
    let (text, next) = line(buf, pos + 1)?;
    match kind {
        b':' => Ok((Value::Int(number(text)?), next)),
        b'+' => Ok((Value::Bytes(text), next)),
        b'-' => Ok((Value::Error, next)),
        b'$' => {
            let len = number(text)?;
            if len == -1 {
                return Ok((Value::Nil, next));
            }
            let len = usize::try_from(len).map_err(|_| Incomplete::Invalid)?;
            let end = next.checked_add(len).ok_or(Incomplete::Invalid)?;
            if buf.len() < end + 2 {
                return Err(Incomplete::More);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Incomplete::Invalid);
            }
            Ok((Value::Bytes(&buf[next..end]), end + 2))
        }
        b'*' => {
            let count = number(text)?;
            if count == -1 {
                return Ok((Value::Nil, next));
            }
            let count = usize::try_from(count).map_err(|_| Incomplete::Invalid)?;
            // Each element takes 3 bytes at least: a count beyond that is a lie or a
            // reply not fully here; either way it must not size an allocation.
            let mut items = Vec::with_capacity(count.min((buf.len() - next) / 3 + 1));
            let mut at = next;
            for _ in 0..count {
                let (item, after) = value(buf, at, depth + 1)?;
                items.push(item);
                at = after;
            }
            Ok((Value::Array(items), at))
        }
        _ => Err(Incomplete::Invalid),
    }
}

/// The length of the complete reply at the start of `buf` (`Ok(None)`: not all here yet;
/// `Err`: not RESP, or nested deeper than a slot map). Used to step over the `CLUSTER SLOTS`
/// and `ASKING` replies that precede a request's own.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, NotResp> {
    match value(buf, 0, 0) {
        Ok((_, used)) => Ok(Some(used)),
        Err(Incomplete::More) => Ok(None),
        Err(Incomplete::Invalid) => Err(NotResp),
    }
}

/// Bytes that are not a RESP reply (or one nested deeper than a slot map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotResp;

/// Why a `CLUSTER SLOTS` reply gave no map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The buffer ends before the reply does: read more.
    Incomplete,
    /// Not RESP, or not the shape of a `CLUSTER SLOTS` reply.
    Invalid(&'static str),
    /// The server answered an error (e.g. cluster support disabled).
    ErrorReply,
}

/// Where each slot lives: its primary, and its replicas for `READONLY` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    nodes: Vec<NodeAddr>,
    /// Index into `nodes` of each slot's primary; `NONE` when no node serves it.
    primary: Vec<u16>,
    /// Per slot, the indexes of its replicas (empty for most maps read without replicas).
    replicas: Vec<Vec<u16>>,
}

const NONE: u16 = u16::MAX;
/// More nodes than any real cluster has (Redis recommends at most 1000).
const MAX_NODES: usize = 4096;

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::new()
    }
}

impl SlotMap {
    /// A map that knows no slot.
    pub fn new() -> Self {
        SlotMap {
            nodes: Vec::new(),
            primary: vec![NONE; SLOTS],
            replicas: Vec::new(),
        }
    }

    fn index_of(&mut self, node: &NodeAddr) -> Option<u16> {
        if let Some(i) = self.nodes.iter().position(|n| n == node) {
            return Some(i as u16);
        }
        if self.nodes.len() >= MAX_NODES {
            return None;
        }
        self.nodes.push(node.clone());
        Some((self.nodes.len() - 1) as u16)
    }

    /// The primary serving `slot`, when known.
    pub fn primary(&self, slot: u16) -> Option<&NodeAddr> {
        let i = *self.primary.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    /// The replicas of `slot` (for READONLY reads).
    pub fn replicas(&self, slot: u16) -> impl Iterator<Item = &NodeAddr> {
        self.replicas
            .get(usize::from(slot))
            .into_iter()
            .flatten()
            .filter_map(|&i| self.nodes.get(usize::from(i)))
    }

    /// Records what a `-MOVED` said, at once, before the whole map is read again.
    pub fn set_primary(&mut self, slot: u16, node: &NodeAddr) {
        if usize::from(slot) >= SLOTS {
            return;
        }
        if let Some(i) = self.index_of(node) {
            self.primary[usize::from(slot)] = i;
        }
    }

    /// How many slots have a known primary.
    pub fn covered(&self) -> usize {
        self.primary.iter().filter(|&&i| i != NONE).count()
    }

    /// The distinct primaries of the map.
    pub fn primaries(&self) -> Vec<&NodeAddr> {
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::new();
        for &i in &self.primary {
            if i != NONE && !seen[usize::from(i)] {
                seen[usize::from(i)] = true;
                out.push(&self.nodes[usize::from(i)]);
            }
        }
        out
    }

    /// Reads a complete `CLUSTER SLOTS` reply at the start of `buf`: the map and the reply's
    /// length in bytes. Nodes announced without an address (an empty or `?` endpoint) are
    /// left out: their slots stay unknown and a `-MOVED` fills them in.
    pub fn from_cluster_slots(buf: &[u8]) -> Result<(SlotMap, usize), MapError> {
        let (reply, used) = value(buf, 0, 0).map_err(|e| match e {
            Incomplete::More => MapError::Incomplete,
            Incomplete::Invalid => MapError::Invalid("not RESP"),
        })?;
        let ranges = match reply {
            Value::Array(ranges) => ranges,
            Value::Error => return Err(MapError::ErrorReply),
            _ => return Err(MapError::Invalid("not an array")),
        };
        let mut map = SlotMap::new();
        for range in &ranges {
            let Value::Array(fields) = range else {
                return Err(MapError::Invalid("a range that is not an array"));
            };
            let [Value::Int(first), Value::Int(last), nodes @ ..] = fields.as_slice() else {
                return Err(MapError::Invalid("a range without its first and last slot"));
            };
            let (first, last) = (*first, *last);
            if first < 0 || last < first || last >= SLOTS as i64 {
                return Err(MapError::Invalid("a slot range out of bounds"));
            }
            let mut addrs = Vec::new();
            for node in nodes {
                let Value::Array(info) = node else {
                    return Err(MapError::Invalid("a node that is not an array"));
                };
                let (Some(Value::Bytes(host)), Some(Value::Int(port))) =
                    (info.first(), info.get(1))
                else {
                    return Err(MapError::Invalid("a node without host and port"));
                };
                let port = u16::try_from(*port).map_err(|_| MapError::Invalid("a bad port"))?;
                let addr = std::str::from_utf8(host)
                    .ok()
                    .and_then(|h| NodeAddr::new(h, port));
                addrs.push(addr);
            }
            let mut indexes = Vec::with_capacity(addrs.len());
            for addr in &addrs {
                indexes.push(match addr {
                    Some(a) => map.index_of(a).ok_or(MapError::Invalid("too many nodes"))?,
                    None => NONE,
                });
            }
            let Some((&primary, replicas)) = indexes.split_first() else {
                return Err(MapError::Invalid("a range without a node"));
            };
            let replicas: Vec<u16> = replicas.iter().copied().filter(|&i| i != NONE).collect();
            if !replicas.is_empty() && map.replicas.is_empty() {
                map.replicas = vec![Vec::new(); SLOTS];
            }
            for s in first as usize..=last as usize {
                map.primary[s] = primary;
                if !replicas.is_empty() {
                    map.replicas[s].clone_from(&replicas);
                }
            }
        }
        Ok((map, used))
    }
}

/// The least time between two map refreshes of a worker: a failover answers many requests
/// with `-MOVED` or a refused connection, each asking for a refresh; one is enough.
pub const REFRESH_INTERVAL_MS: usize = 100;

/// One cluster as a worker sees it: its map, and whose turn it is to read it again.
#[derive(Default)]
pub struct Cluster {
    pub map: SlotMap,
    /// Something said the map is out of date (`-MOVED`, `-CLUSTERDOWN`, a node refusing).
    pub stale: bool,
    /// When the refresh in flight started, in ms (0: none).
    pub refreshing_since: usize,
    /// When the last refresh started.
    pub last_refresh: usize,
    /// Whether a map was ever read.
    pub loaded: bool,
    /// Whose turn among a slot's replicas (`replica_reads`).
    pub turn: usize,
    /// Nodes that failed (refused, reset, timed out), and until when (ms) requests for them
    /// fail open at once instead of waiting for a timeout each.
    down: Vec<(NodeAddr, usize)>,
}

impl Cluster {
    /// A node failed at `now`: requests for it fail at once for `backoff` ms.
    pub fn mark_down(&mut self, node: &NodeAddr, now: usize, backoff: usize) {
        let until = now.wrapping_add(backoff.max(1));
        if let Some(entry) = self.down.iter_mut().find(|(n, _)| n == node) {
            entry.1 = until;
        } else if self.down.len() < MAX_NODES {
            self.down.push((node.clone(), until));
        }
    }

    /// Whether requests for `node` fail at once now (its backoff is running).
    pub fn is_down(&mut self, node: &NodeAddr, now: usize) -> bool {
        // Ended backoffs go: the node is tried again (and marked again if still failing).
        self.down
            .retain(|(_, until)| (until.wrapping_sub(now) as isize) > 0);
        self.down.iter().any(|(n, _)| n == node)
    }

    /// Whether a request starting at `now` (ms) should refresh the map; if so, it takes the
    /// turn. One refresh at a time, at most one per `REFRESH_INTERVAL_MS`, and only when the
    /// map is missing or stale. `timeout`: how long a refresh may run
    /// before another may start (its request may have ended without telling).
    pub fn claim_refresh(&mut self, now: usize, timeout: usize) -> bool {
        if self.loaded && !self.stale {
            return false;
        }
        if self.refreshing_since != 0 && now.wrapping_sub(self.refreshing_since) < timeout {
            return false;
        }
        if self.last_refresh != 0 && now.wrapping_sub(self.last_refresh) < REFRESH_INTERVAL_MS {
            return false;
        }
        self.refreshing_since = now.max(1);
        self.last_refresh = now.max(1);
        true
    }

    /// A refresh ended; `map` when it read one.
    pub fn end_refresh(&mut self, map: Option<SlotMap>) {
        self.refreshing_since = 0;
        if let Some(map) = map {
            self.map = map;
            self.loaded = true;
            self.stale = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_xmodem_vectors() {
        // The check value of CRC-16/XMODEM, and the vectors of the Redis Cluster spec.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
        assert_eq!(crc16(b"A"), 0x58E5);
    }

    #[test]
    fn slots_as_redis_computes_them() {
        // `CLUSTER KEYSLOT` of a Redis 7 server.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"{user1000}.following"));
        assert_eq!(slot(b"user1000"), 3443);
        // The edge cases, as `CLUSTER KEYSLOT` of Redis 7.0 answers them.
        assert_eq!(slot(b"{}"), 15257);
        assert_eq!(slot(b"{{a}}"), 10276);
        assert_eq!(slot(b"a{b}c{d}"), 3300);
        assert_eq!(slot(b"a{bc"), 13842);
        assert_eq!(slot(b"{0123456789abcdef0123456789abcdef}:lease"), 1829);
    }

    #[test]
    fn hash_tag_edge_cases() {
        // An empty tag: the whole key is hashed.
        assert_eq!(hash_part(b"{}"), b"{}");
        assert_eq!(hash_part(b"foo{}{bar}"), b"foo{}{bar}");
        // The tag ends at the first `}` after the first `{`.
        assert_eq!(hash_part(b"{{a}}"), b"{a");
        assert_eq!(hash_part(b"foo{{bar}}zap"), b"{bar");
        // Only the first tag counts.
        assert_eq!(hash_part(b"a{b}c{d}"), b"b");
        assert_eq!(hash_part(b"foo{bar}{zap}"), b"bar");
        // No closing brace, or a closing brace only before: the whole key.
        assert_eq!(hash_part(b"a{bc"), b"a{bc");
        assert_eq!(hash_part(b"a}b{"), b"a}b{");
        assert_eq!(hash_part(b""), b"");
        assert_eq!(slot(b"{}"), crc16(b"{}") & 16383);
        // The module's keys: the entry and its lease in one slot.
        let md5 = b"0123456789abcdef0123456789abcdef";
        let entry = [b"{".as_slice(), md5, b"}"].concat();
        let lease = [entry.as_slice(), b":lease"].concat();
        assert_eq!(slot(&entry), slot(&lease));
        assert_eq!(slot(&entry), slot(md5));
    }

    #[test]
    fn first_keys() {
        assert_eq!(first_key_index(b"get", 2, None), Some(1));
        assert_eq!(first_key_index(b"SET", 3, None), Some(1));
        assert_eq!(first_key_index(b"PING", 1, None), None);
        assert_eq!(first_key_index(b"GET", 1, None), None);
        assert_eq!(first_key_index(b"EVAL", 6, Some(b"2")), Some(3));
        assert_eq!(first_key_index(b"EVAL", 3, Some(b"0")), None);
        assert_eq!(first_key_index(b"eval", 4, Some(b"x")), None);
    }

    #[test]
    fn redirects() {
        let node = |s: &str| NodeAddr(s.into());
        assert_eq!(
            parse_redirect(b"MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                node: node("127.0.0.1:6381")
            })
        );
        assert_eq!(
            parse_redirect(b"ASK 16383 10.0.0.2:7000"),
            Some(Redirect::Ask {
                slot: 16383,
                node: node("10.0.0.2:7000")
            })
        );
        assert_eq!(
            parse_redirect(b"MOVED 1 ::1:7001"),
            Some(Redirect::Moved {
                slot: 1,
                node: node("[::1]:7001")
            })
        );
        assert_eq!(
            parse_redirect(b"TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            parse_redirect(b"CLUSTERDOWN The cluster is down"),
            Some(Redirect::ClusterDown)
        );
        for bad in [
            b"MOVED 16384 127.0.0.1:1".as_slice(),
            b"MOVED -1 127.0.0.1:1",
            b"MOVED 1 127.0.0.1",
            b"MOVED 1 127.0.0.1:0",
            b"MOVED 1 127.0.0.1:70000",
            b"MOVED 1 :7000",
            b"MOVED 1 redis.example:7000",
            b"MOVED 1 127.0.0.1:1 extra",
            b"MOVED",
            b"ERR unknown command",
            b"moved 1 127.0.0.1:1",
            b"MOVED  1 127.0.0.1:1",
            b"MOVED 1 127.0.0.1:1 ",
            b" MOVED 1 127.0.0.1:1",
            b"  TRYAGAIN x",
            b"",
        ] {
            assert_eq!(
                parse_redirect(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn node(ip: &str, port: u16, id: &str) -> String {
        format!(
            "*3\r\n${}\r\n{ip}\r\n:{port}\r\n${}\r\n{id}\r\n",
            ip.len(),
            id.len()
        )
    }

    #[test]
    fn cluster_slots_map() {
        let reply = format!(
            "*3\r\n*4\r\n:0\r\n:5460\r\n{}{}*3\r\n:5461\r\n:10922\r\n{}*3\r\n:10923\r\n:16383\r\n{}",
            node("127.0.0.1", 7000, "a"),
            node("127.0.0.1", 7003, "d"),
            node("127.0.0.1", 7001, "b"),
            node("127.0.0.1", 7002, "c"),
        );
        let (map, used) = SlotMap::from_cluster_slots(reply.as_bytes()).unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(map.covered(), SLOTS);
        assert_eq!(map.primary(0).unwrap().0, "127.0.0.1:7000");
        assert_eq!(map.primary(5460).unwrap().0, "127.0.0.1:7000");
        assert_eq!(map.primary(5461).unwrap().0, "127.0.0.1:7001");
        assert_eq!(map.primary(16383).unwrap().0, "127.0.0.1:7002");
        assert_eq!(map.primaries().len(), 3);
        let r: Vec<_> = map.replicas(1).map(|n| n.0.clone()).collect();
        assert_eq!(r, ["127.0.0.1:7003"]);
        assert_eq!(map.replicas(6000).count(), 0);
        // Every prefix is incomplete, never an error.
        for cut in 0..reply.len() {
            assert_eq!(
                SlotMap::from_cluster_slots(&reply.as_bytes()[..cut]),
                Err(MapError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn cluster_slots_redis7_metadata_and_unknown_endpoints() {
        // Redis 7 adds a fourth element (networking metadata); `?`/empty hosts are unknown.
        let reply = "*2\r\n*3\r\n:0\r\n:99\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\na\r\n*2\r\n$8\r\nhostname\r\n$4\r\nhost\r\n\
                     *3\r\n:100\r\n:199\r\n*3\r\n$1\r\n?\r\n:7001\r\n$1\r\nb\r\n";
        let (mut map, _) = SlotMap::from_cluster_slots(reply.as_bytes()).unwrap();
        assert_eq!(map.covered(), 100);
        assert_eq!(map.primary(100), None);
        map.set_primary(100, &NodeAddr("127.0.0.1:7001".into()));
        assert_eq!(map.primary(100).unwrap().0, "127.0.0.1:7001");
        assert_eq!(map.covered(), 101);
    }

    #[test]
    fn cluster_slots_errors() {
        assert_eq!(
            SlotMap::from_cluster_slots(b"-ERR This instance has cluster support disabled\r\n"),
            Err(MapError::ErrorReply)
        );
        for bad in [
            b":1\r\n".as_slice(),
            b"*1\r\n:1\r\n",
            b"*1\r\n*2\r\n:5\r\n:4\r\n",
            b"*1\r\n*2\r\n:0\r\n:16384\r\n",
            b"*1\r\n*2\r\n:0\r\n:1\r\n",
            b"*1\r\n*3\r\n:0\r\n:1\r\n:7\r\n",
            b"*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nx\r\n:70000\r\n",
            b"x\r\n",
            b"$3\r\nabcd\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                matches!(SlotMap::from_cluster_slots(bad), Err(MapError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(reply_len(b"+OK\r\n:1\r\n"), Ok(Some(5)));
        assert_eq!(reply_len(b"*2\r\n:1\r\n"), Ok(None));
        assert_eq!(reply_len(b"?\r\n"), Err(NotResp));
        // A huge announced count does not allocate for it.
        assert_eq!(
            SlotMap::from_cluster_slots(b"*2000000000\r\n"),
            Err(MapError::Incomplete)
        );
    }

    #[test]
    fn one_refresh_at_a_time_and_not_too_often() {
        let mut c = Cluster::default();
        // No map yet: the first request refreshes, the others go to the seeds meanwhile.
        assert!(c.claim_refresh(1000, 750));
        assert!(!c.claim_refresh(1001, 750));
        // It failed (no map): the next try 100 ms after it started, not at once.
        c.end_refresh(None);
        assert!(!c.claim_refresh(1002, 750));
        assert!(c.claim_refresh(1100, 750));
        // A map arrived: nobody refreshes while it is not stale.
        let (map, _) = SlotMap::from_cluster_slots(
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
        )
        .unwrap();
        c.end_refresh(Some(map));
        assert!(!c.claim_refresh(5000, 750));
        // A storm of -MOVED: one refresh, then none for 100 ms, whatever the requests.
        c.stale = true;
        assert!(c.claim_refresh(5001, 750));
        assert!((5002..5700).all(|now| !c.claim_refresh(now, 750)));
        // A refresh whose request vanished lets another start after `timeout`.
        assert!(c.claim_refresh(5751, 750));
        c.end_refresh(None);
        assert!(
            !c.claim_refresh(5760, 750),
            "within 100 ms of the last start"
        );
        assert!(c.claim_refresh(5851, 750));
    }

    #[test]
    fn a_failed_node_is_down_for_its_backoff() {
        let mut c = Cluster::default();
        let a = NodeAddr("127.0.0.1:7000".into());
        let b = NodeAddr("127.0.0.1:7001".into());
        c.mark_down(&a, 1000, 1000);
        assert!(c.is_down(&a, 1000));
        assert!(c.is_down(&a, 1999));
        assert!(!c.is_down(&b, 1500));
        assert!(!c.is_down(&a, 2000));
        // Failing again starts a new backoff.
        c.mark_down(&a, 2100, 1000);
        assert!(c.is_down(&a, 3000));
        assert!(!c.is_down(&a, 3100));
    }
}
