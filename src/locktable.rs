//! Per-key locks, remembered freshness and pass marks, in one fixed-size table
//! laid out in a raw memory region (an nginx shared memory zone).
//!
//! Several worker processes map the region, possibly at different addresses,
//! and it survives configuration reloads, so the layout holds no pointers: a
//! `repr(C)` header, then `repr(C)` slots linked by `u32` indexes. Callers hold
//! nginx's shared mutex around every call, so the code here is plain
//! single-threaded code working on `&mut` references.
//!
//! Keys are reduced to 128-bit [`Fingerprint`]s (computed outside the mutex).
//! Slots form an open-addressing hash table with linear probing in Robin Hood
//! order, which lets a lookup of an absent key stop early, and backward-shift
//! deletion, which needs no tombstones. At most [`MAX_LOAD_PERCENT`] of the
//! slots are used, keeping probe sequences short. When the table is at that
//! load, the least recently used entry without a live lock makes room (exact
//! LRU through a doubly linked list threaded through the slots).
//!
//! A worker killed in the middle of an update can leave counts and links that
//! disagree. No loop here trusts them: each stops within one lap of the table,
//! an operation that meets damage records it in the header (so every worker's
//! next [`LockTable::attach`] refuses the table) and answers as if the zone
//! were full or the key unknown, and [`LockTable::rebuild`] empties the table
//! keeping its seed. Holding the shared mutex, an endless loop would stop
//! every worker; a forgotten lock or memo only costs one collapse.

use std::fmt;
use std::hash::Hasher;
use std::mem::{align_of, size_of};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU32, Ordering};

use siphasher::sip128::{Hash128, Hasher128, SipHasher13};

/// Identifies an initialised region ("SWRLOCK" + layout generation).
pub const MAGIC: u64 = u64::from_le_bytes(*b"SWRLOCK1");

/// Bumped whenever the header, the slots or the fingerprint function change,
/// so a region left by another module version is re-created, not misread.
pub const LAYOUT_VERSION: u32 = 6;

/// Bytes reserved for the header at the start of the region; slots follow.
pub const HEADER_SIZE: usize = 128;

/// Highest share of slots in use. Linear probing degrades sharply above ~90%;
/// 85% keeps the expected probe length of a lookup at a few slots while
/// wasting only 15% of the zone.
pub const MAX_LOAD_PERCENT: usize = 85;

/// Fewest slots a region must have, so the load limit leaves room to work.
pub const MIN_SLOTS: usize = 8;

/// How long the end of a successful fill is remembered for [`LockAttempt::RecentlyFilled`].
/// A request whose `TTL` lookup took longer than this may fill a second time.
pub const FILL_MEMORY_MS: u64 = 2_000;

const NIL: u32 = u32::MAX;
const USED: u8 = 1;
const KIND_NONE: u8 = 0;

/// `Slot::fill`: what the last fill of the key left behind. One field for both
/// outcomes because they exclude each other: a fill either stored the entry
/// (late lookups must not fill again) or it did not (fills pass until the
/// mark expires), and the newer outcome replaces the older.
const FILL_NONE: u8 = 0;
/// `fill_ms` is when a lock holder stored the key.
const FILL_STORED: u8 = 1;
/// `fill_ms` is when the pass mark expires.
const FILL_PASS: u8 = 2;
/// `fill_ms` is when the error mark expires: the key's last fill or refresh failed, so
/// until then nobody retries it (refresh backoff) and, in the error grace band, the stored
/// copy is served at once (stale-if-error).
const FILL_ERROR: u8 = 3;

/// How long after an error mark expires its count of consecutive failures is kept, so the
/// next failure backs off longer instead of starting over.
pub const ERROR_MEMORY_MS: u64 = 60_000;

/* ------------------------------------------------------------- fingerprint */

/// A cache key reduced to 96 bits of SipHash-1-3-128 keyed by the region's
/// seed (the `siphasher` crate: std's hashers are unspecified and may change
/// between Rust releases, while the region outlives the binary's code on
/// reload): every worker computes the same value, and clients cannot aim keys at
/// one probe sequence without knowing the seed. 1-3, not 2-4: still a keyed PRF
/// (Rust's own `HashMap` defends against chosen keys with it), a third fewer
/// rounds on every fresh hit; the layout version names the hash, so a region
/// hashed otherwise is refused on reload (restart), never looked up with the
/// wrong hash. 96 bits, not the hash's 128, so a slot has room for the memo's
/// age. Two keys sharing a fingerprint (about 2^-37 for a billion keys) only
/// share a lock and a freshness memo, costing a missed or extra collapse or a
/// wrong `Age`, never wrong data: the data is in Redis
/// under the full key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    hi: u64,
    lo: u32,
}

impl Fingerprint {
    /// The fingerprint of `key` in a table initialised with `seed`.
    pub fn of(seed: u64, key: &[u8]) -> Fingerprint {
        // A second key word derived from the seed, so one u64 seeds the hash.
        let k1 = seed.rotate_left(32) ^ u64::from_le_bytes(*b"staleKey");
        let mut hasher = SipHasher13::new_with_keys(seed, k1);
        // `write`, not `Hash::hash`: the bytes alone, without a length prefix, so the value
        // is plain SipHash of the key (checked against the reference vectors in the tests).
        hasher.write(key);
        let Hash128 { h1, h2 } = hasher.finish128();
        Fingerprint {
            hi: h2,
            lo: h1 as u32,
        }
    }
}

/* ------------------------------------------------------------------ layout */

/// Who holds a lock: the request filling a missing key, or a background
/// refresh of a stale one. Waiters treat them differently.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// A miss being filled by a client request.
    Fill = 1,
    /// A stale entry being refreshed in the background.
    Refresh = 2,
}

impl LockKind {
    fn from_raw(raw: u8) -> Option<LockKind> {
        match raw {
            1 => Some(LockKind::Fill),
            2 => Some(LockKind::Refresh),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Header {
    magic: u64,
    version: u32,
    slot_size: u32,
    header_size: u32,
    slots: u32,
    max_entries: u32,
    entries: u32,
    lru_head: u32,
    lru_tail: u32,
    seed: u64,
    evictions: u64,
    reclaimed: u64,
    takeovers: u64,
    full: u64,
    /// Live locks released because their owner process was gone.
    dead_owners: u64,
    /// Times the table was rebuilt after damage; survives the rebuild.
    rebuilds: u64,
    /// A [`Damage`] code once an operation found the table inconsistent, else
    /// 0. Set, it makes [`LockTable::attach`] fail until [`LockTable::rebuild`]:
    /// every worker sees it, not only the one that found the damage.
    damage: u32,
    /// Bumped (under the mutex) whenever a memo is cleared or shortened, read without it:
    /// workers keep copies of the memos they read (`crate::memocache`) only while it holds.
    /// Carried over by a rebuild (bumped), so no copy outlives the memos it mirrors.
    memo_epoch: u32,
}

/// One key's state. Integers only, so any bit pattern is a valid value and a
/// region can be viewed in place without a parse step. 64 bytes: one cache
/// line, so a probe or a lock touches one line per slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    fp_hi: u64,
    fp_lo: u32,
    /// The entry's age (seconds) when the memo ends, plus 1; 0 when unknown or no memo.
    /// In the memo's slot so that a memo hit knows the `Age` of the response (HTTP mode)
    /// without a second lookup.
    memo_age: u32,
    /// Owner of the lock (never 0); meaningful while `kind` is not KIND_NONE.
    token: u64,
    lock_expires_ms: u64,
    /// Remembered freshness, 0 when none.
    fresh_until_ms: u64,
    /// A time whose meaning `fill` gives; 0 with FILL_NONE.
    fill_ms: u64,
    lru_prev: u32,
    lru_next: u32,
    /// Process id of the lock's owner, 0 when unknown (then it is never
    /// released as dead); meaningful while `kind` is not KIND_NONE.
    owner_pid: u32,
    /// USED or 0.
    used: u8,
    /// A LockKind, or KIND_NONE when unlocked.
    kind: u8,
    /// FILL_NONE, FILL_STORED, FILL_PASS or FILL_ERROR.
    fill: u8,
    /// Consecutive failed fills or refreshes (FILL_ERROR only; 0 otherwise).
    failures: u8,
}

const SLOT_SIZE: usize = size_of::<Slot>();
const _: () = assert!(SLOT_SIZE == 64);
const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(HEADER_SIZE.is_multiple_of(align_of::<Slot>()));

impl Slot {
    const EMPTY: Slot = Slot {
        fp_hi: 0,
        fp_lo: 0,
        memo_age: 0,
        token: 0,
        lock_expires_ms: 0,
        fresh_until_ms: 0,
        fill_ms: 0,
        lru_prev: NIL,
        lru_next: NIL,
        owner_pid: 0,
        used: 0,
        kind: KIND_NONE,
        fill: FILL_NONE,
        failures: 0,
    };

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            hi: self.fp_hi,
            lo: self.fp_lo,
        }
    }

    /// The lock, if one is held and unexpired.
    fn live_lock(&self, now_ms: u64) -> Option<LockInfo> {
        if self.lock_expires_ms <= now_ms {
            return None;
        }
        Some(LockInfo {
            kind: LockKind::from_raw(self.kind)?,
            token: NonZeroU64::new(self.token)?,
            owner_pid: self.owner_pid,
            expires_at_ms: self.lock_expires_ms,
        })
    }

    fn clear_lock(&mut self) {
        self.token = 0;
        self.kind = KIND_NONE;
        self.lock_expires_ms = 0;
        self.owner_pid = 0;
    }

    fn memo_live(&self, now_ms: u64) -> bool {
        self.fresh_until_ms > now_ms
    }

    fn set_memo(&mut self, fresh_until_ms: u64, born_ms: Option<u64>) {
        self.fresh_until_ms = fresh_until_ms;
        // Whole seconds from birth to the memo's end (exact when both are whole seconds from
        // one clock reading, as the lookups set them); an age past u32 seconds is unknown.
        self.memo_age = born_ms
            .and_then(|born| fresh_until_ms.checked_sub(born))
            .and_then(|age_ms| u32::try_from(age_ms / 1000).ok())
            .and_then(|age_s| age_s.checked_add(1))
            .unwrap_or(0);
    }

    /// When the entry of a live memo was born (ms), if the memo knows.
    fn memo_born(&self) -> Option<u64> {
        let age_s = u64::from(self.memo_age.checked_sub(1)?);
        self.fresh_until_ms.checked_sub(age_s * 1000)
    }

    /// When a lock holder last stored the key, while that is remembered.
    fn recent_store(&self, now_ms: u64) -> Option<u64> {
        // saturating_sub: another worker's clock may be a little ahead of ours.
        (self.fill == FILL_STORED && now_ms.saturating_sub(self.fill_ms) < FILL_MEMORY_MS)
            .then_some(self.fill_ms)
    }

    /// Milliseconds the pass mark has left, if it is live.
    fn pass_left(&self, now_ms: u64) -> Option<u64> {
        (self.fill == FILL_PASS && self.fill_ms > now_ms).then(|| self.fill_ms - now_ms)
    }

    /// Milliseconds the error mark has left, if it is live.
    fn error_left(&self, now_ms: u64) -> Option<u64> {
        (self.fill == FILL_ERROR && self.fill_ms > now_ms).then(|| self.fill_ms - now_ms)
    }

    /// The failure count is still remembered (for the next backoff).
    fn failures_kept(&self, now_ms: u64) -> bool {
        self.fill == FILL_ERROR && self.fill_ms.saturating_add(ERROR_MEMORY_MS) > now_ms
    }

    /// Replaces what the last fill left behind.
    fn set_fill(&mut self, fill: u8, fill_ms: u64) {
        self.fill = fill;
        self.fill_ms = fill_ms;
        self.failures = 0;
    }

    /// Holds nothing anyone still needs: may be dropped at any time.
    fn is_garbage(&self, now_ms: u64) -> bool {
        self.live_lock(now_ms).is_none()
            && !self.memo_live(now_ms)
            && self.recent_store(now_ms).is_none()
            && self.pass_left(now_ms).is_none()
            && !self.failures_kept(now_ms)
    }
}

/// What an operation found wrong with the table (kept in the header as a code,
/// since the region holds no pointers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// The entry count disagrees with the slots.
    Count = 1,
    /// An LRU link points out of range, at an empty slot, or not back.
    Link = 2,
    /// A probe sequence or a run of entries never ends, though one slot is
    /// always empty.
    Endless = 3,
}

impl Damage {
    fn from_raw(raw: u32) -> Option<Damage> {
        match raw {
            1 => Some(Damage::Count),
            2 => Some(Damage::Link),
            3 => Some(Damage::Endless),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Damage::Count => "entry count disagrees with the slots",
            Damage::Link => "broken LRU link",
            Damage::Endless => "probe sequence without an end",
        }
    }
}

/* -------------------------------------------------------------- public API */

/// A lock as seen by others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Fill or refresh.
    pub kind: LockKind,
    /// The owner's token.
    pub token: NonZeroU64,
    /// The owner's process id, 0 when unknown.
    pub owner_pid: u32,
    /// When the lock lapses if its owner never releases it.
    pub expires_at_ms: u64,
}

/// Who asks for a lock: a token unique to the request, and the process it
/// runs in, so others can release the lock if that process dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Unique to the lock holder; [`LockTable::unlock`] needs it.
    pub token: NonZeroU64,
    /// The worker's process id; 0 = unknown, never considered dead.
    pub pid: u32,
}

/// A request for [`LockTable::try_lock_as`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// Fill or refresh.
    pub kind: LockKind,
    /// Who asks.
    pub owner: Owner,
    /// How long the lock lasts if never released.
    pub ttl_ms: u64,
    /// When the caller started the `TTL` lookup that found the key missing
    /// (`Fill` only).
    pub lookup_started_ms: u64,
}

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// Nobody held it.
    Free,
    /// A previous owner let it expire without releasing it (a crashed worker
    /// or a too short `$cache_lock_exptime`).
    Expired,
    /// It was live, but its owner process is gone.
    DeadOwner {
        /// The dead owner's process id.
        pid: u32,
    },
}

/// Result of [`LockTable::try_lock_as`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockAttempt {
    /// The caller holds the lock now.
    Acquired(TakeOver),
    /// Someone holds an unexpired lock (possibly the caller itself, if the
    /// token matches) in a live process (or one of unknown pid).
    Held(LockInfo),
    /// A fill of this key finished at or after the caller's lookup started:
    /// its "missing" answer is out of date, so it must not fill.
    RecentlyFilled,
    /// (`Fill` only) The key has a live pass mark: its last fill was not
    /// stored, so requests go to the backend in parallel, without a lock and
    /// without waiting, for this many more milliseconds.
    Pass {
        /// Milliseconds the mark has left (at least 1).
        left_ms: u64,
    },
    /// No lock for the caller: every entry holds a live lock, or the table is
    /// damaged (then [`LockTable::damage`] says so and `Zone::with_table`
    /// returns `None`). Proceed without a lock.
    Full,
}

/// Result of [`LockTable::try_lock`], the tests' shorthand without owner pids
/// and pass marks (the nginx layer calls [`LockTable::try_lock_as`]).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The caller holds the lock now. `took_over_expired`: a previous owner let
    /// its lock expire without releasing it (worth a log line: a crashed
    /// worker or a too short `$cache_lock_exptime`).
    Acquired {
        /// Whether an expired lock was replaced.
        took_over_expired: bool,
    },
    /// Someone holds an unexpired lock (possibly the caller itself, if the
    /// token matches).
    Held(LockInfo),
    /// A fill of this key finished at or after the caller's lookup started:
    /// its "missing" answer is out of date, so it must not fill.
    RecentlyFilled,
    /// No room: every entry holds a live lock (or the table is damaged).
    Full,
}

