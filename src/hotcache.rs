//! The hot tier's shared-memory table (`stale_cache_hot_zone`): the exact bytes srcache
//! fetched from Redis for the hottest keys of this node, with LRU eviction. Pure logic over a
//! byte region; `crate::stale::hot` maps it into nginx's shared memory, under the zone's
//! mutex.
//!
//! Layout (every position is an index or an offset into the region, never a pointer, so the
//! region means the same in every process that maps it and across reloads):
//!
//! ```text
//! header (128 bytes) | owners: pins per process | buckets: u32 per bucket
//!   | entries: 72 bytes each | block links: u32 per block | (page alignment)
//!   | blocks: BLOCK_SIZE bytes each
//! ```
//!
//! Serving without copies: a request may *pin* an entry and hand the kernel its blocks
//! directly (sendfile from the file behind the region, or writev from the mapping). A pinned
//! entry that is evicted, replaced or removed is *retired*: out of every list, its blocks kept
//! until its last pin goes. Pins are counted per entry and listed per process in an *owner*
//! record, so the pins of a process that died are found and dropped. Blocks are handed to
//! `store`'s `prepare` before they are written, so the caller can detach the old pages from
//! the file first (what the kernel still sends of a previous entry keeps its own pages).
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
pub const MAGIC: u64 = u64::from_le_bytes(*b"SWRHOT02");
pub const LAYOUT_VERSION: u32 = 2;
pub const HEADER_SIZE: usize = 128;
pub const ENTRY_SIZE: usize = 72;
/// Data block size: one page, so that a block's page can be detached from the file on its
/// own, and blocks start on page boundaries (the block area is page-aligned in the region).
pub const BLOCK_SIZE: usize = 4096;
/// Owner records: processes that may hold pins at the same time.
pub const OWNERS: usize = 32;
/// Distinct entries one process can have pinned at once (more: served by copying).
pub const PINS_PER_OWNER: usize = 62;
const OWNER_SIZE: usize = 16 + PINS_PER_OWNER * 8;
const OWNERS_AT: usize = HEADER_SIZE;
const BUCKETS_AT: usize = OWNERS_AT + OWNERS * OWNER_SIZE;
/// Bytes per block in all (block, its link, an entry and a bucket).
pub const BYTES_PER_BLOCK: usize = BLOCK_SIZE + 4 + ENTRY_SIZE + 4;
pub const MIN_BLOCKS: usize = 8;
const NIL: u32 = u32::MAX;

const FREE: u32 = 0;
const CANDIDATE: u32 = 1;
const READY: u32 = 2;
/// Out of every list, kept for its pins.
const RETIRED: u32 = 3;

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
/// Bumped by every rebuild: pins taken before it refer to entries that are gone.
const H_GEN: usize = 96;
const H_RETIRED: usize = 100;
const H_SERVED_IN_PLACE: usize = 104;
const H_SERVED_COPIED: usize = 112;
/// Candidates (hit counts, no data) evicted; `H_EVICTIONS` counts stored responses only.
const H_CANDIDATE_EVICTIONS: usize = 120;

// Owner record fields.
const O_PID: usize = 0;
const O_GEN: usize = 4;
const O_USED: usize = 8;
const O_PINS: usize = 16;

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
const E_PINS: usize = 64;

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
    /// Not a fresh hit: Redis is away and this request fills its key on this node; what its
    /// store subrequest carries is kept here if Redis refuses it (`crate::stale::local`).
    KeepStore,
}

/// What a store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored, after evicting this many stored responses (candidates evicted not counted).
    Stored { evicted: u32 },
    /// Larger than a quarter of the table: never stored.
    TooBig,
    /// Not now: the room is held by responses still being sent (pinned).
    NoRoom,
}

/// A pinned entry: its blocks stay as they are until [`HotTable::unpin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub entry: u32,
    pub generation: u32,
    pub value_len: usize,
}

