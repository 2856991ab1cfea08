//! The hot tier's shared-memory table (`stale_cache_hot_zone`): the exact bytes srcache
//! fetched from Redis for the hottest keys of this node, with LRU eviction. Pure logic over a
//! byte region; `crate::stale::hot` maps it into nginx's shared memory, under the zone's
//! mutex.
//!
//! Layout (every position is an index or an offset into the region, never a pointer, so the
//! region means the same in every process that maps it and across reloads):
//!
//! ```text
//! header (128 bytes) | buckets: u32 per bucket | entries: 64 bytes each
//!                    | block links: u32 per block | blocks: BLOCK_SIZE bytes each
//! ```
//!
//! An entry is found through its bucket's chain (`hnext`); a stored entry's data (the key,
//! then the value) lives in a chain of fixed-size blocks (`block links`), so there is no
//! fragmentation and any free block fits any entry. Entries are on one LRU list (most recent
//! at the head); making room evicts from its tail. A *candidate* is an entry without data
//! that counts the hits of a key not proven hot yet.
//!
//! Crash safety: every operation sets the header's `busy` word before it changes anything and
//! clears it when done. The zone's mutex makes one process the only user at a time, so a set
//! `busy` seen by [`HotTable::attach`] means the previous user died in the middle of an
//! update (nginx force-unlocks the mutex of a dead worker): the table is then emptied
//! ([`HotTable::rebuild`]), which is always safe, since Redis holds every entry.

use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

/// Identifies the layout; a region with another magic or version is not read.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SWRHOT01");
pub const LAYOUT_VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 128;
pub const ENTRY_SIZE: usize = 64;
/// Data block size: a 1 KB body with its stored status line and headers fits in one.
pub const BLOCK_SIZE: usize = 2048;
/// Bytes per block in all (block, its link, an entry and a bucket).
pub const BYTES_PER_BLOCK: usize = BLOCK_SIZE + 4 + ENTRY_SIZE + 4;
pub const MIN_BLOCKS: usize = 8;
const NIL: u32 = u32::MAX;

const FREE: u32 = 0;
const CANDIDATE: u32 = 1;
const READY: u32 = 2;

// Header fields (byte offsets).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_BUSY: usize = 12;
const H_LEN: usize = 16;
const H_BUCKETS: usize = 24;
const H_ENTRIES: usize = 28;
const H_BLOCKS: usize = 32;
const H_FREE_ENTRY: usize = 36;
const H_FREE_BLOCK: usize = 40;
const H_FREE_BLOCKS: usize = 44;
const H_LRU_HEAD: usize = 48;
const H_LRU_TAIL: usize = 52;
const H_SEED: usize = 56;
const H_EVICTIONS: usize = 64;
const H_REBUILDS: usize = 72;
const H_STORED: usize = 80;
const H_USED: usize = 88;

// Entry fields (byte offsets within an entry).
const E_STATE: usize = 0;
const E_HITS: usize = 4;
const E_FP: usize = 8;
const E_HNEXT: usize = 16;
const E_PREV: usize = 20;
const E_NEXT: usize = 24;
const E_FIRST: usize = 28;
const E_KEY_LEN: usize = 32;
const E_VALUE_LEN: usize = 36;
const E_STORED_AT: usize = 40;
const E_FRESH_UNTIL: usize = 48;
const E_FILL_UNTIL: usize = 56;

/// How long a key's fill is left to the request that started it before another may try.
pub const FILL_CLAIM_MS: u64 = 500;

/// Why a region cannot be used as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotError {
    /// Too small for the minimum table.
    TooSmall,
    /// Not a table of this layout (another build, or never initialised).
    Layout,
    /// Another size than recorded.
    Length,
    /// Left half-updated by a process that died, or inconsistent.
    Damaged(&'static str),
}

impl core::fmt::Display for HotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HotError::TooSmall => f.write_str("region too small"),
            HotError::Layout => f.write_str("another layout"),
            HotError::Length => f.write_str("another size"),
            HotError::Damaged(why) => write!(f, "damaged: {why}"),
        }
    }
}

/// What a fresh hit should do with the hot tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The table has a copy young enough: serve it.
    Serve,
    /// The key proved hot (or its copy is too old): fill it from this request's fetch.
    Fill,
    /// Counted; nothing to do.
    Nothing,
}

/// What a store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored, after evicting this many entries.
    Stored { evicted: u32 },
    /// Larger than a quarter of the table: never stored.
    TooBig,
}

/// Counters of the table (constant time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotStats {
    pub blocks: u32,
    pub free_blocks: u32,
    pub entries_used: u32,
    pub evictions: u64,
    pub stored: u64,
    pub rebuilds: u64,
}