/// Result of [`LockTable::memo_set`] and [`LockTable::pass_set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoOutcome {
    /// Stored without dropping anything still useful.
    Stored,
    /// Stored after evicting this many live entries: the zone is too small for
    /// the working set (log it once).
    StoredEvicted(u64),
    /// No room: every entry holds a live lock (or the table is damaged).
    Full,
}

/// What [`LockTable::forget`] found live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// A freshness memo, now dropped.
    pub memo: bool,
    /// A pass mark, now dropped.
    pub pass_mark: bool,
    /// A lock, kept.
    pub locked: bool,
}

/// Table counters, read in constant time (e.g. for metrics). Event counts
/// start at 0 when the table is laid out or rebuilt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Slots in the region.
    pub slots: usize,
    /// Entries the table holds at its load limit.
    pub capacity: usize,
    /// Entries in use (including expired ones not yet reclaimed).
    pub entries: usize,
    /// Entries with live state dropped to make room.
    pub evictions: u64,
    /// Expired entries dropped.
    pub reclaimed: u64,
    /// Expired locks taken over.
    pub takeovers: u64,
    /// Live locks released or taken over because their owner process was gone.
    pub dead_owners: u64,
    /// Operations that found every entry locked.
    pub full: u64,
    /// Rebuilds after damage since the region was laid out (kept across them).
    pub rebuilds: u64,
}