/// Counters of the table (constant time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotStats {
    pub blocks: u32,
    pub free_blocks: u32,
    pub entries_used: u32,
    /// Stored responses evicted to make room.
    pub evictions: u64,
    /// Candidates (hit counts of keys not proven hot, no data) evicted to make room.
    pub candidate_evictions: u64,
    pub stored: u64,
    pub rebuilds: u64,
    /// Entries out of the table still held by responses being sent.
    pub retired: u32,
    /// Responses served from the table: sent in place (pinned) or copied out.
    pub served_in_place: u64,
    pub served_copied: u64,
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
    // One block's worth of slack for the page alignment of the block area.
    let blocks = len.checked_sub(BUCKETS_AT + BLOCK_SIZE)? / BYTES_PER_BLOCK;
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

    /// The length of a region holding `blocks` blocks.
    pub fn region_len(blocks: usize) -> usize {
        BUCKETS_AT + BLOCK_SIZE + blocks * BYTES_PER_BLOCK
    }

    fn view(r: &'a mut [u8], buckets: usize, blocks: usize) -> Self {
        let entries_at = BUCKETS_AT + buckets * 4;
        let links_at = entries_at + blocks * ENTRY_SIZE;
        let blocks_at = (links_at + blocks * 4).next_multiple_of(BLOCK_SIZE);
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
        t.r[OWNERS_AT..BUCKETS_AT].fill(0);
        t.lay_out(seed, 0, 0, true);
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
    /// out a new one over anything else of the right size. The owner records are kept, under
    /// a new generation: blocks that responses pinned before the rebuild are still being
    /// sent, so nothing is stored until those pins are gone (`store` answers `NoRoom`).
    pub fn rebuild(region: &'a mut [u8]) -> Result<Self, HotError> {
        let (buckets, blocks) = geometry(region.len()).ok_or(HotError::TooSmall)?;
        let ours = rd64(region, H_MAGIC) == MAGIC;
        let seed = rd64(region, H_SEED);
        let (rebuilds, generation) = if ours {
            (rd64(region, H_REBUILDS), rd32(region, H_GEN))
        } else {
            region[OWNERS_AT..BUCKETS_AT].fill(0);
            (0, 0)
        };
        let mut t = Self::view(region, buckets, blocks);
        t.lay_out(seed, rebuilds + 1, generation.wrapping_add(1), !ours);
        Ok(t)
    }

    /// Lays out an empty table. `fresh`: the region is new or not a table of this layout
    /// (its header is cleared first). Otherwise (a rebuild) the identity stays and the busy
    /// word is set before anything else, so a process dying inside leaves a table that is
    /// recognised as damaged and rebuilt again, with its owner records and counters.
    fn lay_out(&mut self, seed: u64, rebuilds: u64, generation: u32, fresh: bool) {
        let len = self.r.len();
        if fresh {
            self.r[..HEADER_SIZE].fill(0);
        }
        wr32(self.r, H_BUSY, 1);
        wr64(self.r, H_LEN, len as u64);
        wr32(self.r, H_BUCKETS, self.buckets as u32);
        wr32(self.r, H_ENTRIES, self.entries as u32);
        wr32(self.r, H_BLOCKS, self.blocks as u32);
        wr64(self.r, H_SEED, seed);
        wr64(self.r, H_REBUILDS, rebuilds);
        for b in 0..self.buckets {
            wr32(self.r, BUCKETS_AT + b * 4, NIL);
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
        wr32(self.r, H_GEN, generation);
        wr32(self.r, H_RETIRED, 0);
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
            candidate_evictions: rd64(self.r, H_CANDIDATE_EVICTIONS),
            stored: rd64(self.r, H_STORED),
            rebuilds: rd64(self.r, H_REBUILDS),
            retired: rd32(self.r, H_RETIRED),
            served_in_place: rd64(self.r, H_SERVED_IN_PLACE),
            served_copied: rd64(self.r, H_SERVED_COPIED),
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
        BUCKETS_AT + (fp as usize & (self.buckets - 1)) * 4
    }

    /// Calls `f(offset, len)` for each stretch of an entry's data from `skip` bytes on, `len`
    /// bytes in all, as offsets into the region; blocks that follow each other in the region
    /// make one stretch.
    fn walk_runs(&self, e: u32, skip: usize, len: usize, mut f: impl FnMut(usize, usize)) {
        let (mut run_at, mut run_len) = (0usize, 0usize);
        self.walk_data(e, skip, len, |piece| {
            let at = piece.as_ptr() as usize - self.r.as_ptr() as usize;
            if run_len > 0 && run_at + run_len == at {
                run_len += piece.len();
            } else {
                if run_len > 0 {
                    f(run_at, run_len);
                }
                (run_at, run_len) = (at, piece.len());
            }
            true
        });
        if run_len > 0 {
            f(run_at, run_len);
        }
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
        // (A pinned entry evicted is retired and keeps its slot: evict until one is free.)
        let mut steps = 0;
        while rd32(self.r, H_FREE_ENTRY) == NIL && steps <= self.entries {
            let tail = rd32(self.r, H_LRU_TAIL);
            if tail == NIL {
                return None;
            }
            *evicted += self.evict(tail);
            steps += 1;
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

    /// Puts an entry's chain of blocks back at the head of the free list in its order, so
    /// the next store of the same size gets the same (often adjacent) blocks.
    fn free_blocks_of(&mut self, e: u32) {
        let first = self.eget(e, E_FIRST);
        if first == NIL {
            return;
        }
        let (mut last, mut count) = (first, 1u32);
        while self.link(last) != NIL && (count as usize) < self.blocks {
            last = self.link(last);
            count += 1;
        }
        self.set_link(last, rd32(self.r, H_FREE_BLOCK));
        wr32(self.r, H_FREE_BLOCK, first);
        let free = rd32(self.r, H_FREE_BLOCKS) + count;
        wr32(self.r, H_FREE_BLOCKS, free);
        self.eset(e, E_FIRST, NIL);
    }

    /// Frees an entry out of every list (and its blocks).
    fn free_entry(&mut self, e: u32) {
        self.free_blocks_of(e);
        self.eset(e, E_STATE, FREE);
        self.eset(e, E_PINS, 0);
        self.eset(e, E_HNEXT, rd32(self.r, H_FREE_ENTRY));
        wr32(self.r, H_FREE_ENTRY, e);
    }

    /// Unlinks an entry from its bucket and the LRU list and frees it with its blocks, or
    /// retires it while responses still send from it.
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
        let used = rd32(self.r, H_USED).saturating_sub(1);
        wr32(self.r, H_USED, used);
        if self.eget(e, E_PINS) > 0 {
            self.eset(e, E_STATE, RETIRED);
            self.eset(e, E_HNEXT, NIL);
            let retired = rd32(self.r, H_RETIRED) + 1;
            wr32(self.r, H_RETIRED, retired);
        } else {
            self.free_entry(e);
        }
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
            let served = rd64(t.r, H_SERVED_COPIED) + 1;
            wr64(t.r, H_SERVED_COPIED, served);
            (at == len).then_some(len)
        })
    }

    /// Stores `value` for `key`, fresh until `fresh_until`, replacing any copy, evicting least
    /// recently used entries for room. The entry is marked READY last. `prepare(offset, len)`
    /// is called for each stretch of blocks before they are written.
    pub fn store(
        &mut self,
        fp: u64,
        key: &[u8],
        value: &[u8],
        now: u64,
        fresh_until: u64,
        mut prepare: impl FnMut(usize, usize),
    ) -> Stored {
        let total = key.len() + value.len();
        if total > self.max_data_len() || total == 0 {
            return Stored::TooBig;
        }
        if self.pins_of_an_older_generation() {
            return Stored::NoRoom;
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
                    // Only the new entry is left: the rest is held by pinned responses.
                    t.remove_entry(e);
                    return Stored::NoRoom;
                }
                evicted += t.evict(tail);
            }
            // Take `need` blocks off the free list, in order, and write the data into them.
            let first = rd32(t.r, H_FREE_BLOCK);
            let (mut b, mut run_at, mut run_len) = (first, 0usize, 0usize);
            for _ in 0..need {
                let at = t.block(b);
                if run_len > 0 && run_at + run_len == at {
                    run_len += BLOCK_SIZE;
                } else {
                    if run_len > 0 {
                        prepare(run_at, run_len);
                    }
                    (run_at, run_len) = (at, BLOCK_SIZE);
                }
                b = t.link(b);
            }
            if run_len > 0 {
                prepare(run_at, run_len);
            }
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
            Stored::Stored { evicted }
        })
    }

    /// A copy kept while Redis is away (stored with its whole life as `fresh_until`, no max
    /// age): its length, and whether it is still fresh (`unfresh_ms`, its stale window, not
    /// yet reached), if it was stored at or after `since` and its life is not over.
    pub fn local_len(
        &self,
        fp: u64,
        key: &[u8],
        now: u64,
        since: u64,
        unfresh_ms: u64,
    ) -> Option<(usize, bool)> {
        let e = self.find(fp, key)?;
        let life_end = self.eget64(e, E_FRESH_UNTIL);
        let usable = self.eget(e, E_STATE) == READY
            && self.eget64(e, E_STORED_AT) >= since
            && now < life_end;
        usable.then(|| {
            let fresh = now.saturating_add(unfresh_ms) < life_end;
            (self.eget(e, E_VALUE_LEN) as usize, fresh)
        })
    }

    /// The length of `key`'s value if its copy is servable now.
    pub fn servable_len(&self, fp: u64, key: &[u8], now: u64, max_age_ms: u64) -> Option<usize> {
        let e = self.find(fp, key)?;
        (self.eget(e, E_STATE) == READY && self.servable(e, now, max_age_ms))
            .then(|| self.eget(e, E_VALUE_LEN) as usize)
    }

    /* ---------------------------------------------------------------- pins */

    fn o_at(o: usize) -> usize {
        OWNERS_AT + o * OWNER_SIZE
    }
    fn oget(&self, o: usize, f: usize) -> u32 {
        rd32(self.r, Self::o_at(o) + f)
    }
    fn oset(&mut self, o: usize, f: usize, v: u32) {
        wr32(self.r, Self::o_at(o) + f, v);
    }
    fn pin_at(o: usize, i: usize) -> usize {
        Self::o_at(o) + O_PINS + i * 8
    }
    fn used_pins(&self, o: usize) -> usize {
        (self.oget(o, O_USED) as usize).min(PINS_PER_OWNER)
    }

    /// Whether a live-looking owner still holds pins taken before the last rebuild.
    fn pins_of_an_older_generation(&self) -> bool {
        let generation = rd32(self.r, H_GEN);
        (0..OWNERS).any(|o| {
            self.oget(o, O_PID) != 0
                && self.oget(o, O_USED) > 0
                && self.oget(o, O_GEN) != generation
        })
    }

    /// Drops every pin of owner `o` and frees the record.
    fn release_owner(&mut self, o: usize) {
        if self.oget(o, O_GEN) == rd32(self.r, H_GEN) {
            for i in 0..self.used_pins(o) {
                let at = Self::pin_at(o, i);
                let (e, count) = (rd32(self.r, at), rd32(self.r, at + 4));
                if (e as usize) < self.entries {
                    self.drop_pins(e, count);
                }
            }
        }
        let at = Self::o_at(o);
        self.r[at..at + OWNER_SIZE].fill(0);
    }

    fn drop_pins(&mut self, e: u32, count: u32) {
        let pins = self.eget(e, E_PINS).saturating_sub(count);
        self.eset(e, E_PINS, pins);
        if pins == 0 && self.eget(e, E_STATE) == RETIRED {
            let retired = rd32(self.r, H_RETIRED).saturating_sub(1);
            wr32(self.r, H_RETIRED, retired);
            self.free_entry(e);
        }
    }

    /// An owner record for process `pid`'s pins, claimed once per process: a free one, or one
    /// whose process is gone (`alive(pid)` false: its pins are dropped). Starts looking at `hint`
    /// (the process's slot). `None`: no record (the process serves by copying).
    pub fn claim_owner(
        &mut self,
        hint: usize,
        pid: u32,
        alive: impl Fn(u32) -> bool,
    ) -> Option<usize> {
        self.busy(|t| {
            // A record already under this pid is a previous process's (pid reused): a process
            // claims once, before its first pin.
            let o = (0..OWNERS).find(|&o| t.oget(o, O_PID) == pid).or_else(|| {
                (0..OWNERS).map(|i| (hint + i) % OWNERS).find(|&o| {
                    let owner = t.oget(o, O_PID);
                    owner == 0 || !alive(owner)
                })
            })?;
            t.release_owner(o);
            t.oset(o, O_PID, pid);
            t.oset(o, O_GEN, rd32(t.r, H_GEN));
            Some(o)
        })
    }

    /// Drops the pins of processes that are gone. Returns how many records were freed.
    pub fn release_dead_owners(&mut self, alive: impl Fn(u32) -> bool) -> usize {
        self.busy(|t| {
            let mut released = 0;
            for o in 0..OWNERS {
                let owner = t.oget(o, O_PID);
                if owner != 0 && !alive(owner) {
                    t.release_owner(o);
                    released += 1;
                }
            }
            released
        })
    }

    /// Pins `key`'s copy for owner `o` (of process `pid`) if it is servable, and calls
    /// `run(offset, len)` for each stretch of its value in the region. `None`: no servable
    /// copy, or the owner cannot pin more (serve by copying).
    #[allow(clippy::too_many_arguments)]
    pub fn pin(
        &mut self,
        o: usize,
        pid: u32,
        fp: u64,
        key: &[u8],
        now: u64,
        max_age_ms: u64,
        run: impl FnMut(usize, usize),
    ) -> Option<Pin> {
        if o >= OWNERS || self.oget(o, O_PID) != pid {
            return None;
        }
        let e = self.find(fp, key)?;
        if self.eget(e, E_STATE) != READY || !self.servable(e, now, max_age_ms) {
            return None;
        }
        let generation = rd32(self.r, H_GEN);
        let used = self.used_pins(o);
        if self.oget(o, O_GEN) != generation {
            if used > 0 {
                return None; // its old pins still hold blocks of the previous table
            }
            self.oset(o, O_GEN, generation);
        }
        let slot = (0..used).find(|&i| rd32(self.r, Self::pin_at(o, i)) == e);
        if slot.is_none() && used >= PINS_PER_OWNER {
            return None;
        }
        self.busy(|t| {
            let i = slot.unwrap_or(used);
            let at = Self::pin_at(o, i);
            if slot.is_none() {
                wr32(t.r, at, e);
                wr32(t.r, at + 4, 0);
                t.oset(o, O_USED, used as u32 + 1);
            }
            let count = rd32(t.r, at + 4) + 1;
            wr32(t.r, at + 4, count);
            let pins = t.eget(e, E_PINS) + 1;
            t.eset(e, E_PINS, pins);
            t.touch(e);
            let served = rd64(t.r, H_SERVED_IN_PLACE) + 1;
            wr64(t.r, H_SERVED_IN_PLACE, served);
        });
        let value_len = self.eget(e, E_VALUE_LEN) as usize;
        self.walk_runs(e, key.len(), value_len, run);
        Some(Pin {
            entry: e,
            generation,
            value_len,
        })
    }

    /// Ends one pin taken by [`HotTable::pin`]; a retired entry's last pin frees it.
    pub fn unpin(&mut self, o: usize, pid: u32, pin: &Pin) {
        if o >= OWNERS || self.oget(o, O_PID) != pid {
            return;
        }
        let used = self.used_pins(o);
        let Some(i) = (0..used).find(|&i| rd32(self.r, Self::pin_at(o, i)) == pin.entry) else {
            return;
        };
        self.busy(|t| {
            let at = Self::pin_at(o, i);
            let count = rd32(t.r, at + 4).saturating_sub(1);
            if count == 0 {
                // Keep the list dense: the last pin moves into this slot.
                let last = Self::pin_at(o, used - 1);
                let moved = [rd32(t.r, last), rd32(t.r, last + 4)];
                wr32(t.r, at, moved[0]);
                wr32(t.r, at + 4, moved[1]);
                t.oset(o, O_USED, used as u32 - 1);
            } else {
                wr32(t.r, at + 4, count);
            }
            let current = t.oget(o, O_GEN) == rd32(t.r, H_GEN);
            if current && pin.generation == rd32(t.r, H_GEN) && (pin.entry as usize) < t.entries {
                t.drop_pins(pin.entry, 1);
            }
            if used == 1 && count == 0 {
                t.oset(o, O_GEN, rd32(t.r, H_GEN));
            }
        });
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

    /// Evicts `e` to make room, counted by what it held: a stored response, or a candidate
    /// (a hit count only; candidates come and go with every key seen once, so counting them
    /// as evicted responses would hide how often real copies are lost). Returns 1 for a
    /// stored response, 0 for a candidate.
    fn evict(&mut self, e: u32) -> u32 {
        let response = self.eget(e, E_STATE) != CANDIDATE;
        let at = if response {
            H_EVICTIONS
        } else {
            H_CANDIDATE_EVICTIONS
        };
        let total = rd64(self.r, at) + 1;
        wr64(self.r, at, total);
        self.remove_entry(e);
        u32::from(response)
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
            let state = self.eget(e, E_STATE);
            if self.eget(e, E_PREV) != prev || (state != READY && state != CANDIDATE) {
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
            let mut e = rd32(self.r, BUCKETS_AT + bucket * 4);
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
        let mut retired = 0u32;
        for e in 0..n {
            let state = self.eget(e, E_STATE);
            if state == RETIRED && !on_lru[e as usize] {
                if self.eget(e, E_PINS) == 0 {
                    return Err(bad("retired entry without pins"));
                }
                retired += 1;
            } else if !on_lru[e as usize] {
                continue;
            }
            let total = self.eget(e, E_KEY_LEN) as usize + self.eget(e, E_VALUE_LEN) as usize;
            let want = if state == READY || state == RETIRED {
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
        if free_entries + count + retired != n || retired != rd32(self.r, H_RETIRED) {
            return Err(bad("entry count"));
        }
        // Pins: each entry's count is the sum of the current generation's owner records.
        let generation = rd32(self.r, H_GEN);
        let mut pins = vec![0u32; self.entries];
        for o in 0..OWNERS {
            let used = self.oget(o, O_USED) as usize;
            if used > PINS_PER_OWNER || (self.oget(o, O_PID) == 0 && used > 0) {
                return Err(bad("owner record"));
            }
            if self.oget(o, O_GEN) != generation {
                continue;
            }
            for i in 0..used {
                let at = Self::pin_at(o, i);
                let (e, count) = (rd32(self.r, at), rd32(self.r, at + 4));
                if e >= n || count == 0 {
                    return Err(bad("pin"));
                }
                pins[e as usize] += count;
            }
        }
        for e in 0..n {
            let state = self.eget(e, E_STATE);
            let pinnable = state == READY || state == RETIRED;
            let have = if pinnable { self.eget(e, E_PINS) } else { 0 };
            if have != pins[e as usize] || (!pinnable && self.eget(e, E_PINS) != 0) {
                return Err(bad("pin counts"));
            }
        }
        Ok(())
    }
}

/// In a stored response (srcache's format: status line, headers, blank line, body): where
/// the body starts: after the first CRLF CRLF within `limit` bytes of `pieces`.
pub fn blank_line_end<'a>(pieces: impl Iterator<Item = &'a [u8]>, limit: usize) -> Option<usize> {
    const END: &[u8; 4] = b"\r\n\r\n";
    let (mut matched, mut at) = (0, 0);
    for piece in pieces {
        for &byte in piece {
            if at == limit {
                return None;
            }
            at += 1;
            matched = if byte == END[matched] {
                matched + 1
            } else if byte == b'\r' {
                1
            } else {
                0
            };
            if matched == END.len() {
                return Some(at);
            }
        }
    }
    None
}

/// The status code of a stored `HTTP/1.x NNN ...` line.
pub fn parse_status(head: &[u8]) -> Option<usize> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    code.iter()
        .all(u8::is_ascii_digit)
        .then(|| code.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Serving bound of a copy: the earlier of the key's fresh period and the max age.
pub fn serve_until(stored_at: u64, fresh_until: u64, max_age_ms: u64) -> u64 {
    fresh_until.min(stored_at.saturating_add(max_age_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(blocks: usize) -> Vec<u8> {
        vec![0u8; HotTable::region_len(blocks) + 7]
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
        t.store(fp, key, value, now, fresh_until, |_, _| {})
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
        let key = vec![b'x'; 5000]; // the key itself spans two blocks
        assert!(matches!(
            put(&mut t, &key, &value, 0, 10_000),
            Stored::Stored { .. }
        ));
        assert_eq!(get(&mut t, &key, 1, 1000).unwrap(), value);
        let stats = t.stats();
        assert_eq!(
            stats.free_blocks as usize,
            256 - (5000 + 100_000usize).div_ceil(BLOCK_SIZE)
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
        t.store(fp, b"a", b"A", 0, 10_000, |_, _| {});
        let mut buf = [0u8; 8];
        // Same fingerprint, other key: nothing served.
        assert_eq!(t.read(fp, b"b", 1, 1000, |n| buf.get_mut(..n)), None);
        assert_eq!(t.read(fp, b"a", 1, 1000, |n| buf.get_mut(..n)), Some(1));
    }

    #[test]
    fn candidates_evicted_are_not_counted_as_responses() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 1).unwrap();
        let entries = t.entries as u64;
        // Keys seen once each: candidates only, twice as many as the table holds.
        for i in 0..entries * 2 {
            assert_eq!(
                plan(&mut t, format!("c{i}").as_bytes(), i, 1 << 40),
                Plan::Nothing
            );
        }
        let s = t.stats();
        assert_eq!((s.evictions, s.candidate_evictions), (0, entries));
        // A stored response evicted by candidates counts as a response.
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 1).unwrap();
        put(&mut t, b"k", b"v", 0, 1 << 40);
        for i in 0..entries {
            plan(&mut t, format!("c{i}").as_bytes(), i + 1, 1 << 40);
        }
        let s = t.stats();
        assert_eq!((s.evictions, s.candidate_evictions), (1, 0));
        assert!(get(&mut t, b"k", 10, 1 << 40).is_none());
        t.verify().unwrap();
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
    fn a_local_copy_counts_from_its_store_to_its_fresh_end() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 1).unwrap();
        // Stored at 100 for a life of 105 s, the last 100 s of it stale.
        put(&mut t, b"k", b"v", 100, 105_100);
        let fp = fingerprint(t.seed(), b"k");
        // No max age: fresh for 5 s, then stale to the end of its life, to requests that
        // began before it was stored.
        assert_eq!(t.local_len(fp, b"k", 5_099, 100, 100_000), Some((1, true)));
        assert_eq!(t.local_len(fp, b"k", 5_100, 100, 100_000), Some((1, false)));
        assert_eq!(t.local_len(fp, b"k", 105_099, 0, 100_000), Some((1, false)));
        assert_eq!(t.local_len(fp, b"k", 105_100, 0, 100_000), None);
        assert_eq!(t.local_len(fp, b"k", 200, 101, 100_000), None);
        assert_eq!(t.local_len(fp, b"x", 200, 0, 100_000), None);
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
            put(&mut t, b"k", &[1; 9000], 0, 10_000);
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

    /// Pins `key` for owner `o` (pid 100 + o) and reads its value back through the stretches.
    fn pin(t: &mut HotTable, o: usize, key: &[u8], now: u64) -> Option<(Pin, Vec<(usize, usize)>)> {
        let fp = fingerprint(t.seed(), key);
        let mut runs = Vec::new();
        let pin = t.pin(o, 100 + o as u32, fp, key, now, 1000, |at, len| {
            runs.push((at, len))
        })?;
        Some((pin, runs))
    }

    fn bytes_of(r: &[u8], runs: &[(usize, usize)]) -> Vec<u8> {
        runs.iter()
            .flat_map(|&(at, len)| r[at..at + len].to_vec())
            .collect()
    }

    #[test]
    fn pinned_values_are_served_in_place_and_outlive_eviction() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let alive = |_| true;
        assert_eq!(t.claim_owner(0, 100, alive), Some(0));
        assert_eq!(t.claim_owner(0, 101, alive), Some(1));
        let value: Vec<u8> = (0..3 * BLOCK_SIZE as u32).map(|i| (i * 7) as u8).collect();
        let mut written = Vec::new();
        let fp = fingerprint(t.seed(), b"k0");
        t.store(fp, b"k0", &value, 0, 10_000, |at, len| {
            written.push((at, len))
        });
        // A fresh table hands out adjacent blocks: one stretch, page-aligned.
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].0 % BLOCK_SIZE, 0);
        let (p, runs) = pin(&mut t, 0, b"k0", 1).unwrap();
        assert_eq!(runs.len(), 1, "adjacent blocks make one stretch");
        assert_eq!(p.value_len, value.len());
        // Two pins of the same entry by two processes.
        let (p2, _) = pin(&mut t, 1, b"k0", 1).unwrap();
        t.verify().unwrap();
        // Fill the table: k0 is evicted but, pinned, keeps its blocks (retired).
        for i in 1..5u64 {
            put(&mut t, format!("k{i}").as_bytes(), &value, 2 + i, 10_000);
        }
        assert!(get(&mut t, b"k0", 10, 1000).is_none(), "evicted");
        assert_eq!(t.stats().retired, 1);
        t.verify().unwrap();
        drop(t);
        assert_eq!(bytes_of(&r, &runs), value, "the pinned bytes are untouched");
        let mut t = HotTable::attach(&mut r).unwrap();
        let free = t.stats().free_blocks;
        t.unpin(0, 100, &p);
        assert_eq!(
            t.stats().free_blocks,
            free,
            "still pinned by the other process"
        );
        t.unpin(1, 101, &p2);
        assert_eq!(t.stats().retired, 0);
        assert_eq!(t.stats().free_blocks, free + 4);
        t.verify().unwrap();
    }

    #[test]
    fn a_pinned_entry_replaced_or_removed_is_retired() {
        let mut r = region(64);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let o = t.claim_owner(5, 105, |_| true).unwrap();
        assert_eq!(o, 5, "the hint is the first record tried");
        put(&mut t, b"k", &[1; 5000], 0, 10_000);
        let (p, runs) = pin(&mut t, o, b"k", 1).unwrap();
        put(&mut t, b"k", &[2; 5000], 2, 10_000);
        let (q, _) = pin(&mut t, o, b"k", 3).unwrap();
        assert_ne!(p.entry, q.entry);
        assert!(t.remove(fingerprint(t.seed(), b"k"), b"k"));
        assert_eq!(t.stats().retired, 2);
        t.verify().unwrap();
        drop(t);
        assert_eq!(bytes_of(&r, &runs)[..5000], [1; 5000]);
        let mut t = HotTable::attach(&mut r).unwrap();
        t.unpin(o, 105, &p);
        t.unpin(o, 105, &q);
        assert_eq!(t.stats().retired, 0);
        assert_eq!(t.stats().free_blocks, 64);
        t.verify().unwrap();
    }

    #[test]
    fn pins_of_a_dead_process_are_dropped() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let o = t.claim_owner(0, 100, |_| true).unwrap();
        put(&mut t, b"k", &[1; 5000], 0, 10_000);
        pin(&mut t, o, b"k", 1).unwrap();
        t.remove(fingerprint(t.seed(), b"k"), b"k");
        assert_eq!(t.stats().retired, 1);
        // pid 100 died (kill -9): its record and pins are dropped.
        assert_eq!(t.release_dead_owners(|pid| pid != 100), 1);
        assert_eq!(t.stats().retired, 0);
        assert_eq!(t.stats().free_blocks, 16);
        t.verify().unwrap();
        // A record of a dead process is taken over by a new one.
        let o = t.claim_owner(0, 100, |_| true).unwrap();
        put(&mut t, b"k", &[1; 5000], 2, 10_000);
        pin(&mut t, o, b"k", 3).unwrap();
        let taken = t.claim_owner(o, 200, |pid| pid != 100).unwrap();
        assert_eq!(taken, o);
        assert_eq!(t.stats().free_blocks, 16 - 2);
        t.verify().unwrap();
    }

    #[test]
    fn after_a_rebuild_nothing_is_stored_while_older_pins_remain() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let o = t.claim_owner(0, 100, |_| true).unwrap();
        put(&mut t, b"k", &[1; 5000], 0, 10_000);
        let (p, _) = pin(&mut t, o, b"k", 1).unwrap();
        drop(t);
        wr32(&mut r, H_BUSY, 1);
        let mut t = HotTable::rebuild(&mut r).unwrap();
        t.verify().unwrap();
        assert_eq!(put(&mut t, b"j", b"v", 2, 10_000), Stored::NoRoom);
        // The old generation's pin cannot be extended either.
        put(&mut t, b"k", &[1; 5000], 0, 10_000);
        t.unpin(o, 100, &p);
        assert!(matches!(
            put(&mut t, b"j", b"v", 3, 10_000),
            Stored::Stored { .. }
        ));
        assert!(pin(&mut t, o, b"j", 4).is_some());
        t.verify().unwrap();
    }

    #[test]
    fn a_process_dying_inside_a_rebuild_leaves_a_table_the_next_rebuild_repairs() {
        let mut r = region(16);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let o = t.claim_owner(0, 100, |_| true).unwrap();
        put(&mut t, b"k", &[1; 5000], 0, 10_000);
        let (p, runs) = pin(&mut t, o, b"k", 1).unwrap();
        drop(t);
        // A first rebuild (a writer died), then a process killed in the middle of the next
        // one: its busy word is set and the entries half cleared.
        wr32(&mut r, H_BUSY, 1);
        HotTable::rebuild(&mut r).unwrap();
        wr32(&mut r, H_BUSY, 1);
        let (buckets, blocks) = geometry(r.len()).unwrap();
        let at = HotTable::view(&mut r, buckets, blocks).entries_at;
        r[at..at + 3 * ENTRY_SIZE].fill(0xAB);
        assert!(matches!(
            HotTable::attach(&mut r),
            Err(HotError::Damaged(_))
        ));
        let mut t = HotTable::rebuild(&mut r).unwrap();
        t.verify().unwrap();
        assert_eq!(t.seed(), 3, "the seed is kept");
        assert_eq!(t.stats().rebuilds, 2);
        assert_eq!(t.stats().stored, 1, "counters are kept");
        // The owner record and its pin survived both: nothing is stored over the pinned
        // blocks until it is gone.
        assert_eq!(put(&mut t, b"j", &[2; 9000], 2, 10_000), Stored::NoRoom);
        drop(t);
        assert_eq!(bytes_of(&r, &runs), vec![1; 5000]);
        let mut t = HotTable::attach(&mut r).unwrap();
        t.unpin(o, 100, &p);
        assert!(matches!(
            put(&mut t, b"j", &[2; 9000], 3, 10_000),
            Stored::Stored { .. }
        ));
        t.verify().unwrap();
    }

    #[test]
    fn an_owner_pins_a_bounded_number_of_entries() {
        let mut r = region(256);
        let mut t = HotTable::init(&mut r, 3).unwrap();
        let o = t.claim_owner(0, 100, |_| true).unwrap();
        for i in 0..=PINS_PER_OWNER {
            put(&mut t, format!("k{i}").as_bytes(), b"v", 0, 10_000);
        }
        for i in 0..PINS_PER_OWNER {
            assert!(pin(&mut t, o, format!("k{i}").as_bytes(), 1).is_some());
        }
        // The same entry again is one more count, not one more slot.
        assert!(pin(&mut t, o, b"k0", 1).is_some());
        assert!(pin(&mut t, o, format!("k{PINS_PER_OWNER}").as_bytes(), 1).is_none());
        // Another process's record is not usable by this one.
        assert!(pin(&mut t, o + 1, b"k0", 1).is_none());
        t.verify().unwrap();
    }

    #[test]
    fn stored_responses_split_at_the_blank_line() {
        let stored = b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\nbody\r\n\r\n";
        assert_eq!(blank_line_end([&stored[..]].into_iter(), 1000), Some(32));
        // Across pieces, and after a lone CR.
        let pieces: [&[u8]; 3] = [b"HTTP/1.1 200 OK\r\nX: \r\r", b"\n\r", b"\nbody"];
        assert_eq!(blank_line_end(pieces.into_iter(), 1000), Some(25));
        assert_eq!(blank_line_end(pieces.into_iter(), 20), None);
        assert_eq!(
            blank_line_end([&b"HTTP/1.1 200 OK\r\n"[..]].into_iter(), 99),
            None
        );
        assert_eq!(parse_status(stored), Some(404));
        assert_eq!(parse_status(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK"), None);
    }

    /// Random operations against the table, checked after each one: the table stays
    /// consistent, every pinned value keeps its bytes until unpinned, and a servable copy
    /// reads back as what was stored.
    #[test]
    fn random_operations_keep_the_table_whole_and_pinned_bytes_intact() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut r = region(40);
        HotTable::init(&mut r, 11).unwrap();
        let mut stored: std::collections::HashMap<String, Vec<u8>> = Default::default();
        // Three processes; one that dies is replaced by a new one (another pid).
        let mut pids = [100u32, 101, 102];
        let mut owners: [Option<usize>; 3] = [None; 3];
        // (process, pin, the bytes it must keep, its stretches)
        let mut pins: Vec<(usize, Pin, Vec<u8>, Vec<(usize, usize)>)> = Vec::new();
        let mut saw_retired = 0;
        for step in 0..4_000u64 {
            let now = 1_000 + step;
            let key = format!("k{}", next(12));
            let p = next(3) as usize;
            let alive = |pid: u32| pids.contains(&pid);
            let damaged = matches!(HotTable::attach(&mut r), Err(HotError::Damaged(_)));
            let mut t = if damaged {
                stored.clear();
                HotTable::rebuild(&mut r).unwrap()
            } else {
                HotTable::attach(&mut r).unwrap()
            };
            match next(100) {
                0..=29 => {
                    let len = 1 + next(3 * BLOCK_SIZE as u64) as usize;
                    let value: Vec<u8> = (0..len).map(|i| (i as u64 ^ step) as u8).collect();
                    let fp = fingerprint(t.seed(), key.as_bytes());
                    stored.remove(&key);
                    let out = t.store(fp, key.as_bytes(), &value, now, u64::MAX, |_, _| {});
                    if let Stored::Stored { .. } = out {
                        stored.insert(key.clone(), value);
                    }
                }
                30..=59 => {
                    if owners[p].is_none() {
                        owners[p] = t.claim_owner(p, pids[p], alive);
                    }
                    if let Some(o) = owners[p] {
                        let fp = fingerprint(t.seed(), key.as_bytes());
                        let mut runs = Vec::new();
                        let pinned = t.pin(o, pids[p], fp, key.as_bytes(), now, 1000, |at, n| {
                            runs.push((at, n))
                        });
                        if let Some(pin) = pinned {
                            pins.push((p, pin, stored[&key].clone(), runs));
                        }
                    }
                }
                60..=79 if !pins.is_empty() => {
                    let (p, pin, _, _) = pins.swap_remove(next(pins.len() as u64) as usize);
                    t.unpin(owners[p].unwrap(), pids[p], &pin);
                }
                80..=89 => {
                    let fp = fingerprint(t.seed(), key.as_bytes());
                    t.remove(fp, key.as_bytes());
                    stored.remove(&key);
                }
                90..=94 => {
                    let fp = fingerprint(t.seed(), key.as_bytes());
                    let serve = t.servable_len(fp, key.as_bytes(), now, 1000).is_some();
                    let planned = t.plan(fp, key.as_bytes(), now, u64::MAX, 1000);
                    assert_eq!(planned == Plan::Serve, serve, "step {step}");
                }
                96 => {
                    // A writer killed in the middle of an update: the next user rebuilds.
                    wr32(t.r, H_BUSY, 1);
                }
                95 => {
                    // kill -9: the process's pins are gone with it; its successor's first
                    // claim (or anyone's release) drops them from the table.
                    pins.retain(|(q, ..)| *q != p);
                    pids[p] += 1000;
                    owners[p] = None;
                    let alive = |pid: u32| pids.contains(&pid);
                    t.release_dead_owners(alive);
                }
                _ => {
                    if let Some(got) = get(&mut t, key.as_bytes(), now, 1000) {
                        assert_eq!(Some(&got), stored.get(&key), "step {step}");
                    }
                }
            }
            t.verify().unwrap_or_else(|e| panic!("step {step}: {e}"));
            saw_retired = saw_retired.max(t.stats().retired);
            drop(t);
            for (_, _, bytes, runs) in &pins {
                assert!(
                    bytes_of(&r, runs) == *bytes,
                    "pinned bytes changed at step {step}"
                );
            }
        }
        let mut t = HotTable::attach(&mut r).unwrap();
        for (p, pin, _, _) in pins.drain(..) {
            t.unpin(owners[p].unwrap(), pids[p], &pin);
        }
        assert_eq!(
            t.stats().retired,
            0,
            "every retired entry freed with its last pin"
        );
        t.verify().unwrap();
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