/// The key's fingerprint under `seed` (SipHash-2-4, so clients cannot aim keys at a bucket
/// without the seed; the full key is compared before serving anything).
pub fn fingerprint(seed: u64, key: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_keys(seed, seed.rotate_left(29) ^ MAGIC);
    h.write(key);
    let h = h.finish128();
    h.h1 ^ h.h2.rotate_left(17)
}

/// A view of a table in a region.
pub struct HotTable<'a> {
    r: &'a mut [u8],
    buckets: usize,
    entries: usize,
    blocks: usize,
    entries_at: usize,
    links_at: usize,
    blocks_at: usize,
}

fn rd32(r: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(r[at..at + 4].try_into().expect("4 bytes"))
}
fn rd64(r: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(r[at..at + 8].try_into().expect("8 bytes"))
}
fn wr32(r: &mut [u8], at: usize, v: u32) {
    r[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn wr64(r: &mut [u8], at: usize, v: u64) {
    r[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// (buckets, blocks) for a region of `len` bytes.
fn geometry(len: usize) -> Option<(usize, usize)> {
    let blocks = len.checked_sub(HEADER_SIZE)? / BYTES_PER_BLOCK;
    if blocks < MIN_BLOCKS || blocks >= NIL as usize {
        return None;
    }
    // One bucket per block at most; a power of two below it keeps chains short.
    let buckets = if blocks.is_power_of_two() {
        blocks
    } else {
        blocks.next_power_of_two() / 2
    };
    Some((buckets, blocks))
}

impl<'a> HotTable<'a> {
    /// Blocks a region of `len` bytes holds (0 if too small).
    pub fn blocks_for_len(len: usize) -> usize {
        geometry(len).map_or(0, |(_, b)| b)
    }

    fn view(r: &'a mut [u8], buckets: usize, blocks: usize) -> Self {
        let entries_at = HEADER_SIZE + buckets * 4;
        let links_at = entries_at + blocks * ENTRY_SIZE;
        let blocks_at = links_at + blocks * 4;
        HotTable {
            r,
            buckets,
            entries: blocks,
            blocks,
            entries_at,
            links_at,
            blocks_at,
        }
    }

    /// Lays out an empty table in `region`.
    pub fn init(region: &'a mut [u8], seed: u64) -> Result<Self, HotError> {
        let (buckets, blocks) = geometry(region.len()).ok_or(HotError::TooSmall)?;
        let mut t = Self::view(region, buckets, blocks);
        t.lay_out(seed, 0);
        Ok(t)
    }

    /// Attaches to the table in `region`. A table a dead process left half-updated is
    /// reported as [`HotError::Damaged`]; [`HotTable::rebuild`] empties it.
    pub fn attach(region: &'a mut [u8]) -> Result<Self, HotError> {
        let (buckets, blocks) = geometry(region.len()).ok_or(HotError::TooSmall)?;
        if rd64(region, H_MAGIC) != MAGIC || rd32(region, H_VERSION) != LAYOUT_VERSION {
            return Err(HotError::Layout);
        }
        if rd64(region, H_LEN) != region.len() as u64
            || rd32(region, H_BUCKETS) as usize != buckets
            || rd32(region, H_BLOCKS) as usize != blocks
        {
            return Err(HotError::Length);
        }
        if rd32(region, H_BUSY) != 0 {
            return Err(HotError::Damaged(
                "a writer died in the middle of an update",
            ));
        }
        Ok(Self::view(region, buckets, blocks))
    }

    /// Empties a table of this layout (keeping its seed and counting the rebuild), or lays
    /// out a new one over anything else of the right size.
    pub fn rebuild(region: &'a mut [u8]) -> Result<Self, HotError> {
        let (buckets, blocks) = geometry(region.len()).ok_or(HotError::TooSmall)?;
        let ours = rd64(region, H_MAGIC) == MAGIC;
        let seed = rd64(region, H_SEED);
        let rebuilds = if ours { rd64(region, H_REBUILDS) } else { 0 };
        let mut t = Self::view(region, buckets, blocks);
        t.lay_out(seed, rebuilds + 1);
        Ok(t)
    }

    fn lay_out(&mut self, seed: u64, rebuilds: u64) {
        let len = self.r.len();
        self.r[..HEADER_SIZE].fill(0);
        wr32(self.r, H_BUSY, 1);
        wr64(self.r, H_LEN, len as u64);
        wr32(self.r, H_BUCKETS, self.buckets as u32);
        wr32(self.r, H_ENTRIES, self.entries as u32);
        wr32(self.r, H_BLOCKS, self.blocks as u32);
        wr64(self.r, H_SEED, seed);
        wr64(self.r, H_REBUILDS, rebuilds);
        for b in 0..self.buckets {
            wr32(self.r, HEADER_SIZE + b * 4, NIL);
        }
        for e in 0..self.entries {
            let at = self.entries_at + e * ENTRY_SIZE;
            self.r[at..at + ENTRY_SIZE].fill(0);
            let next = if e + 1 < self.entries {
                e as u32 + 1
            } else {
                NIL
            };
            wr32(self.r, at + E_HNEXT, next);
        }
        for b in 0..self.blocks {
            let next = if b + 1 < self.blocks {
                b as u32 + 1
            } else {
                NIL
            };
            wr32(self.r, self.links_at + b * 4, next);
        }
        wr32(self.r, H_FREE_ENTRY, 0);
        wr32(self.r, H_FREE_BLOCK, 0);
        wr32(self.r, H_FREE_BLOCKS, self.blocks as u32);
        wr32(self.r, H_LRU_HEAD, NIL);
        wr32(self.r, H_LRU_TAIL, NIL);
        wr32(self.r, H_USED, 0);
        // The identity last: a table is only recognised once it is whole.
        wr32(self.r, H_VERSION, LAYOUT_VERSION);
        wr64(self.r, H_MAGIC, MAGIC);
        wr32(self.r, H_BUSY, 0);
    }

    pub fn seed(&self) -> u64 {
        rd64(self.r, H_SEED)
    }

    pub fn stats(&self) -> HotStats {
        HotStats {
            blocks: self.blocks as u32,
            free_blocks: rd32(self.r, H_FREE_BLOCKS),
            entries_used: rd32(self.r, H_USED),
            evictions: rd64(self.r, H_EVICTIONS),
            stored: rd64(self.r, H_STORED),
            rebuilds: rd64(self.r, H_REBUILDS),
        }
    }

    /// The largest key + value a store accepts: a quarter of the blocks, so one entry never
    /// empties the table.
    pub fn max_data_len(&self) -> usize {
        (self.blocks / 4).max(1) * BLOCK_SIZE
    }

    /// Runs an update with the busy word set, so a process dying inside it leaves a mark.
    fn busy<T>(&mut self, op: impl FnOnce(&mut Self) -> T) -> T {
        wr32(self.r, H_BUSY, 1);
        let out = op(self);
        wr32(self.r, H_BUSY, 0);
        out
    }

    /* --------------------------------------------------------------- entries */

    fn e_at(&self, e: u32) -> usize {
        self.entries_at + e as usize * ENTRY_SIZE
    }
    fn eget(&self, e: u32, f: usize) -> u32 {
        rd32(self.r, self.e_at(e) + f)
    }
    fn eget64(&self, e: u32, f: usize) -> u64 {
        rd64(self.r, self.e_at(e) + f)
    }
    fn eset(&mut self, e: u32, f: usize, v: u32) {
        let at = self.e_at(e) + f;
        wr32(self.r, at, v);
    }
    fn eset64(&mut self, e: u32, f: usize, v: u64) {
        let at = self.e_at(e) + f;
        wr64(self.r, at, v);
    }
    fn link(&self, b: u32) -> u32 {
        rd32(self.r, self.links_at + b as usize * 4)
    }
    fn set_link(&mut self, b: u32, next: u32) {
        wr32(self.r, self.links_at + b as usize * 4, next);
    }
    fn block(&self, b: u32) -> usize {
        self.blocks_at + b as usize * BLOCK_SIZE
    }
    fn bucket_at(&self, fp: u64) -> usize {
        HEADER_SIZE + (fp as usize & (self.buckets - 1)) * 4
    }

    /// Calls `f` on each piece of an entry's data from `skip` bytes on, `len` bytes in all.
    fn walk_data(&self, e: u32, skip: usize, len: usize, mut f: impl FnMut(&[u8]) -> bool) {
        let (mut b, mut pos, end) = (self.eget(e, E_FIRST), 0usize, skip + len);
        let mut steps = 0;
        while pos < end && b != NIL && steps <= self.blocks {
            let at = self.block(b);
            let (from, to) = (pos.max(skip), (pos + BLOCK_SIZE).min(end));
            if from < to && !f(&self.r[at + from - pos..at + to - pos]) {
                return;
            }
            pos += BLOCK_SIZE;
            b = self.link(b);
            steps += 1;
        }
    }

    fn key_matches(&self, e: u32, key: &[u8]) -> bool {
        if self.eget(e, E_KEY_LEN) as usize != key.len() {
            return false;
        }
        let mut offset = 0;
        let mut same = true;
        self.walk_data(e, 0, key.len(), |piece| {
            same = piece == &key[offset..offset + piece.len()];
            offset += piece.len();
            same
        });
        same
    }

    /// The entry of `key` (a candidate matches on its fingerprint alone: it has no data).
    fn find(&self, fp: u64, key: &[u8]) -> Option<u32> {
        let mut e = rd32(self.r, self.bucket_at(fp));
        let mut steps = 0;
        while e != NIL && steps <= self.entries {
            if self.eget64(e, E_FP) == fp
                && (self.eget(e, E_STATE) == CANDIDATE || self.key_matches(e, key))
            {
                return Some(e);
            }
            e = self.eget(e, E_HNEXT);
            steps += 1;
        }
        None
    }

    fn lru_unlink(&mut self, e: u32) {
        let (prev, next) = (self.eget(e, E_PREV), self.eget(e, E_NEXT));
        if prev == NIL {
            wr32(self.r, H_LRU_HEAD, next);
        } else {
            self.eset(prev, E_NEXT, next);
        }
        if next == NIL {
            wr32(self.r, H_LRU_TAIL, prev);
        } else {
            self.eset(next, E_PREV, prev);
        }
    }

    fn lru_push_head(&mut self, e: u32) {
        let head = rd32(self.r, H_LRU_HEAD);
        self.eset(e, E_PREV, NIL);
        self.eset(e, E_NEXT, head);
        if head == NIL {
            wr32(self.r, H_LRU_TAIL, e);
        } else {
            self.eset(head, E_PREV, e);
        }
        wr32(self.r, H_LRU_HEAD, e);
    }

    fn touch(&mut self, e: u32) {
        if rd32(self.r, H_LRU_HEAD) != e {
            self.lru_unlink(e);
            self.lru_push_head(e);
        }
    }

    /// Takes a free entry for `fp` (evicting the least recently used if none is free) and
    /// links it into its bucket and at the LRU head.
    fn new_entry(&mut self, fp: u64, evicted: &mut u32) -> Option<u32> {
        if rd32(self.r, H_FREE_ENTRY) == NIL {
            let tail = rd32(self.r, H_LRU_TAIL);
            if tail == NIL {
                return None;
            }
            self.remove_entry(tail);
            *evicted += 1;
        }
        let e = rd32(self.r, H_FREE_ENTRY);
        if e == NIL {
            return None;
        }
        wr32(self.r, H_FREE_ENTRY, self.eget(e, E_HNEXT));
        let at = self.e_at(e);
        self.r[at..at + ENTRY_SIZE].fill(0);
        self.eset(e, E_FIRST, NIL);
        self.eset64(e, E_FP, fp);
        let bucket = self.bucket_at(fp);
        self.eset(e, E_HNEXT, rd32(self.r, bucket));
        wr32(self.r, bucket, e);
        self.lru_push_head(e);
        let used = rd32(self.r, H_USED) + 1;
        wr32(self.r, H_USED, used);
        Some(e)
    }

    fn free_blocks_of(&mut self, e: u32) {
        let mut b = self.eget(e, E_FIRST);
        let mut steps = 0;
        while b != NIL && steps < self.blocks {
            let next = self.link(b);
            self.set_link(b, rd32(self.r, H_FREE_BLOCK));
            wr32(self.r, H_FREE_BLOCK, b);
            let free = rd32(self.r, H_FREE_BLOCKS) + 1;
            wr32(self.r, H_FREE_BLOCKS, free);
            b = next;
            steps += 1;
        }
        self.eset(e, E_FIRST, NIL);
    }

    /// Unlinks an entry from its bucket and the LRU list and frees it with its blocks.
    fn remove_entry(&mut self, e: u32) {
        let bucket = self.bucket_at(self.eget64(e, E_FP));
        let mut cur = rd32(self.r, bucket);
        if cur == e {
            wr32(self.r, bucket, self.eget(e, E_HNEXT));
        } else {
            let mut steps = 0;
            while cur != NIL && steps <= self.entries {
                let next = self.eget(cur, E_HNEXT);
                if next == e {
                    let after = self.eget(e, E_HNEXT);
                    self.eset(cur, E_HNEXT, after);
                    break;
                }
                cur = next;
                steps += 1;
            }
        }
        self.lru_unlink(e);
        self.free_blocks_of(e);
        self.eset(e, E_STATE, FREE);
        self.eset(e, E_HNEXT, rd32(self.r, H_FREE_ENTRY));
        wr32(self.r, H_FREE_ENTRY, e);
        let used = rd32(self.r, H_USED).saturating_sub(1);
        wr32(self.r, H_USED, used);
    }

    /* ------------------------------------------------------------ operations */

    /// A fresh hit of `key` (fresh until `fresh_until` by the memo or a TTL lookup): whether
    /// to serve the hot copy, fill it from this request's fetch, or just count the hit. A copy
    /// is served while `now < min(its fresh_until, stored_at + max_age_ms)`; a key proves hot
    /// at its second hit within the fresh period of the first.
    pub fn plan(
        &mut self,
        fp: u64,
        key: &[u8],
        now: u64,
        fresh_until: u64,
        max_age_ms: u64,
    ) -> Plan {
        self.busy(|t| {
            let Some(e) = t.find(fp, key) else {
                let mut evicted = 0;
                if let Some(e) = t.new_entry(fp, &mut evicted) {
                    t.eset(e, E_STATE, CANDIDATE);
                    t.eset(e, E_HITS, 1);
                    t.eset64(e, E_FRESH_UNTIL, fresh_until);
                }
                t.count_evictions(evicted);
                return Plan::Nothing;
            };
            t.touch(e);
            let state = t.eget(e, E_STATE);
            if state == READY && t.servable(e, now, max_age_ms) {
                return Plan::Serve;
            }
            if state == CANDIDATE && now >= t.eget64(e, E_FRESH_UNTIL) {
                // The first hit's fresh period is over: count again from this one.
                t.eset(e, E_HITS, 1);
                t.eset64(e, E_FRESH_UNTIL, fresh_until);
                return Plan::Nothing;
            }
            if now < t.eget64(e, E_FILL_UNTIL) {
                return Plan::Nothing; // another request is filling it
            }
            t.eset64(e, E_FILL_UNTIL, now + FILL_CLAIM_MS);
            Plan::Fill
        })
    }

    fn servable(&self, e: u32, now: u64, max_age_ms: u64) -> bool {
        let stored_at = self.eget64(e, E_STORED_AT);
        now < self.eget64(e, E_FRESH_UNTIL) && now < stored_at.saturating_add(max_age_ms)
    }

    /// Copies the value of `key` out if it is still servable: `out(len)` gives a buffer of
    /// `len` bytes (or `None`: nothing is copied). Returns the length copied.
    pub fn read<'b>(
        &mut self,
        fp: u64,
        key: &[u8],
        now: u64,
        max_age_ms: u64,
        out: impl FnOnce(usize) -> Option<&'b mut [u8]>,
    ) -> Option<usize> {
        self.busy(|t| {
            let e = t.find(fp, key)?;
            if t.eget(e, E_STATE) != READY || !t.servable(e, now, max_age_ms) {
                return None;
            }
            t.touch(e);
            let (key_len, len) = (key.len(), t.eget(e, E_VALUE_LEN) as usize);
            let dst = out(len)?;
            let mut at = 0;
            t.walk_data(e, key_len, len, |piece| {
                dst[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
                true
            });
            (at == len).then_some(len)
        })
    }

    /// Stores `value` for `key`, fresh until `fresh_until`, replacing any copy, evicting least
    /// recently used entries for room. The entry is marked READY last.
    pub fn store(
        &mut self,
        fp: u64,
        key: &[u8],
        value: &[u8],
        now: u64,
        fresh_until: u64,
    ) -> Stored {
        let total = key.len() + value.len();
        if total > self.max_data_len() || total == 0 {
            return Stored::TooBig;
        }
        let need = total.div_ceil(BLOCK_SIZE) as u32;
        self.busy(|t| {
            let mut evicted = 0;
            if let Some(old) = t.find(fp, key) {
                t.remove_entry(old);
            }
            let Some(e) = t.new_entry(fp, &mut evicted) else {
                return Stored::TooBig;
            };
            while rd32(t.r, H_FREE_BLOCKS) < need {
                let tail = rd32(t.r, H_LRU_TAIL);
                if tail == NIL || tail == e {
                    // Only the new entry is left (cannot happen below max_data_len).
                    t.remove_entry(e);
                    t.count_evictions(evicted);
                    return Stored::TooBig;
                }
                t.remove_entry(tail);
                evicted += 1;
            }
            // Take `need` blocks off the free list, in order, and write the data into them.
            let first = rd32(t.r, H_FREE_BLOCK);
            let mut b = first;
            let mut last = NIL;
            let mut written = 0;
            let data = |i: usize| {
                if i < key.len() {
                    key[i]
                } else {
                    value[i - key.len()]
                }
            };
            for _ in 0..need {
                let at = t.block(b);
                let n = BLOCK_SIZE.min(total - written);
                if written + n <= key.len() {
                    t.r[at..at + n].copy_from_slice(&key[written..written + n]);
                } else if written >= key.len() {
                    let v = written - key.len();
                    t.r[at..at + n].copy_from_slice(&value[v..v + n]);
                } else {
                    for i in 0..n {
                        t.r[at + i] = data(written + i);
                    }
                }
                written += n;
                last = b;
                b = t.link(b);
            }
            wr32(t.r, H_FREE_BLOCK, b);
            t.set_link(last, NIL);
            let free = rd32(t.r, H_FREE_BLOCKS) - need;
            wr32(t.r, H_FREE_BLOCKS, free);
            t.eset(e, E_FIRST, first);
            t.eset(e, E_KEY_LEN, key.len() as u32);
            t.eset(e, E_VALUE_LEN, value.len() as u32);
            t.eset64(e, E_STORED_AT, now);
            t.eset64(e, E_FRESH_UNTIL, fresh_until);
            t.eset(e, E_HITS, 2);
            t.eset(e, E_STATE, READY);
            let stored = rd64(t.r, H_STORED) + 1;
            wr64(t.r, H_STORED, stored);
            t.count_evictions(evicted);
            Stored::Stored { evicted }
        })
    }

    /// Lets another request fill `key` at once (this one's fetch stored nothing).
    pub fn release_fill(&mut self, fp: u64, key: &[u8]) {
        self.busy(|t| {
            if let Some(e) = t.find(fp, key) {
                t.eset64(e, E_FILL_UNTIL, 0);
            }
        })
    }

    /// Drops `key`'s copy (and hit count). Returns whether there was one.
    pub fn remove(&mut self, fp: u64, key: &[u8]) -> bool {
        self.busy(|t| match t.find(fp, key) {
            Some(e) => {
                t.remove_entry(e);
                true
            }
            None => false,
        })
    }

    fn count_evictions(&mut self, n: u32) {
        let total = rd64(self.r, H_EVICTIONS) + u64::from(n);
        wr64(self.r, H_EVICTIONS, total);
    }

    /// Full consistency check (on reload): every index in range, the LRU list and the bucket
    /// chains cover exactly the used entries, each used block belongs to one entry and every
    /// other block is on the free list.
    pub fn verify(&self) -> Result<(), HotError> {
        let bad = HotError::Damaged;
        let n = self.entries as u32;
        let nb = self.blocks as u32;
        let mut on_lru = vec![false; self.entries];
        let (mut e, mut prev, mut count) = (rd32(self.r, H_LRU_HEAD), NIL, 0u32);
        while e != NIL {
            if e >= n || on_lru[e as usize] {
                return Err(bad("LRU list"));
            }
            if self.eget(e, E_PREV) != prev || self.eget(e, E_STATE) == FREE {
                return Err(bad("LRU links"));
            }
            on_lru[e as usize] = true;
            count += 1;
            prev = e;
            e = self.eget(e, E_NEXT);
        }
        if prev != rd32(self.r, H_LRU_TAIL) || count != rd32(self.r, H_USED) {
            return Err(bad("LRU tail or count"));
        }
        let mut in_bucket = 0u32;
        for bucket in 0..self.buckets {
            let mut e = rd32(self.r, HEADER_SIZE + bucket * 4);
            let mut steps = 0;
            while e != NIL {
                if e >= n || !on_lru[e as usize] || steps > self.entries {
                    return Err(bad("bucket chain"));
                }
                if self.eget64(e, E_FP) as usize & (self.buckets - 1) != bucket {
                    return Err(bad("entry in the wrong bucket"));
                }
                in_bucket += 1;
                steps += 1;
                e = self.eget(e, E_HNEXT);
            }
        }
        if in_bucket != count {
            return Err(bad("bucket count"));
        }
        let mut owner = vec![false; self.blocks];
        let mut claim = |b: u32| -> Result<(), HotError> {
            if b >= nb || owner[b as usize] {
                return Err(bad("block shared or out of range"));
            }
            owner[b as usize] = true;
            Ok(())
        };
        for e in 0..n {
            if !on_lru[e as usize] {
                continue;
            }
            let state = self.eget(e, E_STATE);
            let total = self.eget(e, E_KEY_LEN) as usize + self.eget(e, E_VALUE_LEN) as usize;
            let want = if state == READY {
                total.div_ceil(BLOCK_SIZE)
            } else if state == CANDIDATE {
                0
            } else {
                return Err(bad("entry state"));
            };
            let (mut b, mut got) = (self.eget(e, E_FIRST), 0);
            while b != NIL {
                claim(b)?;
                got += 1;
                b = self.link(b);
            }
            if got != want {
                return Err(bad("entry block count"));
            }
        }
        let (mut b, mut free) = (rd32(self.r, H_FREE_BLOCK), 0u32);
        while b != NIL {
            claim(b)?;
            free += 1;
            b = self.link(b);
        }
        if free != rd32(self.r, H_FREE_BLOCKS) || owner.iter().any(|o| !o) {
            return Err(bad("free blocks"));
        }
        let (mut e, mut free_entries) = (rd32(self.r, H_FREE_ENTRY), 0u32);
        while e != NIL {
            if e >= n || on_lru[e as usize] || free_entries > n {
                return Err(bad("free entries"));
            }
            free_entries += 1;
            e = self.eget(e, E_HNEXT);
        }
        if free_entries + count != n {
            return Err(bad("entry count"));
        }
        Ok(())
    }
}

/// Serving bound of a copy: the earlier of the key's fresh period and the max age.
pub fn serve_until(stored_at: u64, fresh_until: u64, max_age_ms: u64) -> u64 {
    fresh_until.min(stored_at.saturating_add(max_age_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(blocks: usize) -> Vec<u8> {
        vec![0u8; HEADER_SIZE + blocks * BYTES_PER_BLOCK + 7]
    }

    /// Reads through a buffer the test owns.
    fn get(t: &mut HotTable, key: &[u8], now: u64, max_age: u64) -> Option<Vec<u8>> {
        let fp = fingerprint(t.seed(), key);
        let mut store = vec![0u8; 1 << 20];
        let len = t.read(fp, key, now, max_age, |n| store.get_mut(..n))?;
        store.truncate(len);
        Some(store)
    }

    fn put(t: &mut HotTable, key: &[u8], value: &[u8], now: u64, fresh_until: u64) -> Stored {
        let fp = fingerprint(t.seed(), key);
        t.store(fp, key, value, now, fresh_until)
    }

    fn plan(t: &mut HotTable, key: &[u8], now: u64, fresh_until: u64) -> Plan {
        let fp = fingerprint(t.seed(), key);
        t.plan(fp, key, now, fresh_until, 1000)
    }

    #[test]
    fn second_hit_within_fresh_period_fills_then_serves() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 7).unwrap();
        assert_eq!(plan(&mut t, b"k", 1000, 5000), Plan::Nothing);
        assert_eq!(plan(&mut t, b"k", 1100, 5000), Plan::Fill);
        // A concurrent hit while the fill is claimed does not fill again.
        assert_eq!(plan(&mut t, b"k", 1150, 5000), Plan::Nothing);
        assert_eq!(
            put(&mut t, b"k", b"value", 1200, 5000),
            Stored::Stored { evicted: 0 }
        );
        assert_eq!(plan(&mut t, b"k", 1300, 5000), Plan::Serve);
        assert_eq!(get(&mut t, b"k", 1300, 1000).unwrap(), b"value");
        // Past the max age: not served, and the next hit refills.
        assert_eq!(get(&mut t, b"k", 2200, 1000), None);
        assert_eq!(plan(&mut t, b"k", 2200, 5000), Plan::Fill);
        t.verify().unwrap();
    }

    #[test]
    fn first_hit_period_over_counts_again() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 7).unwrap();
        assert_eq!(plan(&mut t, b"k", 1000, 2000), Plan::Nothing);
        assert_eq!(plan(&mut t, b"k", 2500, 6000), Plan::Nothing);
        assert_eq!(plan(&mut t, b"k", 2600, 6000), Plan::Fill);
    }

    #[test]
    fn never_served_past_fresh_period() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 7).unwrap();
        put(&mut t, b"k", b"v", 1000, 1500);
        assert!(get(&mut t, b"k", 1499, 10_000).is_some());
        assert!(get(&mut t, b"k", 1500, 10_000).is_none());
        assert_eq!(serve_until(1000, 1500, 10_000), 1500);
        assert_eq!(serve_until(1000, 9000, 1000), 2000);
    }

    #[test]
    fn binary_and_multi_block_values_round_trip() {
        let mut r = region(256);
        let mut t = HotTable::init(&mut r, 9).unwrap();
        let value: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        let key = vec![b'x'; 3000]; // the key itself spans two blocks
        assert!(matches!(
            put(&mut t, &key, &value, 0, 10_000),
            Stored::Stored { .. }
        ));
        assert_eq!(get(&mut t, &key, 1, 1000).unwrap(), value);
        let stats = t.stats();
        assert_eq!(
            stats.free_blocks as usize,
            256 - (3000 + 100_000usize).div_ceil(BLOCK_SIZE)
        );
        // Replacing frees the old blocks.
        put(&mut t, &key, b"short", 2, 10_000);
        assert_eq!(get(&mut t, &key, 3, 1000).unwrap(), b"short");
        assert_eq!(t.stats().free_blocks, 256 - 2);
        t.verify().unwrap();
    }

    #[test]
    fn keys_are_compared_not_just_fingerprints() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 9).unwrap();
        let fp = fingerprint(t.seed(), b"a");
        t.store(fp, b"a", b"A", 0, 10_000);
        let mut buf = [0u8; 8];
        // Same fingerprint, other key: nothing served.
        assert_eq!(t.read(fp, b"b", 1, 1000, |n| buf.get_mut(..n)), None);
        assert_eq!(t.read(fp, b"a", 1, 1000, |n| buf.get_mut(..n)), Some(1));
    }

    #[test]
    fn full_table_evicts_least_recently_used() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 1).unwrap();
        let value = vec![7u8; BLOCK_SIZE * 3]; // 4 blocks with the key
        for i in 0..4u64 {
            put(&mut t, format!("k{i}").as_bytes(), &value, i, 10_000);
        }
        // k0 used again: k1 is now the least recently used.
        assert!(get(&mut t, b"k0", 10, 1000).is_some());
        assert_eq!(
            put(&mut t, b"k4", &value, 11, 10_000),
            Stored::Stored { evicted: 1 }
        );
        assert!(get(&mut t, b"k1", 12, 1000).is_none());
        for k in ["k0", "k2", "k3", "k4"] {
            assert!(get(&mut t, k.as_bytes(), 12, 1000).is_some(), "{k}");
        }
        assert_eq!(t.stats().evictions, 1);
        t.verify().unwrap();
        // Too big for a quarter of the table: refused.
        assert_eq!(
            put(&mut t, b"big", &vec![0; BLOCK_SIZE * 5], 13, 10_000),
            Stored::TooBig
        );
        // Many small keys: entries are recycled, never an error.
        for i in 0..1000u64 {
            assert_eq!(
                plan(&mut t, format!("c{i}").as_bytes(), 20 + i, 5000),
                Plan::Nothing
            );
            put(&mut t, format!("s{i}").as_bytes(), b"x", 20 + i, 5000);
        }
        t.verify().unwrap();
    }

    #[test]
    fn remove_drops_the_copy() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 1).unwrap();
        put(&mut t, b"k", b"v", 0, 10_000);
        let fp = fingerprint(t.seed(), b"k");
        assert!(t.remove(fp, b"k"));
        assert!(!t.remove(fp, b"k"));
        assert!(get(&mut t, b"k", 1, 1000).is_none());
        t.verify().unwrap();
    }

    #[test]
    fn a_writer_dying_mid_update_is_detected_and_rebuilt() {
        let mut r = region(64);
        {
            let mut t = HotTable::init(&mut r, 5).unwrap();
            put(&mut t, b"k", b"v", 0, 10_000);
        }
        // What a process killed inside `busy` leaves behind.
        wr32(&mut r, H_BUSY, 1);
        assert!(matches!(
            HotTable::attach(&mut r),
            Err(HotError::Damaged(_))
        ));
        let t = HotTable::rebuild(&mut r).unwrap();
        assert_eq!(t.seed(), 5);
        assert_eq!(t.stats().rebuilds, 1);
        t.verify().unwrap();
        let mut t = HotTable::attach(&mut r).unwrap();
        assert!(get(&mut t, b"k", 1, 1000).is_none());
    }

    #[test]
    fn verify_finds_broken_links() {
        let mut r = region(64);
        {
            let mut t = HotTable::init(&mut r, 5).unwrap();
            put(&mut t, b"k", &[1; 5000], 0, 10_000);
            t.verify().unwrap();
        }
        // A block on both an entry and the free list.
        let (buckets, blocks) = geometry(r.len()).unwrap();
        let t = HotTable::view(&mut r, buckets, blocks);
        let first = t.eget(0, E_FIRST);
        wr32(&mut r, H_FREE_BLOCK, first);
        let t = HotTable::attach(&mut r).unwrap();
        assert!(t.verify().is_err());
    }

    #[test]
    fn other_layouts_and_sizes_are_refused() {
        let mut r = region(64);
        assert_eq!(HotTable::attach(&mut r).err(), Some(HotError::Layout));
        HotTable::init(&mut r, 1).unwrap();
        let mut shorter = r[..r.len() - BYTES_PER_BLOCK].to_vec();
        assert_eq!(HotTable::attach(&mut shorter).err(), Some(HotError::Length));
        let mut tiny = vec![0u8; 100];
        assert_eq!(HotTable::init(&mut tiny, 1).err(), Some(HotError::TooSmall));
    }
}