/// Why a region cannot be used as a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The region does not start at an 8-byte boundary.
    Misaligned,
    /// The region is smaller than the header plus [`MIN_SLOTS`] slots.
    TooSmall {
        /// Its size.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// No table was ever initialised in it.
    BadMagic,
    /// Initialised by a module version with another layout.
    Version {
        /// The version found.
        found: u32,
    },
    /// Initialised for a region of another size.
    SizeMismatch {
        /// Slots recorded in the header.
        found: u64,
        /// Slots this region has room for.
        expected: u64,
    },
    /// Inconsistent content (e.g. a worker died in the middle of an update):
    /// [`LockTable::rebuild`] makes the region usable again.
    Corrupt(&'static str),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => f.write_str("lock table region is not 8-byte aligned"),
            Self::TooSmall { len, min } => {
                write!(f, "lock table region of {len} bytes is smaller than {min}")
            }
            Self::BadMagic => f.write_str("lock table region was not initialised"),
            Self::Version { found } => write!(
                f,
                "lock table layout version {found}, this module uses {LAYOUT_VERSION}"
            ),
            Self::SizeMismatch { found, expected } => write!(
                f,
                "lock table has {found} slots, its region has room for {expected}"
            ),
            Self::Corrupt(what) => write!(f, "lock table corrupt: {what}"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// A view of a table in a region; cheap to create, so callers make one per
/// operation while holding the zone mutex.
pub struct LockTable<'a> {
    hdr: &'a mut Header,
    slots: &'a mut [Slot],
}

enum Probe {
    Found(usize),
    Vacant(usize),
}

impl<'a> LockTable<'a> {
    /// Size of one slot, i.e. of one key's state.
    pub const fn bytes_per_slot() -> usize {
        SLOT_SIZE
    }

    /// Slots a region of `len` bytes has room for.
    pub const fn slots_for_len(len: usize) -> usize {
        if len < HEADER_SIZE {
            return 0;
        }
        let slots = (len - HEADER_SIZE) / SLOT_SIZE;
        // u32 indexes, NIL reserved.
        if slots > (NIL - 1) as usize {
            (NIL - 1) as usize
        } else {
            slots
        }
    }

    /// Entries a region of `len` bytes holds at the load limit, e.g. for a
    /// configuration-time message about the zone size.
    pub const fn capacity_for_len(len: usize) -> usize {
        max_entries(Self::slots_for_len(len))
    }

    /// Smallest usable region.
    const fn min_region_len() -> usize {
        HEADER_SIZE + MIN_SLOTS * SLOT_SIZE
    }

    /// Lays out an empty table in `region` (all previous content is lost).
    /// `seed` should be random: it keys the fingerprints.
    pub fn init(region: &'a mut [u8], seed: u64) -> Result<LockTable<'a>, LayoutError> {
        let slots = Self::check_region(region)?;
        region.fill(0);
        let mut table = Self::view(region, slots);
        table.lay_out(seed, 0);
        Ok(table)
    }

    /// Views a region [`LockTable::init`] prepared, checking its header only
    /// (constant time); see [`LockTable::verify`] for a full check. A table an
    /// operation found damaged is refused with [`LayoutError::Corrupt`] until
    /// [`LockTable::rebuild`].
    pub fn attach(region: &'a mut [u8]) -> Result<LockTable<'a>, LayoutError> {
        let table = Self::attach_layout(region)?;
        if table.hdr.max_entries as usize != max_entries(table.slots.len()) {
            return Err(LayoutError::Corrupt("entry count"));
        }
        table.check_state()?;
        Ok(table)
    }

    /// [`LockTable::attach`] of a region whose layout this process has already seen
    /// `attach` accept (the same mapping): the layout fields (magic, version, sizes, slot
    /// count, capacity) are only ever written when a table is laid out, and then with the
    /// same values for a region of this size, so only what operations change is checked
    /// again: the damage mark, the entry count and the LRU list's ends. Saves the per-call
    /// header checks on the hot path; a damaged table is refused exactly as by `attach`.
    pub fn reattach(region: &'a mut [u8]) -> Result<LockTable<'a>, LayoutError> {
        let slots = Self::check_region(region)?;
        let table = Self::view(region, slots);
        table.check_state()?;
        Ok(table)
    }

    /// The header fields operations change, as a crashed writer may have left them.
    #[inline]
    fn check_state(&self) -> Result<(), LayoutError> {
        let h = &*self.hdr;
        if h.damage != 0 {
            return Err(self.damage().unwrap_or(LayoutError::Corrupt("damage")));
        }
        if h.entries > h.max_entries {
            return Err(LayoutError::Corrupt("entry count"));
        }
        let slots = self.slots.len();
        let valid = |i: u32| i == NIL || (i as usize) < slots;
        if !valid(h.lru_head) || !valid(h.lru_tail) || (h.lru_head == NIL) != (h.entries == 0) {
            return Err(LayoutError::Corrupt("LRU list ends"));
        }
        Ok(())
    }

    /// Empties a table whose layout this module reads (as [`LockTable::attach`]
    /// checks it) but whose content is damaged, keeping its seed: workers cache
    /// the seed, so fingerprints they compute stay valid. Locks held meanwhile
    /// are forgotten; their owners' releases then do nothing.
    pub fn rebuild(region: &'a mut [u8]) -> Result<LockTable<'a>, LayoutError> {
        let mut table = Self::attach_layout(region)?;
        let (seed, rebuilds) = (table.hdr.seed, table.hdr.rebuilds);
        table.lay_out(seed, rebuilds.wrapping_add(1));
        Ok(table)
    }

    /// [`LockTable::init`] on a raw region.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`,
    /// and nothing else may access it meanwhile (hold the zone mutex).
    pub unsafe fn init_raw(
        region: *mut u8,
        len: usize,
        seed: u64,
    ) -> Result<LockTable<'a>, LayoutError> {
        // SAFETY: the caller guarantees validity and exclusivity.
        Self::init(unsafe { std::slice::from_raw_parts_mut(region, len) }, seed)
    }

    /// [`LockTable::attach`] on a raw region.
    ///
    /// # Safety
    /// As for [`LockTable::init_raw`].
    pub unsafe fn attach_raw(region: *mut u8, len: usize) -> Result<LockTable<'a>, LayoutError> {
        // SAFETY: the caller guarantees validity and exclusivity.
        Self::attach(unsafe { std::slice::from_raw_parts_mut(region, len) })
    }

    /// [`LockTable::reattach`] on a raw region.
    ///
    /// # Safety
    /// As for [`LockTable::init_raw`].
    pub unsafe fn reattach_raw(region: *mut u8, len: usize) -> Result<LockTable<'a>, LayoutError> {
        // SAFETY: the caller guarantees validity and exclusivity.
        Self::reattach(unsafe { std::slice::from_raw_parts_mut(region, len) })
    }

    /// [`LockTable::rebuild`] on a raw region.
    ///
    /// # Safety
    /// As for [`LockTable::init_raw`].
    pub unsafe fn rebuild_raw(region: *mut u8, len: usize) -> Result<LockTable<'a>, LayoutError> {
        // SAFETY: the caller guarantees validity and exclusivity.
        Self::rebuild(unsafe { std::slice::from_raw_parts_mut(region, len) })
    }

    fn check_region(region: &[u8]) -> Result<usize, LayoutError> {
        if region.as_ptr().align_offset(align_of::<Slot>()) != 0 {
            return Err(LayoutError::Misaligned);
        }
        let slots = Self::slots_for_len(region.len());
        if slots < MIN_SLOTS {
            return Err(LayoutError::TooSmall {
                len: region.len(),
                min: Self::min_region_len(),
            });
        }
        Ok(slots)
    }

    /// A view of a region laid out by this layout version for this size.
    fn attach_layout(region: &'a mut [u8]) -> Result<LockTable<'a>, LayoutError> {
        let slots = Self::check_region(region)?;
        let table = Self::view(region, slots);
        let h = *table.hdr;
        if h.magic != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if h.version != LAYOUT_VERSION
            || h.slot_size as usize != SLOT_SIZE
            || h.header_size as usize != HEADER_SIZE
        {
            return Err(LayoutError::Version { found: h.version });
        }
        if h.slots as usize != slots {
            return Err(LayoutError::SizeMismatch {
                found: u64::from(h.slots),
                expected: slots as u64,
            });
        }
        Ok(table)
    }

    fn view(region: &'a mut [u8], slots: usize) -> LockTable<'a> {
        let (head, body) = region.split_at_mut(HEADER_SIZE);
        // SAFETY: `head` is HEADER_SIZE >= size_of::<Header>() bytes, aligned
        // (checked by check_region), borrowed mutably for 'a, and Header has
        // integer fields only, so any content is a valid value.
        let hdr = unsafe { &mut *head.as_mut_ptr().cast::<Header>() };
        // SAFETY: `body` holds at least `slots` slots (slots_for_len), starts
        // aligned (HEADER_SIZE is a multiple of the alignment), is borrowed
        // mutably for 'a, and Slot has integer fields only.
        let slots =
            unsafe { std::slice::from_raw_parts_mut(body.as_mut_ptr().cast::<Slot>(), slots) };
        LockTable { hdr, slots }
    }

    fn lay_out(&mut self, seed: u64, rebuilds: u64) {
        let slots = self.slots.len();
        // A rebuild forgets every memo: copies read before it must not be used after it.
        let memo_epoch = self.hdr.memo_epoch.wrapping_add(1);
        *self.hdr = Header {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            slot_size: SLOT_SIZE as u32,
            header_size: HEADER_SIZE as u32,
            slots: slots as u32,
            max_entries: max_entries(slots) as u32,
            entries: 0,
            lru_head: NIL,
            lru_tail: NIL,
            seed,
            evictions: 0,
            reclaimed: 0,
            takeovers: 0,
            full: 0,
            dead_owners: 0,
            rebuilds,
            damage: 0,
            memo_epoch: self.hdr.memo_epoch,
        };
        self.slots.fill(Slot::EMPTY);
        // Stored atomically, as `memo_changed` does: other workers read it without the mutex.
        self.store_memo_epoch(memo_epoch);
    }

    /// The seed fingerprints are keyed with; read it once after init/attach.
    pub fn seed(&self) -> u64 {
        self.hdr.seed
    }

    /// The fingerprint of `key` in this table. Computing it with
    /// [`Fingerprint::of`] before taking the mutex shortens the critical section.
    pub fn fingerprint(&self, key: &[u8]) -> Fingerprint {
        Fingerprint::of(self.hdr.seed, key)
    }

    /// Counters (constant time).
    pub fn stats(&self) -> Stats {
        Stats {
            slots: self.slots.len(),
            capacity: self.hdr.max_entries as usize,
            entries: self.hdr.entries as usize,
            evictions: self.hdr.evictions,
            reclaimed: self.hdr.reclaimed,
            takeovers: self.hdr.takeovers,
            dead_owners: self.hdr.dead_owners,
            full: self.hdr.full,
            rebuilds: self.hdr.rebuilds,
        }
    }

    /// Why the table is unusable, once an operation found it damaged (it then
    /// answered as if the zone had no room or did not know the key, and every
    /// later operation does the same until [`LockTable::rebuild`]).
    pub fn damage(&self) -> Option<LayoutError> {
        match self.hdr.damage {
            0 => None,
            raw => Some(LayoutError::Corrupt(
                Damage::from_raw(raw).map_or("unknown damage code", Damage::what),
            )),
        }
    }

    /// Runs `op` unless the table is already known to be damaged; on damage,
    /// records it for every worker and answers `fallback`, so no operation
    /// loops or indexes out of range on a region a crashed writer left
    /// half-updated.
    fn guarded<T>(&mut self, fallback: T, op: impl FnOnce(&mut Self) -> Result<T, Damage>) -> T {
        if self.hdr.damage != 0 {
            return fallback;
        }
        match op(self) {
            Ok(value) => value,
            Err(damage) => {
                self.hdr.damage = damage as u32;
                fallback
            }
        }
    }

    /// Tries to take the lock of `fp` for `req.ttl_ms`, refreshing the key's
    /// LRU position. In order: a `Fill` of a key with a live pass mark gets
    /// [`LockAttempt::Pass`]; a live lock whose owner pid is known and for which
    /// `owner_alive(pid)` says false is taken over; any other live lock gives
    /// [`LockAttempt::Held`]; a `Fill` whose lookup started at or before the
    /// last store gets [`LockAttempt::RecentlyFilled`]. `owner_alive` is called
    /// at most once, with the mutex held: keep it to a `kill(pid, 0)`, and
    /// answer true for the caller's own pid and on doubt (pass `|_| true` to
    /// skip the check).
    pub fn try_lock_as(
        &mut self,
        fp: Fingerprint,
        req: LockRequest,
        now_ms: u64,
        owner_alive: impl FnOnce(u32) -> bool,
    ) -> LockAttempt {
        self.guarded(LockAttempt::Full, |t| {
            t.lock_entry(fp, req, now_ms, true, owner_alive)
        })
    }

    /// [`LockTable::try_lock_as`] as the tests' shorthand: owner pid unknown,
    /// no dead-owner check, pass marks ignored.
    #[cfg(test)]
    pub fn try_lock(
        &mut self,
        fp: Fingerprint,
        kind: LockKind,
        token: NonZeroU64,
        ttl_ms: u64,
        lookup_started_ms: u64,
        now_ms: u64,
    ) -> LockOutcome {
        let req = LockRequest {
            kind,
            owner: Owner { token, pid: 0 },
            ttl_ms,
            lookup_started_ms,
        };
        let attempt = self.guarded(LockAttempt::Full, |t| {
            t.lock_entry(fp, req, now_ms, false, |_| true)
        });
        match attempt {
            LockAttempt::Acquired(how) => LockOutcome::Acquired {
                took_over_expired: how != TakeOver::Free,
            },
            LockAttempt::Held(info) => LockOutcome::Held(info),
            LockAttempt::RecentlyFilled => LockOutcome::RecentlyFilled,
            // Pass is not produced without `honour_pass`.
            LockAttempt::Pass { .. } | LockAttempt::Full => LockOutcome::Full,
        }
    }

    fn lock_entry(
        &mut self,
        fp: Fingerprint,
        req: LockRequest,
        now_ms: u64,
        honour_pass: bool,
        owner_alive: impl FnOnce(u32) -> bool,
    ) -> Result<LockAttempt, Damage> {
        let idx = match self.find(fp)? {
            Some(idx) => idx,
            None => match self.insert(fp, now_ms)? {
                Some((idx, _)) => idx,
                None => return Ok(LockAttempt::Full),
            },
        };
        self.touch(idx)?;
        let fill = req.kind == LockKind::Fill;
        let slot = &mut self.slots[idx];
        if fill && honour_pass {
            if let Some(left_ms) = slot.pass_left(now_ms) {
                return Ok(LockAttempt::Pass { left_ms });
            }
        }
        let mut how = TakeOver::Free;
        if let Some(info) = slot.live_lock(now_ms) {
            if info.owner_pid == 0 || owner_alive(info.owner_pid) {
                return Ok(LockAttempt::Held(info));
            }
            slot.clear_lock();
            self.hdr.dead_owners = self.hdr.dead_owners.wrapping_add(1);
            how = TakeOver::DeadOwner {
                pid: info.owner_pid,
            };
        } else if slot.kind != KIND_NONE {
            how = TakeOver::Expired;
        }
        let slot = &mut self.slots[idx];
        // Not limited to FILL_MEMORY_MS: a store the slot still remembers (kept by
        // a memo, say) is as valid a reason not to fill.
        if fill && slot.fill == FILL_STORED && slot.fill_ms >= req.lookup_started_ms {
            // A lock just taken from a dead owner stays released: the waiters
            // it kept waiting find the stored entry now.
            return Ok(LockAttempt::RecentlyFilled);
        }
        slot.token = req.owner.token.get();
        slot.owner_pid = req.owner.pid;
        slot.kind = req.kind as u8;
        slot.lock_expires_ms = now_ms.saturating_add(req.ttl_ms);
        if how == TakeOver::Expired {
            self.hdr.takeovers = self.hdr.takeovers.wrapping_add(1);
        }
        Ok(LockAttempt::Acquired(how))
    }

    /// Releases the lock of `fp` if `token` owns it (even if it expired and
    /// nobody took it over yet); returns whether it did. `filled`: the
    /// holder's fill (or refresh) stored the entry, which later `Fill`
    /// [`LockTable::try_lock_as`] calls report as [`LockAttempt::RecentlyFilled`]
    /// and which ends a pass mark. A release without a store records nothing:
    /// waiters polling [`LockTable::lock_state`] see the lock gone and retry.
    pub fn unlock(
        &mut self,
        fp: Fingerprint,
        token: NonZeroU64,
        now_ms: u64,
        filled: bool,
    ) -> bool {
        self.guarded(false, |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(false);
            };
            let slot = &mut t.slots[idx];
            if slot.kind == KIND_NONE || slot.token != token.get() {
                return Ok(false);
            }
            if filled {
                // A refresh that stored counts too: requests that found the key missing
                // while it ran were waiting for exactly that store. It also ends an error
                // mark and its count of failures.
                slot.set_fill(FILL_STORED, now_ms);
            }
            slot.clear_lock();
            t.reclaim_if_garbage(idx, now_ms)?;
            Ok(true)
        })
    }

    /// Releases the live lock of `fp` if its owner process is gone, as
    /// `owner_alive(pid)` tells (called at most once, mutex held; a lock of
    /// unknown pid is never released). Returns whether it did; waiters then
    /// retry as after any release. Nothing is recorded as stored.
    pub fn release_if_owner_dead(
        &mut self,
        fp: Fingerprint,
        now_ms: u64,
        owner_alive: impl FnOnce(u32) -> bool,
    ) -> bool {
        self.guarded(false, |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(false);
            };
            let Some(info) = t.slots[idx].live_lock(now_ms) else {
                return Ok(false);
            };
            if info.owner_pid == 0 || owner_alive(info.owner_pid) {
                return Ok(false);
            }
            t.slots[idx].clear_lock();
            t.hdr.dead_owners = t.hdr.dead_owners.wrapping_add(1);
            t.reclaim_if_garbage(idx, now_ms)?;
            Ok(true)
        })
    }

    /// The live lock of `fp`, if any; waiters poll this.
    pub fn lock_state(&mut self, fp: Fingerprint, now_ms: u64) -> Option<LockInfo> {
        self.guarded(None, |t| {
            Ok(t.find(fp)?.and_then(|idx| t.slots[idx].live_lock(now_ms)))
        })
    }

    /// When a lock holder last stored `fp` (a successful fill or refresh),
    /// if that is still remembered; waiters use it to time their wake-up.
    pub fn last_store_ms(&mut self, fp: Fingerprint, now_ms: u64) -> Option<u64> {
        self.guarded(None, |t| {
            Ok(t.find(fp)?
                .and_then(|idx| t.slots[idx].recent_store(now_ms)))
        })
    }

    /// The remembered "fresh until" time of `fp`, if still in the future.
    /// Refreshes the key's LRU position.
    pub fn memo_get(&mut self, fp: Fingerprint, now_ms: u64) -> Option<u64> {
        let idx = self.live_memo(fp, now_ms)?;
        Some(self.slots[idx].fresh_until_ms)
    }

    /// [`LockTable::memo_get`], with when the entry was born (ms) if the memo was set with it
    /// ([`LockTable::memo_set_born`]).
    pub fn memo_get_born(&mut self, fp: Fingerprint, now_ms: u64) -> Option<(u64, Option<u64>)> {
        let slot = &self.slots[self.live_memo(fp, now_ms)?];
        Some((slot.fresh_until_ms, slot.memo_born()))
    }

    /// The slot of `fp`'s live memo, touched; an entry left with nothing is reclaimed.
    fn live_memo(&mut self, fp: Fingerprint, now_ms: u64) -> Option<usize> {
        self.guarded(None, |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(None);
            };
            if t.slots[idx].memo_live(now_ms) {
                t.touch(idx)?;
                return Ok(Some(idx));
            }
            t.reclaim_if_garbage(idx, now_ms)?;
            Ok(None)
        })
    }

    /// The memo epoch (see `Header::memo_epoch`), as the table holds it.
    pub fn memo_epoch(&self) -> u32 {
        self.hdr.memo_epoch
    }

    /// The memo epoch of the table in `region`, read without the zone's mutex (while a
    /// writer may hold it).
    ///
    /// # Safety
    /// `region` is a table's region (as for [`LockTable::attach_raw`]), mapped and aligned,
    /// whose header was laid out; the caller need not hold the mutex.
    pub unsafe fn memo_epoch_raw(region: *const u8) -> u32 {
        // SAFETY: (caller) the header is at the region's start, aligned for its u64 fields;
        // writers store the field atomically (`memo_changed`).
        unsafe {
            AtomicU32::from_ptr(region.add(std::mem::offset_of!(Header, memo_epoch)) as *mut u32)
                .load(Ordering::Acquire)
        }
    }

    /// A memo was cleared or shortened: copies read before must not be used.
    fn memo_changed(&mut self) {
        self.store_memo_epoch(self.hdr.memo_epoch.wrapping_add(1));
    }

    fn store_memo_epoch(&mut self, epoch: u32) {
        // SAFETY: the field is a live, aligned u32 this (mutex-holding) view may write;
        // readers without the mutex load it atomically.
        unsafe { AtomicU32::from_ptr(&mut self.hdr.memo_epoch).store(epoch, Ordering::Release) };
    }

    /// Remembers that `fp` is fresh until `fresh_until_ms`; a time not in the
    /// future clears the memo instead. Refreshes the key's LRU position.
    pub fn memo_set(&mut self, fp: Fingerprint, fresh_until_ms: u64, now_ms: u64) -> MemoOutcome {
        self.memo_set_born(fp, fresh_until_ms, None, now_ms)
    }

    /// [`LockTable::memo_set`], remembering too when the entry was born (ms, whole seconds
    /// before `fresh_until_ms`; `None`: not known), which [`LockTable::memo_get_born`] gives
    /// back while the memo lasts.
    pub fn memo_set_born(
        &mut self,
        fp: Fingerprint,
        fresh_until_ms: u64,
        born_ms: Option<u64>,
        now_ms: u64,
    ) -> MemoOutcome {
        if fresh_until_ms <= now_ms {
            self.memo_clear(fp, now_ms);
            return MemoOutcome::Stored;
        }
        self.guarded(MemoOutcome::Full, |t| {
            let Some((idx, evicted)) = t.entry(fp, now_ms)? else {
                return Ok(MemoOutcome::Full);
            };
            // Bumped first: a worker dying between the two leaves no shorter memo unbumped.
            if fresh_until_ms < t.slots[idx].fresh_until_ms {
                t.memo_changed();
            }
            t.slots[idx].set_memo(fresh_until_ms, born_ms);
            Ok(stored(evicted))
        })
    }

    /// Forgets the remembered freshness of `fp` (e.g. after a failed refresh).
    pub fn memo_clear(&mut self, fp: Fingerprint, now_ms: u64) {
        // Even when the table holds no memo of `fp` (evicted): a worker may keep a copy.
        self.memo_changed();
        self.guarded((), |t| {
            if let Some(idx) = t.find(fp)? {
                t.slots[idx].set_memo(0, None);
                t.reclaim_if_garbage(idx, now_ms)?;
            }
            Ok(())
        })
    }

    /// Marks `fp` "pass" for `duration_ms` (hit-for-miss): its last fill was
    /// not stored, so until the mark expires `Fill` attempts get
    /// [`LockAttempt::Pass`] and go to the backend in parallel instead of
    /// queueing behind one another. Replaces the memory of an earlier store;
    /// 0 clears the mark. Refreshes the key's LRU position. Like memos, marks
    /// are never reclaimed while live but may be evicted when the zone is full
    /// (then fills collapse again, which is slower, not wrong).
    pub fn pass_set(&mut self, fp: Fingerprint, duration_ms: u64, now_ms: u64) -> MemoOutcome {
        if duration_ms == 0 {
            self.pass_clear(fp, now_ms);
            return MemoOutcome::Stored;
        }
        self.guarded(MemoOutcome::Full, |t| {
            let Some((idx, evicted)) = t.entry(fp, now_ms)? else {
                return Ok(MemoOutcome::Full);
            };
            t.slots[idx].set_fill(FILL_PASS, now_ms.saturating_add(duration_ms));
            Ok(stored(evicted))
        })
    }

    /// Milliseconds the pass mark of `fp` has left (at least 1), if it is
    /// live. Refreshes the key's LRU position when it is.
    pub fn pass_left_ms(&mut self, fp: Fingerprint, now_ms: u64) -> Option<u64> {
        self.guarded(None, |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(None);
            };
            if let Some(left) = t.slots[idx].pass_left(now_ms) {
                t.touch(idx)?;
                return Ok(Some(left));
            }
            t.reclaim_if_garbage(idx, now_ms)?;
            Ok(None)
        })
    }

    /// Ends the pass mark of `fp` early, e.g. when a passed request's answer
    /// turned out cacheable and was stored.
    pub fn pass_clear(&mut self, fp: Fingerprint, now_ms: u64) {
        self.guarded((), |t| {
            if let Some(idx) = t.find(fp)? {
                let slot = &mut t.slots[idx];
                if slot.fill == FILL_PASS {
                    slot.set_fill(FILL_NONE, 0);
                }
                t.reclaim_if_garbage(idx, now_ms)?;
            }
            Ok(())
        })
    }

    /// Records a failed fill or refresh of `fp`: an error mark for `backoff(failures)`
    /// milliseconds, `failures` counting this one and the ones before it that are still
    /// remembered (see [`ERROR_MEMORY_MS`]). Replaces a pass mark or the memory of a store.
    /// Returns the mark's duration, or `None` when there is no room.
    pub fn error_mark(
        &mut self,
        fp: Fingerprint,
        now_ms: u64,
        backoff: impl FnOnce(u8) -> u64,
    ) -> Option<u64> {
        self.guarded(None, |t| {
            let Some((idx, _)) = t.entry(fp, now_ms)? else {
                return Ok(None);
            };
            let slot = &mut t.slots[idx];
            let before = if slot.failures_kept(now_ms) {
                slot.failures
            } else {
                0
            };
            let failures = before.saturating_add(1);
            let duration = backoff(failures);
            slot.set_fill(FILL_ERROR, now_ms.saturating_add(duration));
            slot.failures = failures;
            Ok(Some(duration))
        })
    }

    /// Milliseconds the error mark of `fp` has left (at least 1), if it is live.
    pub fn error_left_ms(&mut self, fp: Fingerprint, now_ms: u64) -> Option<u64> {
        self.guarded(None, |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(None);
            };
            let left = t.slots[idx].error_left(now_ms);
            if left.is_some() {
                t.touch(idx)?;
            } else {
                t.reclaim_if_garbage(idx, now_ms)?;
            }
            Ok(left)
        })
    }

    /// Forgets what the table knows of `fp`'s entry (a purge): its memo, its
    /// pass mark and the memory of its last store. A held lock stays: its
    /// holder releases it and its waiters depend on it. Returns what was live.
    pub fn forget(&mut self, fp: Fingerprint, now_ms: u64) -> Forgotten {
        self.memo_changed();
        self.guarded(Forgotten::default(), |t| {
            let Some(idx) = t.find(fp)? else {
                return Ok(Forgotten::default());
            };
            let slot = &mut t.slots[idx];
            let gone = Forgotten {
                memo: slot.memo_live(now_ms),
                pass_mark: slot.pass_left(now_ms).is_some(),
                locked: slot.live_lock(now_ms).is_some(),
            };
            slot.set_memo(0, None);
            slot.set_fill(FILL_NONE, 0);
            t.reclaim_if_garbage(idx, now_ms)?;
            Ok(gone)
        })
    }

    /// Checks every invariant (about linear time, even on garbage): each
    /// entry findable, counts and the LRU list consistent, no damage recorded.
    /// `Zone` runs it when a reload reuses a region, rebuilding it on error.
    pub fn verify(&self) -> Result<(), LayoutError> {
        let corrupt = |what| Err(LayoutError::Corrupt(what));
        if let Some(err) = self.damage() {
            return Err(err);
        }
        let h = &*self.hdr;
        let n = self.slots.len();
        if h.max_entries as usize != max_entries(n) || h.entries > h.max_entries {
            return corrupt("entry count");
        }
        // Linear, not a probe per entry (quadratic on a damaged region, which a
        // reload would wait for with the mutex held). Walked from an empty slot,
        // so no run of entries wraps around the walk's start.
        let Some(empty) = self.slots.iter().position(|s| s.used == 0) else {
            return corrupt("no empty slot");
        };
        let mut used = 0;
        // Fingerprints of the entries sharing the current home slot: Robin Hood
        // order keeps them adjacent, so a duplicate (unreachable) is among them.
        let mut group: Vec<(u64, u32)> = Vec::new();
        let mut group_home = usize::MAX;
        let duplicate = |group: &mut Vec<(u64, u32)>| {
            group.sort_unstable();
            let dup = group.windows(2).any(|w| w[0] == w[1]);
            group.clear();
            dup
        };
        for step in 1..=n {
            let idx = (empty + step) % n;
            let slot = &self.slots[idx];
            match slot.used {
                0 => {
                    if duplicate(&mut group) {
                        return corrupt("duplicated entry");
                    }
                    continue;
                }
                USED => used += 1,
                _ => return corrupt("slot state"),
            }
            // An entry away from home follows an entry at most one step nearer
            // its own home: by induction every slot from its home on is used and
            // far enough from home that a probe walks on to it.
            let dist = self.distance(idx);
            let prev = self.prev(idx);
            if dist > 0 && (self.slots[prev].used != USED || self.distance(prev) + 1 < dist) {
                return corrupt("entry not findable");
            }
            let home = self.home(slot.fingerprint());
            if home != group_home {
                if duplicate(&mut group) {
                    return corrupt("duplicated entry");
                }
                group_home = home;
            }
            group.push((slot.fp_hi, slot.fp_lo));
            let unlocked_clean = slot.kind == KIND_NONE
                && slot.token == 0
                && slot.lock_expires_ms == 0
                && slot.owner_pid == 0;
            if !unlocked_clean && (LockKind::from_raw(slot.kind).is_none() || slot.token == 0) {
                return corrupt("lock state");
            }
            match slot.fill {
                FILL_NONE if slot.fill_ms != 0 => return corrupt("fill state"),
                FILL_NONE | FILL_STORED | FILL_PASS if slot.failures != 0 => {
                    return corrupt("failure count")
                }
                FILL_NONE | FILL_STORED | FILL_PASS | FILL_ERROR => {}
                _ => return corrupt("fill state"),
            }
        }
        if used != h.entries as usize {
            return corrupt("entry count");
        }
        let mut count = 0;
        let mut prev = NIL;
        let mut cur = h.lru_head;
        while cur != NIL {
            let Some(slot) = self.slots.get(cur as usize) else {
                return corrupt("LRU link out of range");
            };
            count += 1;
            if slot.used != USED || slot.lru_prev != prev || count > n {
                return corrupt("LRU list");
            }
            prev = cur;
            cur = slot.lru_next;
        }
        if prev != h.lru_tail || count != used {
            return corrupt("LRU list length");
        }
        Ok(())
    }

    /* ---------------------------------------------------------- internals */

    fn home(&self, fp: Fingerprint) -> usize {
        // Maps the high half uniformly onto 0..n without a division.
        ((u128::from(fp.hi) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, idx: usize) -> usize {
        if idx + 1 == self.slots.len() {
            0
        } else {
            idx + 1
        }
    }

    fn prev(&self, idx: usize) -> usize {
        if idx == 0 {
            self.slots.len() - 1
        } else {
            idx - 1
        }
    }

    /// How far the entry in `idx` sits from its home slot.
    fn distance(&self, idx: usize) -> usize {
        let home = self.home(self.slots[idx].fingerprint());
        if idx >= home {
            idx - home
        } else {
            idx + self.slots.len() - home
        }
    }

    /// Robin Hood order keeps entries of a run sorted by home slot, so the
    /// search for an absent key ends at the first entry closer to its home
    /// than the key would be. At most one lap: the load limit keeps a slot
    /// empty, so a longer search means damage.
    fn probe(&self, fp: Fingerprint) -> Result<Probe, Damage> {
        let mut idx = self.home(fp);
        for dist in 0..self.slots.len() {
            let slot = &self.slots[idx];
            if slot.used != USED || self.distance(idx) < dist {
                return Ok(Probe::Vacant(idx));
            }
            if slot.fp_hi == fp.hi && slot.fp_lo == fp.lo {
                return Ok(Probe::Found(idx));
            }
            idx = self.next(idx);
        }
        Err(Damage::Endless)
    }

    fn find(&self, fp: Fingerprint) -> Result<Option<usize>, Damage> {
        Ok(match self.probe(fp)? {
            Probe::Found(idx) => Some(idx),
            Probe::Vacant(_) => None,
        })
    }

    /// The entry of `fp`, added if absent, as most recently used; with the
    /// live entries evicted to make room. `None` when full.
    fn entry(&mut self, fp: Fingerprint, now_ms: u64) -> Result<Option<(usize, u64)>, Damage> {
        if let Some(idx) = self.find(fp)? {
            self.touch(idx)?;
            return Ok(Some((idx, 0)));
        }
        self.insert(fp, now_ms)
    }

    /// Adds an absent key as most recently used, making room first. Returns
    /// its slot and how many live entries were evicted, `None` when full.
    fn insert(&mut self, fp: Fingerprint, now_ms: u64) -> Result<Option<(usize, u64)>, Damage> {
        let Some(evicted) = self.make_room(now_ms)? else {
            self.hdr.full = self.hdr.full.wrapping_add(1);
            return Ok(None);
        };
        let at = match self.probe(fp)? {
            Probe::Found(idx) => return Ok(Some((idx, evicted))),
            Probe::Vacant(idx) => idx,
        };
        // Shift the rest of the run one slot on, from its end backwards. Below
        // the load limit an empty slot ends the run within one lap.
        let mut end = at;
        let mut steps = 0;
        while self.slots[end].used == USED {
            end = self.next(end);
            steps += 1;
            if steps == self.slots.len() {
                return Err(Damage::Endless);
            }
        }
        while end != at {
            let from = self.prev(end);
            self.move_slot(from, end)?;
            end = from;
        }
        self.slots[at] = Slot {
            fp_hi: fp.hi,
            fp_lo: fp.lo,
            used: USED,
            ..Slot::EMPTY
        };
        self.lru_push_front(at)?;
        self.hdr.entries += 1;
        Ok(Some((at, evicted)))
    }

    /// Drops least recently used entries without a live lock until one more
    /// entry fits. Locked entries met on the way move to the front, so the
    /// next search does not walk past them again. `None`: all are locked.
    /// Each round removes an entry or skips one, so the rounds are bounded by
    /// the slot count whatever the header says.
    fn make_room(&mut self, now_ms: u64) -> Result<Option<u64>, Damage> {
        let mut evicted = 0;
        let mut skipped = 0;
        let mut rounds = 0;
        while self.hdr.entries >= self.hdr.max_entries {
            rounds += 1;
            if rounds > 2 * self.slots.len() {
                return Err(Damage::Count);
            }
            let tail = self.hdr.lru_tail;
            if tail == NIL || self.slots[tail as usize].used != USED {
                return Err(Damage::Link);
            }
            let tail = tail as usize;
            if self.slots[tail].live_lock(now_ms).is_some() {
                if skipped >= self.hdr.entries {
                    return Ok(None);
                }
                self.touch(tail)?;
                skipped += 1;
                continue;
            }
            if self.slots[tail].is_garbage(now_ms) {
                self.hdr.reclaimed = self.hdr.reclaimed.wrapping_add(1);
            } else {
                self.hdr.evictions = self.hdr.evictions.wrapping_add(1);
                evicted += 1;
            }
            self.remove(tail)?;
        }
        Ok(Some(evicted))
    }

    fn reclaim_if_garbage(&mut self, idx: usize, now_ms: u64) -> Result<(), Damage> {
        if self.slots[idx].is_garbage(now_ms) {
            self.hdr.reclaimed = self.hdr.reclaimed.wrapping_add(1);
            self.remove(idx)?;
        }
        Ok(())
    }

    /// Deletes the entry in `idx`, then pulls the following entries of its run
    /// one slot back until one is at home or a slot is empty, so no tombstone
    /// is left and every remaining entry stays reachable from its home. An
    /// intact table ends the run within one lap.
    fn remove(&mut self, idx: usize) -> Result<(), Damage> {
        self.lru_unlink(idx)?;
        self.hdr.entries = self.hdr.entries.checked_sub(1).ok_or(Damage::Count)?;
        let mut hole = idx;
        for _ in 0..self.slots.len() {
            let next = self.next(hole);
            if self.slots[next].used != USED || self.distance(next) == 0 {
                self.slots[hole] = Slot::EMPTY;
                return Ok(());
            }
            self.move_slot(next, hole)?;
            hole = next;
        }
        Err(Damage::Endless)
    }

    /// The LRU neighbours of the entry in `idx`, checked to link back to it,
    /// so no update follows a link a crashed writer left dangling.
    fn lru_links(&self, idx: usize) -> Result<(u32, u32), Damage> {
        let Slot {
            lru_prev, lru_next, ..
        } = self.slots[idx];
        let idx = idx as u32;
        let back = match lru_prev {
            NIL => self.hdr.lru_head,
            prev => self.linked(prev)?.lru_next,
        };
        let forth = match lru_next {
            NIL => self.hdr.lru_tail,
            next => self.linked(next)?.lru_prev,
        };
        if back != idx || forth != idx {
            return Err(Damage::Link);
        }
        Ok((lru_prev, lru_next))
    }

    /// The entry an LRU link points at, if it is one.
    fn linked(&self, link: u32) -> Result<&Slot, Damage> {
        match self.slots.get(link as usize) {
            Some(slot) if slot.used == USED => Ok(slot),
            _ => Err(Damage::Link),
        }
    }

    /// Moves an entry to the empty slot `to`, re-pointing its LRU neighbours.
    fn move_slot(&mut self, from: usize, to: usize) -> Result<(), Damage> {
        let (prev, next) = self.lru_links(from)?;
        self.slots[to] = self.slots[from];
        self.slots[from].used = 0;
        let to32 = to as u32;
        match prev {
            NIL => self.hdr.lru_head = to32,
            prev => self.slots[prev as usize].lru_next = to32,
        }
        match next {
            NIL => self.hdr.lru_tail = to32,
            next => self.slots[next as usize].lru_prev = to32,
        }
        Ok(())
    }

    fn lru_unlink(&mut self, idx: usize) -> Result<(), Damage> {
        let (prev, next) = self.lru_links(idx)?;
        match prev {
            NIL => self.hdr.lru_head = next,
            prev => self.slots[prev as usize].lru_next = next,
        }
        match next {
            NIL => self.hdr.lru_tail = prev,
            next => self.slots[next as usize].lru_prev = prev,
        }
        self.slots[idx].lru_prev = NIL;
        self.slots[idx].lru_next = NIL;
        Ok(())
    }

    fn lru_push_front(&mut self, idx: usize) -> Result<(), Damage> {
        let head = self.hdr.lru_head;
        if head != NIL && self.linked(head)?.lru_prev != NIL {
            return Err(Damage::Link);
        }
        self.slots[idx].lru_prev = NIL;
        self.slots[idx].lru_next = head;
        match head {
            NIL => self.hdr.lru_tail = idx as u32,
            head => self.slots[head as usize].lru_prev = idx as u32,
        }
        self.hdr.lru_head = idx as u32;
        Ok(())
    }

    fn touch(&mut self, idx: usize) -> Result<(), Damage> {
        if self.hdr.lru_head != idx as u32 {
            self.lru_unlink(idx)?;
            self.lru_push_front(idx)?;
        }
        Ok(())
    }
}

fn stored(evicted: u64) -> MemoOutcome {
    match evicted {
        0 => MemoOutcome::Stored,
        n => MemoOutcome::StoredEvicted(n),
    }
}

const fn max_entries(slots: usize) -> usize {
    // Split so the product cannot overflow a 32-bit usize.
    let by_load = slots / 100 * MAX_LOAD_PERCENT + slots % 100 * MAX_LOAD_PERCENT / 100;
    // At least one empty slot, so every probe sequence ends.
    if by_load >= slots {
        slots.saturating_sub(1)
    } else {
        by_load
    }
}

/* ------------------------------------------------------------------- tests */

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip128::SipHasher24;
    use std::collections::HashMap;

    /// An 8-byte aligned region, as nginx's shared memory is.
    struct Region(Vec<u64>);

    impl Region {
        fn new(len: usize) -> Region {
            Region(vec![0; len.div_ceil(8)])
        }

        fn with_slots(slots: usize) -> Region {
            Region::new(HEADER_SIZE + slots * SLOT_SIZE)
        }

        fn bytes(&mut self) -> &mut [u8] {
            let len = self.0.len() * 8;
            // SAFETY: the Vec owns len initialised bytes; u8 has no alignment
            // requirement and the borrow of self keeps them exclusive.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
        }

        fn init(&mut self, seed: u64) -> LockTable<'_> {
            LockTable::init(self.bytes(), seed).unwrap()
        }

        fn attach(&mut self) -> LockTable<'_> {
            LockTable::attach(self.bytes()).unwrap()
        }
    }

    fn token(t: u64) -> NonZeroU64 {
        NonZeroU64::new(t).unwrap()
    }

    fn key(n: u64) -> Fingerprint {
        Fingerprint::of(42, format!("key-{n}").as_bytes())
    }

    /// A fingerprint whose home slot in an `n`-slot table is `home`.
    fn fp_at(n: usize, home: usize, tag: u64) -> Fingerprint {
        let hi = ((home as u128) << 64).div_ceil(n as u128) as u64;
        Fingerprint { hi, lo: tag as u32 }
    }

    impl LockTable<'_> {
        fn len(&self) -> usize {
            self.hdr.entries as usize
        }

        fn is_empty(&self) -> bool {
            self.len() == 0
        }

        fn capacity(&self) -> usize {
            self.hdr.max_entries as usize
        }

        fn slots(&self) -> usize {
            self.slots.len()
        }

        fn evictions(&self) -> u64 {
            self.hdr.evictions
        }

        /// The slot of `fp`, on a table known to be intact.
        fn at(&self, fp: Fingerprint) -> Option<usize> {
            self.find(fp).unwrap()
        }

        /// Live locks and memos, by a full scan.
        fn live(&self, now: u64) -> (usize, usize) {
            let used = self.slots.iter().filter(|s| s.used == USED);
            used.fold((0, 0), |(locks, memos), s| {
                (
                    locks + usize::from(s.live_lock(now).is_some()),
                    memos + usize::from(s.memo_live(now)),
                )
            })
        }
    }

    fn lru_order(t: &LockTable<'_>) -> Vec<Fingerprint> {
        let mut out = Vec::new();
        let mut cur = t.hdr.lru_head;
        while cur != NIL {
            out.push(t.slots[cur as usize].fingerprint());
            cur = t.slots[cur as usize].lru_next;
        }
        out
    }

    /// Small deterministic PRNG (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const FILL: LockKind = LockKind::Fill;
    const REFRESH: LockKind = LockKind::Refresh;

    /* ------------------------------------------------------------- hash */

    fn siphash24_128(k0: u64, k1: u64, data: &[u8]) -> Vec<u8> {
        let mut hasher = SipHasher24::new_with_keys(k0, k1);
        hasher.write(data);
        hasher.finish128().as_bytes().to_vec()
    }

    #[test]
    fn siphash_reference_vectors() {
        // Key 00..0f, message 00..len-1 (vectors_sip128 of the reference code). Pins the
        // crate's 2-4 output, which the hot tier's fingerprint (`hotcache`) uses: a change
        // would silently re-key every table that survives a reload.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..64).collect();
        let cases: [(usize, [u8; 16]); 8] = [
            (
                0,
                [
                    0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7,
                    0x55, 0x02, 0x93,
                ],
            ),
            (
                1,
                [
                    0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b,
                    0x22, 0xfc, 0x45,
                ],
            ),
            (
                2,
                [
                    0x81, 0x77, 0x22, 0x8d, 0xa4, 0xa4, 0x5d, 0xc7, 0xfc, 0xa3, 0x8b, 0xde, 0xf6,
                    0x0a, 0xff, 0xe4,
                ],
            ),
            (
                7,
                [
                    0xa1, 0xf1, 0xeb, 0xbe, 0xd8, 0xdb, 0xc1, 0x53, 0xc0, 0xb8, 0x4a, 0xa6, 0x1f,
                    0xf0, 0x82, 0x39,
                ],
            ),
            (
                8,
                [
                    0x3b, 0x62, 0xa9, 0xba, 0x62, 0x58, 0xf5, 0x61, 0x0f, 0x83, 0xe2, 0x64, 0xf3,
                    0x14, 0x97, 0xb4,
                ],
            ),
            (
                15,
                [
                    0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97,
                    0xcf, 0xc3, 0xd9,
                ],
            ),
            (
                16,
                [
                    0x6e, 0xe2, 0xa4, 0xca, 0x67, 0xb0, 0x54, 0xbb, 0xfd, 0x33, 0x15, 0xbf, 0x85,
                    0x23, 0x05, 0x77,
                ],
            ),
            (
                63,
                [
                    0x51, 0x50, 0xd1, 0x77, 0x2f, 0x50, 0x83, 0x4a, 0x50, 0x3e, 0x06, 0x9a, 0x97,
                    0x3f, 0xbd, 0x7c,
                ],
            ),
        ];
        for (len, expected) in cases {
            assert_eq!(siphash24_128(k0, k1, &msg[..len]), expected, "len {len}");
        }
    }

    fn siphash13_128(k0: u64, k1: u64, data: &[u8]) -> Vec<u8> {
        let mut hasher = SipHasher13::new_with_keys(k0, k1);
        hasher.write(data);
        hasher.finish128().as_bytes().to_vec()
    }

    #[test]
    fn siphash13_reference_vectors() {
        // The fingerprint's hash. Same key and messages as above; the values come from a
        // separate implementation written from the SipHash paper (1 compression round, 3
        // finalization rounds, 128-bit output), which reproduces the 2-4 vectors above.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..64).collect();
        let cases: [(usize, [u8; 16]); 8] = [
            (
                0,
                [
                    0xe7, 0x7e, 0xbc, 0xb2, 0x27, 0x88, 0xa5, 0xbe, 0xfd, 0x62, 0xdb, 0x6a, 0xdd,
                    0x30, 0x30, 0x01,
                ],
            ),
            (
                1,
                [
                    0xfc, 0x6f, 0x37, 0x04, 0x60, 0xd3, 0xed, 0xa8, 0x5e, 0x05, 0x73, 0xcc, 0x2b,
                    0x2f, 0xf0, 0x63,
                ],
            ),
            (
                2,
                [
                    0x75, 0x78, 0x7f, 0x09, 0x05, 0x69, 0x83, 0x9b, 0x85, 0x5b, 0xc9, 0x54, 0x8c,
                    0x6a, 0xea, 0x95,
                ],
            ),
            (
                7,
                [
                    0x10, 0x84, 0xb9, 0x23, 0xf2, 0xaa, 0xe0, 0xc3, 0xa6, 0x2f, 0x2e, 0xc8, 0x08,
                    0x48, 0xab, 0x77,
                ],
            ),
            (
                8,
                [
                    0xaa, 0x12, 0xfe, 0xe1, 0xd5, 0xe3, 0xda, 0xb4, 0x72, 0x4f, 0x16, 0xab, 0x35,
                    0xf9, 0xc7, 0x99,
                ],
            ),
            (
                15,
                [
                    0xc1, 0x7e, 0x55, 0x05, 0xb2, 0xbd, 0x52, 0x6c, 0x29, 0x21, 0xcd, 0xec, 0x1e,
                    0x7e, 0x01, 0x09,
                ],
            ),
            (
                16,
                [
                    0xd0, 0xa8, 0xd9, 0x57, 0x15, 0x51, 0x8e, 0xeb, 0xb5, 0x13, 0xb0, 0xf8, 0x3d,
                    0x9e, 0x17, 0x93,
                ],
            ),
            (
                63,
                [
                    0x4c, 0x58, 0x00, 0xe3, 0x4e, 0xfe, 0x42, 0x6f, 0x07, 0x9f, 0x6b, 0x0a, 0xa7,
                    0x52, 0x60, 0xad,
                ],
            ),
        ];
        for (len, expected) in cases {
            assert_eq!(siphash13_128(k0, k1, &msg[..len]), expected, "len {len}");
        }
    }

    #[test]
    fn fingerprint_values_are_pinned() {
        // SipHash-1-3-128 of the key under (seed, seed rotated ^ "staleKey"), from the same
        // separate implementation, of which the fingerprint keeps 96 bits: a change of hash,
        // key derivation or width must bump LAYOUT_VERSION, since a region outlives the
        // build that made it.
        let f = Fingerprint::of(0x0123_4567_89ab_cdef, b"GET|example.com|/api/items?page=2");
        assert_eq!((f.hi, f.lo), (0x47d2_ed87_e0bb_0a9d, 0x7816_0312));
        let f = Fingerprint::of(0, b"");
        assert_eq!((f.hi, f.lo), (0xfa4a_25ad_a513_035b, 0x17af_d2c1));
    }

    #[test]
    fn fingerprints_depend_on_seed_and_key_only() {
        assert_eq!(Fingerprint::of(7, b"abc"), Fingerprint::of(7, b"abc"));
        assert_ne!(Fingerprint::of(7, b"abc"), Fingerprint::of(8, b"abc"));
        assert_ne!(Fingerprint::of(7, b"abc"), Fingerprint::of(7, b"abd"));
        assert_ne!(Fingerprint::of(7, b""), Fingerprint::of(7, b"\0"));
        let big = vec![b'x'; 4096];
        assert_eq!(Fingerprint::of(1, &big), Fingerprint::of(1, &big));
        // No collisions among many similar keys.
        let mut seen = HashMap::new();
        for n in 0..50_000u64 {
            assert!(seen.insert(key(n), n).is_none());
        }
    }

    /* ----------------------------------------------------------- layout */

    #[test]
    fn capacity_targets_for_one_mib() {
        const MIB: usize = 1 << 20;
        assert_eq!(LockTable::bytes_per_slot(), 64);
        assert_eq!(LockTable::slots_for_len(MIB), (MIB - HEADER_SIZE) / 64);
        let cap = LockTable::capacity_for_len(MIB);
        assert!(cap >= 10_000, "capacity {cap}");

        // 10,000 memos fit without evicting anything and all stay findable.
        let mut region = Region::new(MIB);
        let mut t = region.init(99);
        assert_eq!(t.capacity(), cap);
        for n in 0..10_000 {
            assert_eq!(t.memo_set(key(n), 5_000, 1_000), MemoOutcome::Stored);
        }
        for n in 0..10_000 {
            assert_eq!(t.memo_get(key(n), 1_000), Some(5_000));
        }
        assert_eq!(t.stats().evictions, 0);
        assert_eq!(t.live(1_000).1, 10_000);
        t.verify().unwrap();

        // 4,000 concurrent locks (and in fact `cap`) fit as well.
        let mut t = region.init(99);
        for n in 0..cap as u64 {
            let out = t.try_lock(key(n), FILL, token(n + 1), 30_000, 0, 1_000);
            assert_eq!(
                out,
                LockOutcome::Acquired {
                    took_over_expired: false
                }
            );
        }
        assert!(t.live(1_000).0 >= 4_000);
        assert_eq!(
            t.try_lock(key(u64::MAX), FILL, token(1), 30_000, 0, 1_000),
            LockOutcome::Full
        );
        t.verify().unwrap();
    }

    #[test]
    fn init_rejects_small_or_misaligned_regions() {
        let mut region = Region::new(LockTable::min_region_len());
        let short = LockTable::min_region_len() - 1;
        assert!(matches!(
            LockTable::init(&mut region.bytes()[..short], 1),
            Err(LayoutError::TooSmall { .. })
        ));
        let mut region = Region::new(LockTable::min_region_len() + 8);
        assert!(LockTable::init(region.bytes(), 1).is_ok());
        assert_eq!(
            LockTable::init(&mut region.bytes()[4..], 1).err(),
            Some(LayoutError::Misaligned)
        );
    }

    #[test]
    fn attach_validates_the_header() {
        let mut region = Region::with_slots(64);
        assert_eq!(
            LockTable::attach(region.bytes()).err(),
            Some(LayoutError::BadMagic)
        );
        region.init(5).memo_set(key(1), 100, 1);
        {
            let t = region.attach();
            assert_eq!(t.seed(), 5);
            assert_eq!(t.len(), 1);
            t.verify().unwrap();
        }
        // A region of another size (e.g. the zone was resized).
        let len = region.bytes().len();
        assert_eq!(
            LockTable::attach(&mut region.bytes()[..len - SLOT_SIZE]).err(),
            Some(LayoutError::SizeMismatch {
                found: 64,
                expected: 63
            })
        );
        // Another layout version.
        region.bytes()[8] = 9;
        assert_eq!(
            LockTable::attach(region.bytes()).err(),
            Some(LayoutError::Version { found: 9 })
        );
        region.bytes()[8] = LAYOUT_VERSION as u8;
        // Another slot size.
        region.bytes()[12] = 32;
        assert!(matches!(
            LockTable::attach(region.bytes()),
            Err(LayoutError::Version { .. })
        ));
        region.bytes()[12] = SLOT_SIZE as u8;
        assert!(LockTable::attach(region.bytes()).is_ok());
        // Inconsistent counts.
        region.bytes()[28] = 200; // entries
        assert!(matches!(
            LockTable::attach(region.bytes()),
            Err(LayoutError::Corrupt(_))
        ));
        // A worker that saw the layout before checks what operations change just the same.
        assert!(matches!(
            LockTable::reattach(region.bytes()),
            Err(LayoutError::Corrupt(_))
        ));
    }

    #[test]
    fn verify_detects_damage() {
        let mut region = Region::with_slots(64);
        {
            let mut t = region.init(5);
            for n in 0..20 {
                t.memo_set(key(n), 100, 1);
            }
            t.verify().unwrap();
            // Give an entry a home half the table away: unreachable.
            let idx = t.at(key(3)).unwrap();
            let saved = t.slots[idx].fp_hi;
            t.slots[idx].fp_hi = fp_at(64, (idx + 32) % 64, 0).hi;
            assert!(t.verify().is_err());
            t.slots[idx].fp_hi = saved;
            t.verify().unwrap();
            // A slot state that is neither empty nor used.
            t.slots[idx].used = 7;
            assert!(t.verify().is_err());
            t.slots[idx].used = USED;
            // Break an LRU link.
            let head = t.hdr.lru_head as usize;
            t.slots[head].lru_next = NIL;
            assert!(t.verify().is_err());
        }
    }

    #[test]
    fn raw_constructors_match_slice_ones() {
        let mut region = Region::with_slots(32);
        let bytes = region.bytes();
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        // SAFETY: the region is live and not otherwise borrowed meanwhile.
        let mut t = unsafe { LockTable::init_raw(ptr, len, 3) }.unwrap();
        t.memo_set(key(1), 10, 0);
        // SAFETY: as above; `t` is no longer used.
        let t = unsafe { LockTable::attach_raw(ptr, len) }.unwrap();
        assert_eq!(t.seed(), 3);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn two_workers_share_one_region() {
        let mut region = Region::with_slots(256);
        let seed = 0x1234_5678_9abc_def0;
        let key_bytes = b"Mozilla/5.0|/api/items?page=2";
        {
            // Worker A, at startup.
            let mut a = region.init(seed);
            let fp = a.fingerprint(key_bytes);
            assert_eq!(
                a.try_lock(fp, FILL, token(11), 30_000, 0, 1_000),
                LockOutcome::Acquired {
                    took_over_expired: false
                }
            );
        }
        {
            // Worker B attaches later and computes the same fingerprint itself.
            let mut b = region.attach();
            let fp = Fingerprint::of(b.seed(), key_bytes);
            assert_eq!(
                b.try_lock(fp, FILL, token(22), 30_000, 0, 1_001),
                LockOutcome::Held(LockInfo {
                    kind: FILL,
                    token: token(11),
                    owner_pid: 0,
                    expires_at_ms: 31_000
                })
            );
            assert!(!b.unlock(fp, token(22), 1_002, true));
        }
        {
            let mut a = region.attach();
            let fp = a.fingerprint(key_bytes);
            assert!(a.unlock(fp, token(11), 1_500, true));
        }
        // Same operations on another region with the same seed: same bytes.
        let mut other = Region::with_slots(256);
        {
            let mut a = other.init(seed);
            let fp = a.fingerprint(key_bytes);
            a.try_lock(fp, FILL, token(11), 30_000, 0, 1_000);
            a.try_lock(fp, FILL, token(22), 30_000, 0, 1_001);
            a.unlock(fp, token(11), 1_500, true);
        }
        assert_eq!(region.0, other.0);
    }

    /* ------------------------------------------------------------ locks */

    #[test]
    fn table_fingerprint_matches_the_free_function() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(0xabc);
        let raw: &[u8] = b"UA|/page";
        let fp = Fingerprint::of(0xabc, raw);
        assert_eq!(t.fingerprint(raw), fp);
        assert!(matches!(
            t.try_lock(t.fingerprint(raw), FILL, token(5), 1_000, 0, 0),
            LockOutcome::Acquired { .. }
        ));
        assert_eq!(t.lock_state(fp, 1).unwrap().token, token(5));
        assert!(t.unlock(fp, token(5), 3, false));
        assert!(t.is_empty());
    }

    #[test]
    fn only_the_owner_unlocks() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        assert_eq!(
            t.try_lock(k, FILL, token(7), 1_000, 0, 100),
            LockOutcome::Acquired {
                took_over_expired: false
            }
        );
        assert!(!t.unlock(k, token(8), 200, true));
        assert!(!t.unlock(key(2), token(7), 200, true));
        assert_eq!(t.lock_state(k, 200).unwrap().token, token(7));
        assert!(t.unlock(k, token(7), 200, false));
        assert_eq!(t.lock_state(k, 200), None);
        assert!(!t.unlock(k, token(7), 200, false), "released twice");
        // An unfilled release leaves nothing behind.
        assert!(t.is_empty());
        t.verify().unwrap();
    }

    #[test]
    fn held_reports_owner_kind_and_expiry() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock(k, REFRESH, token(3), 30_000, 0, 1_000);
        let held = LockOutcome::Held(LockInfo {
            kind: REFRESH,
            token: token(3),
            owner_pid: 0,
            expires_at_ms: 31_000,
        });
        assert_eq!(t.try_lock(k, FILL, token(4), 30_000, 0, 2_000), held);
        assert_eq!(
            t.try_lock(k, REFRESH, token(3), 30_000, 0, 2_000),
            held,
            "not re-entrant: the owner sees its own token"
        );
        assert_eq!(
            t.lock_state(k, 30_999),
            Some(LockInfo {
                kind: REFRESH,
                token: token(3),
                owner_pid: 0,
                expires_at_ms: 31_000
            })
        );
        assert_eq!(t.lock_state(k, 31_000), None);
        assert_eq!(t.lock_state(key(2), 0), None);
    }

    #[test]
    fn expired_locks_are_taken_over() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock(k, FILL, token(1), 100, 0, 1_000);
        assert!(matches!(
            t.try_lock(k, FILL, token(2), 100, 0, 1_099),
            LockOutcome::Held(_)
        ));
        assert_eq!(
            t.try_lock(k, FILL, token(2), 100, 0, 1_100),
            LockOutcome::Acquired {
                took_over_expired: true
            }
        );
        assert_eq!(t.stats().takeovers, 1);
        // The old owner can no longer release it.
        assert!(!t.unlock(k, token(1), 1_150, true));
        assert_eq!(t.lock_state(k, 1_150).unwrap().token, token(2));
        // An owner whose lock expired may still release it if nobody took it.
        assert!(t.unlock(k, token(2), 5_000, false));
        assert_eq!(
            t.try_lock(k, FILL, token(3), 100, 0, 5_000),
            LockOutcome::Acquired {
                took_over_expired: false
            }
        );
    }

    #[test]
    fn recently_filled_window() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock(k, FILL, token(1), 30_000, 900, 1_000);
        assert!(t.unlock(k, token(1), 1_200, true));
        // Lookups that started before the fill ended saw a stale "missing".
        for started in [1_000, 1_200] {
            assert_eq!(
                t.try_lock(k, FILL, token(2), 30_000, started, 1_300),
                LockOutcome::RecentlyFilled
            );
        }
        // A lookup started after it: the key is really missing again.
        assert_eq!(
            t.try_lock(k, FILL, token(2), 30_000, 1_201, 1_300),
            LockOutcome::Acquired {
                took_over_expired: false
            }
        );
        // A failed fill records nothing new.
        assert!(t.unlock(k, token(2), 1_400, false));
        assert_eq!(
            t.try_lock(k, FILL, token(3), 30_000, 1_300, 1_500),
            LockOutcome::Acquired {
                took_over_expired: false
            }
        );
        assert!(t.unlock(k, token(3), 1_600, true));
        // Refresh locks ignore fill history.
        assert_eq!(
            t.try_lock(k, REFRESH, token(4), 30_000, 0, 1_700),
            LockOutcome::Acquired {
                took_over_expired: false
            }
        );
        // A refresh that stored counts as a store: waiters for the key see it.
        assert!(t.unlock(k, token(4), 1_800, true));
        assert_eq!(t.last_store_ms(k, 1_850), Some(1_800));
        assert_eq!(t.last_store_ms(k, 1_800 + FILL_MEMORY_MS), None);
        assert_eq!(t.slots[t.at(k).unwrap()].fill_ms, 1_800);
        assert_eq!(
            t.try_lock(k, FILL, token(5), 30_000, 1_700, 1_900),
            LockOutcome::RecentlyFilled
        );
        // After the memory window the entry is garbage and goes away.
        assert_eq!(t.lock_state(k, 1_800 + FILL_MEMORY_MS), None);
        t.memo_get(k, 1_800 + FILL_MEMORY_MS);
        assert!(t.is_empty());
    }

    #[test]
    fn locks_are_never_evicted_and_full_is_reported() {
        let mut region = Region::with_slots(16);
        let mut t = region.init(1);
        let cap = t.capacity() as u64;
        assert_eq!(cap, 13);
        for n in 0..cap {
            assert!(matches!(
                t.try_lock(key(n), FILL, token(n + 1), 1_000, 0, 0),
                LockOutcome::Acquired { .. }
            ));
        }
        assert_eq!(t.memo_set(key(99), 500, 0), MemoOutcome::Full);
        assert_eq!(
            t.try_lock(key(99), REFRESH, token(1), 1_000, 0, 0),
            LockOutcome::Full
        );
        assert_eq!(t.stats().full, 2);
        for n in 0..cap {
            assert!(t.lock_state(key(n), 999).is_some());
        }
        // Expired locks make room again.
        assert_eq!(t.memo_set(key(99), 5_000, 1_000), MemoOutcome::Stored);
        assert_eq!(t.stats().reclaimed, 1);
        assert_eq!(t.stats().evictions, 0);
        t.verify().unwrap();
    }

    /* ------------------------------------------------------------ memos */

    #[test]
    fn memos_keep_the_entry_birth_in_their_slot() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        // Born 7 s before now (ms 10_000), fresh for 5 s more.
        assert_eq!(
            t.memo_set_born(k, 15_000, Some(3_000), 10_000),
            MemoOutcome::Stored
        );
        assert_eq!(t.memo_get_born(k, 12_345), Some((15_000, Some(3_000))));
        assert_eq!(t.memo_get(k, 12_345), Some(15_000));
        assert_eq!(t.len(), 1, "one slot for the memo and its age");
        // A memo set without it forgets it, as do a clear and a purge.
        t.memo_set(k, 16_000, 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((16_000, None)));
        t.memo_set_born(k, 15_000, Some(3_000), 10_000);
        t.memo_clear(k, 10_000);
        t.memo_set(k, 15_000, 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((15_000, None)));
        t.memo_set_born(k, 15_000, Some(3_000), 10_000);
        t.forget(k, 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), None);
        // Born at the memo's end, or more than u32 seconds before it.
        t.memo_set_born(k, 15_000, Some(15_000), 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((15_000, Some(15_000))));
        let far = 15_000 + (u64::from(u32::MAX) + 1) * 1000;
        t.memo_set_born(k, far, Some(15_000), 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((far, None)));
        // A birth after the memo's end is no birth.
        t.memo_set_born(k, 15_000, Some(16_000), 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((15_000, None)));
        // The birth moves with its slot (Robin Hood shifts, backward-shift deletion).
        for n in 2..40 {
            t.memo_set_born(key(n), 30_000 + n * 1000, Some(n * 1000), 10_000);
        }
        for n in (2..40).step_by(3) {
            t.memo_clear(key(n), 10_000);
        }
        for n in 2..40 {
            let want = (n % 3 != 2).then_some((30_000 + n * 1000, Some(n * 1000)));
            assert_eq!(t.memo_get_born(key(n), 10_000), want, "key {n}");
        }
        // Kept in whole seconds: a birth between two is remembered at the later one.
        t.memo_set_born(k, 15_000, Some(3_500), 10_000);
        assert_eq!(t.memo_get_born(k, 10_000), Some((15_000, Some(4_000))));
    }

    #[test]
    fn memo_expiry_and_clear() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        assert_eq!(t.memo_get(k, 0), None);
        assert_eq!(t.memo_set(k, 5_000, 1_000), MemoOutcome::Stored);
        assert_eq!(t.memo_get(k, 4_999), Some(5_000));
        assert_eq!(t.memo_get(k, 5_000), None);
        assert!(t.is_empty(), "expired memo reclaimed on read");
        t.memo_set(k, 9_000, 6_000);
        t.memo_clear(k, 6_000);
        assert_eq!(t.memo_get(k, 6_000), None);
        assert!(t.is_empty());
        // Setting a past time clears.
        t.memo_set(k, 9_000, 6_000);
        assert_eq!(t.memo_set(k, 6_000, 6_000), MemoOutcome::Stored);
        assert_eq!(t.memo_get(k, 6_000), None);
        // A memo and a lock share one entry; clearing one keeps the other.
        t.memo_set(k, 9_000, 6_000);
        t.try_lock(k, REFRESH, token(1), 1_000, 0, 6_000);
        t.memo_clear(k, 6_000);
        assert!(t.lock_state(k, 6_000).is_some());
        t.memo_set(k, 9_000, 6_000);
        assert!(t.unlock(k, token(1), 6_000, false));
        assert_eq!(t.memo_get(k, 6_000), Some(9_000));
        assert_eq!(t.len(), 1);
        t.verify().unwrap();
    }

    #[test]
    fn eviction_follows_lru_order() {
        let mut region = Region::with_slots(16);
        let mut t = region.init(1);
        let cap = t.capacity() as u64;
        for n in 0..cap {
            t.memo_set(key(n), 100_000, n);
        }
        // Touch 0 and 1: 2 is now the least recently used.
        assert!(t.memo_get(key(0), 100).is_some());
        t.memo_set(key(1), 100_000, 100);
        assert_eq!(
            t.memo_set(key(100), 100_000, 100),
            MemoOutcome::StoredEvicted(1)
        );
        assert_eq!(t.memo_get(key(2), 100), None);
        assert_eq!(
            t.memo_set(key(101), 100_000, 100),
            MemoOutcome::StoredEvicted(1)
        );
        assert_eq!(t.memo_get(key(3), 100), None);
        for n in [0, 1, 4, 100, 101] {
            assert!(t.memo_get(key(n), 100).is_some(), "key {n}");
        }
        assert_eq!(t.evictions(), 2);
        // try_lock touches too; a locked LRU entry is skipped, not evicted.
        let lru = lru_order(&t);
        let oldest = *lru.last().unwrap();
        assert!(matches!(
            t.try_lock(oldest, REFRESH, token(9), 50_000, 0, 100),
            LockOutcome::Acquired { .. }
        ));
        assert_eq!(lru_order(&t)[0], oldest);
        let next_oldest = lru[lru.len() - 2];
        t.memo_set(key(102), 100_000, 100);
        assert_eq!(t.at(next_oldest), None);
        assert!(t.at(oldest).is_some());
        t.verify().unwrap();
    }

    #[test]
    fn locked_tail_is_skipped_and_garbage_is_not_an_eviction() {
        let mut region = Region::with_slots(16);
        let mut t = region.init(1);
        let cap = t.capacity() as u64;
        // Oldest entry is locked, the next is an expired memo.
        t.try_lock(key(0), FILL, token(1), 10_000, 0, 0);
        t.memo_set(key(1), 10, 0);
        for n in 2..cap {
            t.memo_set(key(n), 100_000, 0);
        }
        assert_eq!(t.memo_set(key(50), 100_000, 20), MemoOutcome::Stored);
        assert!(t.lock_state(key(0), 20).is_some());
        assert_eq!(t.at(key(1)), None);
        let stats = t.stats();
        assert_eq!((stats.evictions, stats.reclaimed), (0, 1));
        // The skipped lock moved to the front: the next victim is key 2.
        assert_eq!(lru_order(&t)[0], key(50));
        assert_eq!(lru_order(&t)[1], key(0));
        assert_eq!(
            t.memo_set(key(51), 100_000, 20),
            MemoOutcome::StoredEvicted(1)
        );
        assert_eq!(t.at(key(2)), None);
        t.verify().unwrap();
    }

    /* ------------------------------------------------- owners and pass */

    fn req(kind: LockKind, tok: u64, pid: u32, ttl_ms: u64, started: u64) -> LockRequest {
        LockRequest {
            kind,
            owner: Owner {
                token: token(tok),
                pid,
            },
            ttl_ms,
            lookup_started_ms: started,
        }
    }

    fn alive(_pid: u32) -> bool {
        true
    }

    #[test]
    fn locks_record_their_owner_pid() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        assert_eq!(
            t.try_lock_as(k, req(FILL, 7, 4242, 1_000, 0), 100, alive),
            LockAttempt::Acquired(TakeOver::Free)
        );
        let held = LockInfo {
            kind: FILL,
            token: token(7),
            owner_pid: 4242,
            expires_at_ms: 1_100,
        };
        assert_eq!(t.lock_state(k, 200), Some(held));
        // The predicate is asked about the holder, once.
        let mut asked = Vec::new();
        let got = t.try_lock_as(k, req(FILL, 8, 5, 1_000, 0), 200, |pid| {
            asked.push(pid);
            true
        });
        assert_eq!(got, LockAttempt::Held(held));
        assert_eq!(asked, [4242]);
        // Not asked when nothing is held.
        assert!(t.unlock(k, token(7), 300, false));
        let got = t.try_lock_as(k, req(FILL, 9, 5, 1_000, 0), 300, |_| panic!("asked"));
        assert_eq!(got, LockAttempt::Acquired(TakeOver::Free));
        // An unlock clears the owner with the lock.
        assert!(t.unlock(k, token(9), 400, false));
        assert!(t.is_empty());
        t.verify().unwrap();
    }

    #[test]
    fn dead_owners_lose_their_locks() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock_as(k, req(FILL, 7, 4242, 30_000, 0), 100, alive);
        // A request finding the lock held takes it over from a dead owner.
        assert_eq!(
            t.try_lock_as(k, req(FILL, 8, 5, 30_000, 0), 200, |pid| pid != 4242),
            LockAttempt::Acquired(TakeOver::DeadOwner { pid: 4242 })
        );
        assert_eq!(t.lock_state(k, 200).unwrap().owner_pid, 5);
        assert!(
            !t.unlock(k, token(7), 250, true),
            "the dead owner's token is void"
        );
        assert_eq!(t.stats().dead_owners, 1);
        assert_eq!(t.stats().takeovers, 0, "not an expiry");
        // The waiters' poll releases instead; a live owner keeps it.
        assert!(!t.release_if_owner_dead(k, 300, alive));
        assert!(t.lock_state(k, 300).is_some());
        assert!(t.release_if_owner_dead(k, 300, |_| false));
        assert_eq!(t.lock_state(k, 300), None);
        assert_eq!(t.last_store_ms(k, 300), None, "nothing was stored");
        assert!(t.is_empty(), "nothing left to keep");
        assert_eq!(t.stats().dead_owners, 2);
        // Nothing to release: absent key, expired lock, unknown pid.
        assert!(!t.release_if_owner_dead(k, 300, |_| false));
        t.try_lock_as(k, req(REFRESH, 9, 6, 100, 0), 400, alive);
        assert!(!t.release_if_owner_dead(k, 500, |_| panic!("asked")));
        t.try_lock(key(2), FILL, token(10), 30_000, 0, 500);
        assert!(!t.release_if_owner_dead(key(2), 500, |_| panic!("asked")));
        assert!(matches!(
            t.try_lock_as(key(2), req(FILL, 11, 6, 1_000, 0), 500, |_| false),
            LockAttempt::Held(LockInfo { owner_pid: 0, .. })
        ));
        // Expired and dead: an expiry takeover.
        assert_eq!(
            t.try_lock_as(k, req(FILL, 12, 6, 1_000, 0), 600, |_| false),
            LockAttempt::Acquired(TakeOver::Expired)
        );
        t.verify().unwrap();
    }

    #[test]
    fn a_dead_owners_lock_after_a_store_is_released_not_taken() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock_as(k, req(FILL, 1, 10, 30_000, 0), 100, alive);
        assert!(t.unlock(k, token(1), 200, true));
        t.try_lock_as(k, req(REFRESH, 2, 11, 30_000, 0), 300, alive);
        // A late miss: the refresh owner died, but the store at 200 is newer
        // than the lookup, so the caller must not fill; the lock is gone.
        assert_eq!(
            t.try_lock_as(k, req(FILL, 3, 12, 30_000, 150), 400, |_| false),
            LockAttempt::RecentlyFilled
        );
        assert_eq!(t.lock_state(k, 400), None);
        t.verify().unwrap();
    }

    #[test]
    fn failed_fills_release_without_recording_a_store() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock_as(k, req(FILL, 1, 10, 30_000, 0), 100, alive);
        // A waiter polls: held; the owner gives up without storing; the poll
        // sees the lock gone and the waiter's retry may fill.
        assert!(t.lock_state(k, 150).is_some());
        assert!(t.unlock(k, token(1), 200, false));
        assert_eq!(t.lock_state(k, 200), None);
        assert_eq!(t.last_store_ms(k, 200), None);
        assert_eq!(
            t.try_lock_as(k, req(FILL, 2, 10, 30_000, 50), 250, alive),
            LockAttempt::Acquired(TakeOver::Free)
        );
    }

    #[test]
    fn forget_drops_memo_mark_and_store_memory_but_not_locks() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let (a, b, c) = (key(1), key(2), key(3));
        assert_eq!(t.forget(a, 1_000), Forgotten::default());
        t.memo_set(a, 9_000, 1_000);
        assert_eq!(
            t.forget(a, 1_000),
            Forgotten {
                memo: true,
                ..Forgotten::default()
            }
        );
        assert_eq!(t.memo_get(a, 1_001), None);
        assert_eq!(t.len(), 0);
        t.pass_set(b, 5_000, 1_000);
        assert!(t.forget(b, 1_100).pass_mark);
        assert_eq!(t.pass_left_ms(b, 1_200), None);
        assert_eq!(t.len(), 0);
        // A fill under way keeps its lock; the memory of a store is dropped so a request
        // that looked up before the purge does not take the entry for just filled.
        t.try_lock_as(c, req(FILL, 1, 10, 30_000, 0), 1_000, alive);
        t.memo_set(c, 9_000, 1_000);
        let gone = t.forget(c, 1_100);
        assert!(gone.locked && gone.memo);
        assert!(t.lock_state(c, 1_100).is_some());
        assert!(t.unlock(c, token(1), 1_200, true));
        assert_eq!(t.last_store_ms(c, 1_300), Some(1_200));
        assert!(!t.forget(c, 1_300).locked);
        assert_eq!(t.last_store_ms(c, 1_300), None);
        assert_eq!(t.len(), 0);
        assert!(t.verify().is_ok());
    }

    #[test]
    fn pass_marks_skip_collapsing_until_they_expire() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.try_lock_as(k, req(FILL, 1, 10, 30_000, 0), 1_000, alive);
        assert!(t.unlock(k, token(1), 1_100, false));
        assert_eq!(t.pass_set(k, 5_000, 1_100), MemoOutcome::Stored);
        assert_eq!(t.pass_left_ms(k, 1_100), Some(5_000));
        assert_eq!(t.pass_left_ms(k, 6_099), Some(1));
        // Fills pass, without a lock; refreshes still lock.
        assert_eq!(
            t.try_lock_as(k, req(FILL, 2, 10, 30_000, 1_200), 1_200, alive),
            LockAttempt::Pass { left_ms: 4_900 }
        );
        assert_eq!(t.lock_state(k, 1_200), None);
        assert_eq!(
            t.try_lock_as(k, req(REFRESH, 3, 10, 1_000, 0), 1_300, alive),
            LockAttempt::Acquired(TakeOver::Free)
        );
        // Even with a lock held, a fill passes rather than waits.
        assert!(matches!(
            t.try_lock_as(k, req(FILL, 4, 10, 30_000, 1_300), 1_400, alive),
            LockAttempt::Pass { .. }
        ));
        // The mark keeps the entry: a release, a cleared memo do not drop it.
        assert!(t.unlock(k, token(3), 1_500, false));
        t.memo_clear(k, 1_500);
        assert_eq!(t.len(), 1);
        // The table's legacy call ignores marks.
        assert!(matches!(
            t.try_lock(k, FILL, token(5), 1_000, 1_500, 1_600),
            LockOutcome::Acquired { .. }
        ));
        assert!(t.unlock(k, token(5), 1_700, false));
        // Expired: fills collapse again and the entry is garbage.
        assert_eq!(t.pass_left_ms(k, 6_100), None);
        assert!(t.is_empty());
        t.verify().unwrap();
    }

    #[test]
    fn a_store_or_a_clear_ends_a_pass_mark() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        t.pass_set(k, 10_000, 1_000);
        // A passed request's answer was cacheable and stored.
        t.pass_clear(k, 2_000);
        assert_eq!(t.pass_left_ms(k, 2_000), None);
        assert!(t.is_empty());
        // A lock holder's store ends it too (it took the lock before the mark).
        t.try_lock_as(k, req(REFRESH, 1, 10, 30_000, 0), 3_000, alive);
        t.pass_set(k, 10_000, 3_100);
        assert!(t.unlock(k, token(1), 3_200, true));
        assert_eq!(t.pass_left_ms(k, 3_300), None);
        assert_eq!(t.last_store_ms(k, 3_300), Some(3_200));
        // A mark replaces the memory of a store; a clear does not touch a store.
        t.pass_clear(k, 3_300);
        assert_eq!(t.last_store_ms(k, 3_300), Some(3_200));
        t.pass_set(k, 1_000, 3_400);
        assert_eq!(t.last_store_ms(k, 3_400), None);
        // Zero clears.
        assert_eq!(t.pass_set(k, 0, 3_500), MemoOutcome::Stored);
        assert_eq!(t.pass_left_ms(k, 3_500), None);
        assert!(t.is_empty());
        t.verify().unwrap();
    }

    #[test]
    fn error_marks_back_off_longer_and_a_store_ends_them() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        let backoff = |n: u8| 1_000u64 << (n - 1);
        assert_eq!(t.error_mark(k, 1_000, backoff), Some(1_000));
        assert_eq!(t.error_left_ms(k, 1_500), Some(500));
        // Fills are not blocked by the mark (the caller decides what it means).
        assert!(matches!(
            t.try_lock_as(k, req(FILL, 1, 10, 30_000, 1_600), 1_600, alive),
            LockAttempt::Acquired(_)
        ));
        assert!(t.unlock(k, token(1), 1_700, false));
        // Expired, but the count is remembered: the next failure backs off twice as long.
        assert_eq!(t.error_left_ms(k, 2_100), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.error_mark(k, 2_100, backoff), Some(2_000));
        assert_eq!(t.error_mark(k, 4_200, backoff), Some(4_000));
        t.verify().unwrap();
        // A store ends the mark and its count.
        t.try_lock_as(k, req(REFRESH, 2, 10, 30_000, 0), 5_000, alive);
        assert!(t.unlock(k, token(2), 5_100, true));
        assert_eq!(t.error_left_ms(k, 5_100), None);
        assert_eq!(t.error_mark(k, 5_200, backoff), Some(1_000));
        // Forgotten after ERROR_MEMORY_MS past its end: the entry goes, the count restarts.
        let late = 6_200 + ERROR_MEMORY_MS;
        assert_eq!(t.error_left_ms(k, late), None);
        assert!(t.is_empty());
        assert_eq!(t.error_mark(k, late, backoff), Some(1_000));
        // The count saturates instead of wrapping.
        let mut now = late;
        for _ in 0..300 {
            now += 1;
            t.error_mark(k, now, |n| u64::from(n));
        }
        assert_eq!(t.error_mark(k, now + 1, |n| u64::from(n)), Some(255));
        // A pass mark replaces it, with no count left behind.
        t.pass_set(k, 1_000, now + 2);
        assert_eq!(t.error_left_ms(k, now + 3), None);
        t.verify().unwrap();
    }

    #[test]
    fn pass_marks_at_the_edges_of_time() {
        let mut region = Region::with_slots(64);
        let mut t = region.init(1);
        let k = key(1);
        // A huge duration saturates instead of wrapping into the past.
        t.pass_set(k, u64::MAX, 5);
        assert_eq!(t.pass_left_ms(k, 5), Some(u64::MAX - 5));
        t.pass_set(k, 10, u64::MAX - 3);
        assert_eq!(t.pass_left_ms(k, u64::MAX - 1), Some(1));
        assert_eq!(t.pass_left_ms(k, u64::MAX), None);
        assert!(t.is_empty());
        // A clock running behind the one that set the mark (another worker).
        t.pass_set(k, 100, 1_000);
        assert_eq!(t.pass_left_ms(k, 900), Some(200));
        // A store dated by a clock ahead of ours still counts as recent.
        t.pass_clear(k, 900);
        t.try_lock_as(k, req(FILL, 1, 1, 1_000, 0), 1_000, alive);
        assert!(t.unlock(k, token(1), 1_050, true));
        assert_eq!(t.last_store_ms(k, 1_000), Some(1_050));
        // Garbage left in the fill byte fails verify, and reads as no fill,
        // so the entry is garbage too.
        let idx = t.at(k).unwrap();
        t.slots[idx].fill = 9;
        assert!(t.verify().is_err());
        assert_eq!(t.last_store_ms(k, 1_060), None);
        assert_eq!(t.pass_left_ms(k, 1_060), None);
        assert!(t.is_empty());
        t.verify().unwrap();
    }

    #[test]
    fn pass_marks_are_evicted_like_memos_and_never_block_locks() {
        let mut region = Region::with_slots(16);
        let mut t = region.init(1);
        let cap = t.capacity() as u64;
        for n in 0..cap {
            assert_eq!(t.pass_set(key(n), 100_000, n), MemoOutcome::Stored);
        }
        assert_eq!(
            t.try_lock_as(key(99), req(FILL, 1, 1, 1_000, 0), 100, alive),
            LockAttempt::Acquired(TakeOver::Free)
        );
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.pass_left_ms(key(0), 100), None, "least recent went");
        assert!(t.pass_left_ms(key(1), 100).is_some());
        t.verify().unwrap();
    }

    /* ----------------------------------------------------------- damage */

    /// Runs `f` on a thread, failing if it does not finish within seconds: a
    /// loop that never ends on damaged content would hang every worker.
    fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("operation on a damaged table did not finish")
    }

    /// A region with `n` keys stored, for damaging.
    fn filled_region(slots: usize, n: u64) -> Region {
        let mut region = Region::with_slots(slots);
        let mut t = region.init(5);
        for k in 0..n {
            t.memo_set(key(k), 100_000, 1);
        }
        t.verify().unwrap();
        region
    }

    #[test]
    fn an_lru_cycle_fails_verify_and_hangs_nothing() {
        let mut region = filled_region(64, 20);
        {
            let t = region.attach();
            // Two entries in the middle of the list point at each other.
            let order: Vec<usize> = lru_order(&t).iter().map(|f| t.at(*f).unwrap()).collect();
            let (a, b) = (order[5], order[6]);
            t.slots[b].lru_next = a as u32;
            t.slots[a].lru_prev = b as u32;
            assert!(t.verify().is_err());
        }
        let (damage, rebuilt) = finishes(move || {
            let mut t = region.attach();
            // Touch every key: some reach the broken links.
            for k in 0..20 {
                t.memo_get(key(k), 2);
                t.try_lock_as(key(k), req(FILL, k + 1, 1, 1_000, 0), 2, alive);
            }
            let damage = t.damage();
            drop(t);
            let err = LockTable::attach(region.bytes()).err();
            assert_eq!(LockTable::reattach(region.bytes()).err(), err);
            (damage, err)
        });
        assert_eq!(damage, Some(LayoutError::Corrupt(Damage::Link.what())));
        assert_eq!(rebuilt, damage, "every worker's attach refuses it");
    }

    /// A 16-slot region with every slot used, entry `i` at home `home(i)`,
    /// LRU-linked in slot order, and an entry count of 3.
    fn crammed(home: impl Fn(usize) -> usize) -> Vec<u64> {
        let n = 16;
        let mut region = Region::with_slots(n);
        let t = region.init(5);
        for i in 0..n {
            let fp = fp_at(n, home(i), i as u64);
            t.slots[i] = Slot {
                fp_hi: fp.hi,
                fp_lo: fp.lo,
                used: USED,
                lru_prev: if i == 0 { NIL } else { i as u32 - 1 },
                lru_next: if i + 1 == n { NIL } else { i as u32 + 1 },
                ..Slot::EMPTY
            };
        }
        t.hdr.lru_head = 0;
        t.hdr.lru_tail = n as u32 - 1;
        t.hdr.entries = 3;
        assert!(t.verify().is_err());
        region.0
    }

    #[test]
    fn wrong_counts_and_full_runs_stop_within_a_lap() {
        let n = 16;
        // Every entry two steps from home (as a crashed insert could leave
        // it): a backward shift never meets an entry at home nor an empty
        // slot (the code before the bound spun here), and an insert finds no
        // end of its run.
        let two_off = crammed(|i| (i + n - 2) % n);
        let words = two_off.clone();
        let damage = finishes(move || {
            let mut region = Region(words);
            let mut t = region.attach();
            t.memo_clear(fp_at(n, 2, 4), 1);
            t.damage()
        });
        assert_eq!(damage, Some(LayoutError::Corrupt(Damage::Endless.what())));
        let (got, damage) = finishes(move || {
            let mut region = Region(two_off);
            let mut t = region.attach();
            let got = t.try_lock_as(fp_at(n, 3, 999), req(FILL, 1, 1, 1_000, 0), 1, alive);
            (got, t.damage())
        });
        assert_eq!(got, LockAttempt::Full);
        assert_eq!(damage, Some(LayoutError::Corrupt(Damage::Endless.what())));
        // Every entry at home 0: the probe for another key of home 0 never
        // meets an entry nearer home, nor an empty slot.
        let (state, damage) = finishes(move || {
            let mut region = Region(crammed(|_| 0));
            let mut t = region.attach();
            (t.lock_state(fp_at(n, 0, 999), 1), t.damage())
        });
        assert_eq!(state, None);
        assert_eq!(damage, Some(LayoutError::Corrupt(Damage::Endless.what())));
        // The entry count says 0 while entries remain.
        let mut region = filled_region(64, 10);
        let mut t = region.attach();
        t.hdr.entries = 0;
        t.hdr.lru_head = NIL;
        t.memo_clear(key(3), 1);
        assert!(t.damage().is_some());
    }

    #[test]
    fn verify_finds_duplicates_and_stays_fast_on_garbage() {
        let mut region = filled_region(64, 20);
        {
            let t = region.attach();
            // A copy of an entry right after it: the copy is unreachable.
            let idx = (0..20)
                .map(|k| t.at(key(k)).unwrap())
                .find(|&i| t.slots[t.next(i)].used == 0)
                .unwrap();
            t.slots[t.next(idx)] = Slot {
                lru_prev: NIL,
                lru_next: NIL,
                ..t.slots[idx]
            };
            assert_eq!(t.verify(), Err(LayoutError::Corrupt("duplicated entry")));
        }
        // 65,535 entries all homed at slot 0, in order, each findable: a probe
        // per entry would take about 2^31 steps.
        let n = 1 << 16;
        let err = finishes(move || {
            let mut region = Region::with_slots(n);
            let t = region.init(5);
            for i in 0..n - 1 {
                let fp = fp_at(n, 0, i as u64);
                t.slots[i] = Slot {
                    fp_hi: fp.hi,
                    fp_lo: fp.lo,
                    used: USED,
                    ..Slot::EMPTY
                };
            }
            t.verify()
        });
        assert_eq!(err, Err(LayoutError::Corrupt("entry count")));
    }

    #[test]
    fn memo_epoch_moves_when_a_memo_is_cleared_or_shortened() {
        let mut region = Region::with_slots(64);
        let epoch = |region: &mut Region| {
            let raw = region.bytes().as_ptr();
            // SAFETY: a laid-out region owned by the test.
            let read = unsafe { LockTable::memo_epoch_raw(raw) };
            assert_eq!(read, region.attach().memo_epoch());
            read
        };
        region.init(5);
        let e0 = epoch(&mut region);
        // New memos and longer ones leave copies good.
        region.attach().memo_set(key(1), 10_000, 1);
        region.attach().memo_set(key(1), 20_000, 2);
        region
            .attach()
            .memo_set_born(key(2), 30_000, Some(1_000), 3);
        assert_eq!(epoch(&mut region), e0);
        // Shorter, cleared, forgotten, cleared when absent, rebuilt: each moves it.
        region.attach().memo_set(key(1), 15_000, 4);
        let e1 = epoch(&mut region);
        assert_ne!(e1, e0);
        region.attach().memo_set(key(1), 3, 4);
        let e2 = epoch(&mut region);
        assert_ne!(e2, e1);
        region.attach().forget(key(2), 5);
        let e3 = epoch(&mut region);
        assert_ne!(e3, e2);
        region.attach().memo_clear(key(99), 6);
        let e4 = epoch(&mut region);
        assert_ne!(e4, e3);
        LockTable::rebuild(region.bytes()).unwrap();
        assert_ne!(epoch(&mut region), e4);
    }

    #[test]
    fn damage_answers_safely_then_rebuild_keeps_the_seed() {
        let mut region = filled_region(64, 10);
        {
            let mut t = region.attach();
            t.try_lock_as(key(1), req(FILL, 1, 1, 1_000, 0), 1, alive);
            let idx = t.at(key(2)).unwrap();
            t.slots[idx].lru_next = 9_999;
            t.memo_clear(key(2), 2);
            assert!(t.damage().is_some());
            // Every operation now answers "nothing, no room" and changes nothing.
            assert_eq!(t.memo_get(key(3), 2), None);
            assert_eq!(t.memo_set(key(3), 9, 2), MemoOutcome::Full);
            assert_eq!(t.pass_set(key(3), 9, 2), MemoOutcome::Full);
            assert_eq!(t.lock_state(key(1), 2), None);
            assert!(!t.unlock(key(1), token(1), 2, true));
            assert_eq!(
                t.try_lock(key(4), FILL, token(2), 1_000, 0, 2),
                LockOutcome::Full
            );
            assert!(t.verify().is_err());
        }
        assert!(matches!(
            LockTable::attach(region.bytes()),
            Err(LayoutError::Corrupt(_))
        ));
        assert!(matches!(
            LockTable::reattach(region.bytes()),
            Err(LayoutError::Corrupt(_))
        ));
        let t = LockTable::rebuild(region.bytes()).unwrap();
        assert_eq!(t.seed(), 5);
        assert_eq!(t.stats().rebuilds, 1);
        assert_eq!(t.stats().entries, 0);
        t.verify().unwrap();
        assert!(LockTable::reattach(region.bytes()).is_ok());
        let mut t = region.attach();
        assert_eq!(t.memo_set(key(1), 10, 1), MemoOutcome::Stored);
        // Another layout is not rebuilt: someone else may be reading it.
        region.bytes()[8] = 9;
        assert!(matches!(
            LockTable::rebuild(region.bytes()),
            Err(LayoutError::Version { found: 9 })
        ));
    }

    /* -------------------------------------------------------- structure */

    #[test]
    fn backward_shift_keeps_colliding_run_findable() {
        // Many keys with the same home, wrapping around the end of the table.
        let n = 16;
        let mut region = Region::with_slots(n);
        let mut t = region.init(1);
        let fps: Vec<Fingerprint> = (0..6)
            .map(|tag| fp_at(n, n - 2, tag))
            .chain((0..4).map(|tag| fp_at(n, 0, 100 + tag)))
            .chain((0..2).map(|tag| fp_at(n, 3, 200 + tag)))
            .collect();
        for fp in &fps {
            assert_eq!(t.memo_set(*fp, 1_000, 0), MemoOutcome::Stored);
            t.verify().unwrap();
        }
        assert_eq!(t.home(fps[0]), n - 2);
        for (i, fp) in fps.iter().enumerate() {
            assert!(t.at(*fp).is_some(), "{i}");
        }
        // Delete from the middle of runs, re-checking all others each time.
        let mut alive: Vec<Fingerprint> = fps.clone();
        for victim in [2usize, 0, 7, 3] {
            let fp = fps[victim];
            t.memo_clear(fp, 0);
            alive.retain(|f| *f != fp);
            t.verify().unwrap();
            assert_eq!(t.at(fp), None);
            for f in &alive {
                assert!(t.at(*f).is_some());
            }
        }
        assert_eq!(t.len(), alive.len());
        // LRU order survived the moves: insertion order minus the victims.
        let mut expected = alive.clone();
        expected.reverse();
        assert_eq!(lru_order(&t), expected);
    }

    /// A model of the table as a recency-ordered list (front = most recent),
    /// with the documented semantics written out independently.
    #[derive(Clone, Copy, Debug)]
    struct ModelEntry {
        lock: Option<LockInfo>,
        fresh_until: u64,
        fill_done: u64,
        pass_until: u64,
    }

    impl ModelEntry {
        const NEW: ModelEntry = ModelEntry {
            lock: None,
            fresh_until: 0,
            fill_done: 0,
            pass_until: 0,
        };

        fn live_lock(&self, now: u64) -> Option<LockInfo> {
            self.lock.filter(|l| l.expires_at_ms > now)
        }

        fn garbage(&self, now: u64) -> bool {
            self.live_lock(now).is_none()
                && self.fresh_until <= now
                && (self.fill_done == 0 || now - self.fill_done >= FILL_MEMORY_MS)
                && self.pass_until <= now
        }
    }

    struct Model {
        order: Vec<(u64, ModelEntry)>,
        cap: usize,
        evictions: u64,
        dead_owners: u64,
    }

    /// Pids the randomized tests treat as gone (0 = unknown owner).
    fn model_alive(pid: u32) -> bool {
        pid < 3
    }

    impl Model {
        fn pos(&self, k: u64) -> Option<usize> {
            self.order.iter().position(|(key, _)| *key == k)
        }

        fn touch(&mut self, pos: usize) -> usize {
            let e = self.order.remove(pos);
            self.order.insert(0, e);
            0
        }

        /// Finds or adds `k` as most recent; None when full.
        fn entry(&mut self, k: u64, now: u64) -> Option<(usize, u64)> {
            if let Some(pos) = self.pos(k) {
                return Some((self.touch(pos), 0));
            }
            let mut evicted = 0;
            if self.order.len() >= self.cap {
                let mut skipped = 0;
                loop {
                    if skipped >= self.order.len() {
                        return None;
                    }
                    let last = self.order.len() - 1;
                    if self.order[last].1.live_lock(now).is_some() {
                        self.touch(last);
                        skipped += 1;
                        continue;
                    }
                    let (_, e) = self.order.pop().unwrap();
                    if !e.garbage(now) {
                        evicted += 1;
                        self.evictions += 1;
                    }
                    break;
                }
            }
            self.order.insert(0, (k, ModelEntry::NEW));
            Some((0, evicted))
        }

        fn reclaim(&mut self, pos: usize, now: u64) {
            if self.order[pos].1.garbage(now) {
                self.order.remove(pos);
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn try_lock_as(
            &mut self,
            k: u64,
            kind: LockKind,
            tok: u64,
            pid: u32,
            ttl: u64,
            started: u64,
            now: u64,
            honour_pass: bool,
        ) -> LockAttempt {
            let Some((pos, _)) = self.entry(k, now) else {
                return LockAttempt::Full;
            };
            let e = &mut self.order[pos].1;
            if kind == FILL && honour_pass && e.pass_until > now {
                return LockAttempt::Pass {
                    left_ms: e.pass_until - now,
                };
            }
            let mut how = TakeOver::Free;
            if let Some(info) = e.live_lock(now) {
                // The legacy call (`honour_pass` false) checks no owners either.
                if info.owner_pid == 0 || !honour_pass || model_alive(info.owner_pid) {
                    return LockAttempt::Held(info);
                }
                e.lock = None;
                self.dead_owners += 1;
                how = TakeOver::DeadOwner {
                    pid: info.owner_pid,
                };
            } else if e.lock.is_some() {
                how = TakeOver::Expired;
            }
            if kind == FILL && e.fill_done != 0 && e.fill_done >= started {
                return LockAttempt::RecentlyFilled;
            }
            e.lock = Some(LockInfo {
                kind,
                token: token(tok),
                owner_pid: pid,
                expires_at_ms: now + ttl,
            });
            LockAttempt::Acquired(how)
        }

        fn release_if_owner_dead(&mut self, k: u64, now: u64) -> bool {
            let Some(pos) = self.pos(k) else { return false };
            let e = &mut self.order[pos].1;
            match e.live_lock(now) {
                Some(info) if info.owner_pid != 0 && !model_alive(info.owner_pid) => {
                    e.lock = None;
                    self.dead_owners += 1;
                    self.reclaim(pos, now);
                    true
                }
                _ => false,
            }
        }

        fn pass_set(&mut self, k: u64, duration: u64, now: u64) -> MemoOutcome {
            if duration == 0 {
                self.pass_clear(k, now);
                return MemoOutcome::Stored;
            }
            let Some((pos, evicted)) = self.entry(k, now) else {
                return MemoOutcome::Full;
            };
            let e = &mut self.order[pos].1;
            e.pass_until = now + duration;
            e.fill_done = 0;
            stored(evicted)
        }

        fn pass_left_ms(&mut self, k: u64, now: u64) -> Option<u64> {
            let pos = self.pos(k)?;
            let until = self.order[pos].1.pass_until;
            if until > now {
                self.touch(pos);
                return Some(until - now);
            }
            self.reclaim(pos, now);
            None
        }

        fn pass_clear(&mut self, k: u64, now: u64) {
            if let Some(pos) = self.pos(k) {
                self.order[pos].1.pass_until = 0;
                self.reclaim(pos, now);
            }
        }

        fn unlock(&mut self, k: u64, tok: u64, now: u64, filled: bool) -> bool {
            let Some(pos) = self.pos(k) else { return false };
            let e = &mut self.order[pos].1;
            let Some(lock) = e.lock else {
                return false;
            };
            if lock.token.get() != tok {
                return false;
            }
            if filled {
                e.fill_done = now.max(1);
                e.pass_until = 0;
            }
            e.lock = None;
            self.reclaim(pos, now);
            true
        }

        fn memo_get(&mut self, k: u64, now: u64) -> Option<u64> {
            let pos = self.pos(k)?;
            if self.order[pos].1.fresh_until > now {
                let pos = self.touch(pos);
                return Some(self.order[pos].1.fresh_until);
            }
            self.reclaim(pos, now);
            None
        }

        fn memo_set(&mut self, k: u64, until: u64, now: u64) -> MemoOutcome {
            if until <= now {
                self.memo_clear(k, now);
                return MemoOutcome::Stored;
            }
            let Some((pos, evicted)) = self.entry(k, now) else {
                return MemoOutcome::Full;
            };
            self.order[pos].1.fresh_until = until;
            match evicted {
                0 => MemoOutcome::Stored,
                n => MemoOutcome::StoredEvicted(n),
            }
        }

        fn memo_clear(&mut self, k: u64, now: u64) {
            if let Some(pos) = self.pos(k) {
                self.order[pos].1.fresh_until = 0;
                self.reclaim(pos, now);
            }
        }

        fn lock_state(&self, k: u64, now: u64) -> Option<LockInfo> {
            self.order[self.pos(k)?].1.live_lock(now)
        }
    }

    /// Runs random operations against the table and the model, comparing every
    /// answer, the LRU order and the findability of every key.
    fn randomized(slots: usize, keys: u64, ops: usize, seed: u64, with_locks: bool) {
        let mut region = Region::with_slots(slots);
        let mut t = region.init(seed);
        let mut model = Model {
            order: Vec::new(),
            cap: t.capacity(),
            evictions: 0,
            dead_owners: 0,
        };
        let fps: Vec<Fingerprint> = (0..keys).map(|k| t.fingerprint(&k.to_le_bytes())).collect();
        let mut rng = Rng(seed | 1);
        let mut now = 1_000u64;
        let mut tokens: HashMap<u64, u64> = HashMap::new();
        let mut next_token = 1u64;
        for step in 0..ops {
            now += rng.below(40);
            let k = rng.below(keys);
            let fp = fps[k as usize];
            let op = rng.below(if with_locks { 12 } else { 4 });
            match op {
                0 | 1 => {
                    let until = now + rng.below(3_000);
                    assert_eq!(
                        t.memo_set(fp, until, now),
                        model.memo_set(k, until, now),
                        "step {step}"
                    );
                }
                2 => assert_eq!(t.memo_get(fp, now), model.memo_get(k, now), "step {step}"),
                3 => {
                    t.memo_clear(fp, now);
                    model.memo_clear(k, now);
                }
                4 | 5 => {
                    let kind = if rng.below(2) == 0 { FILL } else { REFRESH };
                    let ttl = rng.below(2_000);
                    let started = now.saturating_sub(rng.below(3_000));
                    let tok = next_token;
                    next_token += 1;
                    // Op 4: the legacy call (pid unknown, marks ignored).
                    let (pid, legacy) = if op == 4 {
                        (0, true)
                    } else {
                        (rng.below(5) as u32, false)
                    };
                    let want = model.try_lock_as(k, kind, tok, pid, ttl, started, now, !legacy);
                    let acquired = matches!(want, LockAttempt::Acquired(_));
                    if legacy {
                        let got = t.try_lock(fp, kind, token(tok), ttl, started, now);
                        let want = match want {
                            LockAttempt::Acquired(how) => LockOutcome::Acquired {
                                took_over_expired: how != TakeOver::Free,
                            },
                            LockAttempt::Held(info) => LockOutcome::Held(info),
                            LockAttempt::RecentlyFilled => LockOutcome::RecentlyFilled,
                            LockAttempt::Pass { .. } | LockAttempt::Full => LockOutcome::Full,
                        };
                        assert_eq!(got, want, "step {step}");
                    } else {
                        let request = req(kind, tok, pid, ttl, started);
                        let got = t.try_lock_as(fp, request, now, model_alive);
                        assert_eq!(got, want, "step {step}");
                    }
                    if acquired {
                        tokens.insert(k, tok);
                    }
                }
                8 => {
                    let duration = rng.below(3_000);
                    assert_eq!(
                        t.pass_set(fp, duration, now),
                        model.pass_set(k, duration, now),
                        "step {step}"
                    );
                }
                9 => assert_eq!(
                    t.pass_left_ms(fp, now),
                    model.pass_left_ms(k, now),
                    "step {step}"
                ),
                10 => {
                    t.pass_clear(fp, now);
                    model.pass_clear(k, now);
                }
                11 => assert_eq!(
                    t.release_if_owner_dead(fp, now, model_alive),
                    model.release_if_owner_dead(k, now),
                    "step {step}"
                ),
                6 => {
                    // Mostly the right token, sometimes a stale one.
                    let tok = match tokens.get(&k) {
                        Some(&tok) if rng.below(4) != 0 => tok,
                        _ => rng.below(next_token) + 1,
                    };
                    let filled = rng.below(2) == 0;
                    assert_eq!(
                        t.unlock(fp, token(tok), now, filled),
                        model.unlock(k, tok, now, filled),
                        "step {step}"
                    );
                }
                _ => assert_eq!(
                    t.lock_state(fp, now),
                    model.lock_state(k, now),
                    "step {step}"
                ),
            }
            assert_eq!(t.len(), model.order.len(), "step {step}");
            if step % 16 == 0 {
                t.verify().unwrap();
                let expected: Vec<Fingerprint> =
                    model.order.iter().map(|(k, _)| fps[*k as usize]).collect();
                assert_eq!(lru_order(&t), expected, "step {step}");
                for (k, fp) in fps.iter().enumerate() {
                    assert_eq!(
                        t.at(*fp).is_some(),
                        model.pos(k as u64).is_some(),
                        "step {step}"
                    );
                }
            }
        }
        assert_eq!(t.evictions(), model.evictions);
        assert_eq!(t.stats().dead_owners, model.dead_owners);
        t.verify().unwrap();
    }

    #[test]
    fn randomized_memos_small_table() {
        randomized(16, 40, 20_000, 0xdead_beef, false);
    }

    #[test]
    fn randomized_memos_medium_table() {
        randomized(128, 200, 20_000, 0x0123_4567, false);
    }

    #[test]
    fn randomized_locks_and_memos() {
        randomized(16, 30, 20_000, 0x7777, true);
        randomized(64, 120, 20_000, 0x4242, true);
        randomized(61, 50, 20_000, 0x9999, true);
    }

    #[test]
    fn randomized_against_hashmap_without_eviction() {
        // Plain map semantics: insert/delete/lookup with no time passing and
        // never more keys than fit, checking all keys after every deletion.
        let slots = 100;
        let mut region = Region::with_slots(slots);
        let mut t = region.init(77);
        let cap = t.capacity();
        let mut map: HashMap<u64, u64> = HashMap::new();
        let mut rng = Rng(0x5eed);
        for step in 0..30_000 {
            let k = rng.below(3 * cap as u64);
            let fp = key(k);
            match rng.below(3) {
                0 if map.len() < cap || map.contains_key(&k) => {
                    let v = 10 + rng.below(1_000);
                    assert_eq!(t.memo_set(fp, v, 5), MemoOutcome::Stored);
                    map.insert(k, v);
                }
                1 => {
                    t.memo_clear(fp, 5);
                    if map.remove(&k).is_some() {
                        for (&other, &v) in &map {
                            assert_eq!(t.memo_get(key(other), 5), Some(v), "step {step}");
                        }
                    }
                }
                _ => assert_eq!(t.memo_get(fp, 5), map.get(&k).copied(), "step {step}"),
            }
            assert_eq!(t.len(), map.len());
        }
        t.verify().unwrap();
    }

    #[test]
    fn probe_lengths_stay_short_at_max_load() {
        let mut region = Region::new(1 << 20);
        let mut t = region.init(3);
        let cap = t.capacity() as u64;
        for n in 0..cap {
            t.memo_set(key(n), 1_000, 0);
        }
        let total: usize = (0..t.slots())
            .filter(|&i| t.slots[i].used == USED)
            .map(|i| t.distance(i) + 1)
            .sum();
        let mean = total as f64 / cap as f64;
        assert!(mean < 5.0, "mean probe length {mean}");
    }
}
