//! A worker's own copy of the freshness memos it read from the shared lock table.
//!
//! A fresh hit by memo used to take the zone's mutex, hash the key with the table's keyed
//! SipHash and touch the entry's LRU position; most hits of a busy key are served by the same
//! worker again and again, so each worker keeps the memos it read, by key, in a small
//! direct-mapped table of its own. An entry is good while the table's memo epoch
//! (`LockTable::memo_epoch`, bumped by every clear or shortening of a memo in any worker) is
//! the one it was read under and its freshness has not run out: nothing it says can then be
//! wrong by more than the shared memo itself would be. A copy is used for a second at most
//! ([`MAX_COPY_MS`]), so busy keys still refresh their place in the table's LRU list. Keys
//! are compared whole, so a collision of the cheap bucket hash only costs a miss (the shared
//! table's path).

use core::cell::RefCell;

/// Buckets per zone and worker: a few busy keys take most hits.
const BUCKETS: usize = 128;

/// Keys longer than this are not kept (they are rare, and each bucket keeps its key).
const MAX_KEPT_KEY: usize = 1024;

/// Longest life of a copy: a busy key still reads the shared table (and refreshes its LRU
/// position there) about once a second per worker, and whatever a copy could miss (an
/// evicted memo set again shorter, an epoch wrapped round) lasts no longer than this.
pub const MAX_COPY_MS: u64 = 1000;

#[derive(Default)]
struct Kept {
    key: Vec<u8>,
    epoch: u32,
    fresh_until_ms: u64,
    /// When the copy stops being used: the memo's end, or [`MAX_COPY_MS`] after it was read.
    good_until_ms: u64,
    born_ms: Option<u64>,
}

/// See the module documentation. Single-threaded (an nginx worker): interior mutability.
#[derive(Default)]
pub struct MemoCache {
    buckets: RefCell<Vec<Kept>>,
}

/// A kept memo: fresh until, and when its entry was born if known.
pub type KeptMemo = (u64, Option<u64>);

impl MemoCache {
    /// The memo kept for `key`, if read under `epoch` and still fresh at `now_ms`.
    #[inline]
    pub fn get(&self, key: &[u8], epoch: u32, now_ms: u64) -> Option<KeptMemo> {
        let buckets = self.buckets.borrow();
        let kept = buckets.get(bucket(key))?;
        (kept.epoch == epoch && kept.good_until_ms > now_ms && kept.key == key)
            .then_some((kept.fresh_until_ms, kept.born_ms))
    }

    /// Keeps `key`'s memo, read from the shared table under `epoch` (read before the table)
    /// at `now_ms`, for [`MAX_COPY_MS`] at most; `get` still answers the memo's own time.
    pub fn put(&self, key: &[u8], epoch: u32, now_ms: u64, (fresh_until_ms, born_ms): KeptMemo) {
        if key.len() > MAX_KEPT_KEY {
            return;
        }
        let mut buckets = self.buckets.borrow_mut();
        if buckets.is_empty() {
            buckets.resize_with(BUCKETS, Kept::default);
        }
        let kept = &mut buckets[bucket(key)];
        kept.key.clear();
        kept.key.extend_from_slice(key);
        kept.epoch = epoch;
        kept.fresh_until_ms = fresh_until_ms;
        kept.good_until_ms = fresh_until_ms.min(now_ms.saturating_add(MAX_COPY_MS));
        kept.born_ms = born_ms;
    }
}

/// The key's bucket: a multiplicative hash of its 8-byte words (not keyed: a crafted key can
/// only evict another from this worker's copy, which then reads the shared table).
#[inline]
fn bucket(key: &[u8]) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = key.len() as u64;
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    (h >> 32) as usize % BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_while_epoch_and_freshness_hold() {
        let cache = MemoCache::default();
        assert_eq!(cache.get(b"k", 1, 0), None);
        cache.put(b"k", 1, 4_500, (5_000, Some(1_000)));
        assert_eq!(cache.get(b"k", 1, 4_999), Some((5_000, Some(1_000))));
        // Its freshness ran out.
        assert_eq!(cache.get(b"k", 1, 5_000), None);
        // A longer memo: the copy answers its time, for MAX_COPY_MS after it was read.
        cache.put(b"k", 1, 10, (60_000, None));
        assert_eq!(
            cache.get(b"k", 1, 10 + MAX_COPY_MS - 1),
            Some((60_000, None))
        );
        assert_eq!(cache.get(b"k", 1, 10 + MAX_COPY_MS), None);
        // A memo was cleared or shortened somewhere since it was read.
        assert_eq!(cache.get(b"k", 2, 10), None);
        // Another key, even one in the same bucket, is not this one.
        assert_eq!(cache.get(b"other", 1, 10), None);
    }

    #[test]
    fn a_bucket_keeps_the_last_key() {
        let cache = MemoCache::default();
        // Find two keys sharing a bucket.
        let keys: Vec<Vec<u8>> = (0..4 * BUCKETS)
            .map(|i| format!("key{i}").into_bytes())
            .collect();
        let (first, second) = keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| {
                keys[i + 1..]
                    .iter()
                    .find(|o| bucket(o) == bucket(k))
                    .map(|o| (k.clone(), o.clone()))
            })
            .expect("two keys share a bucket");
        cache.put(&first, 0, 0, (100, None));
        cache.put(&second, 0, 0, (200, None));
        assert_eq!(cache.get(&first, 0, 1), None);
        assert_eq!(cache.get(&second, 0, 1), Some((200, None)));
    }

    #[test]
    fn long_keys_are_not_kept() {
        let cache = MemoCache::default();
        let long = vec![b'x'; MAX_KEPT_KEY + 1];
        cache.put(&long, 0, 0, (100, None));
        assert_eq!(cache.get(&long, 0, 1), None);
        let fits = vec![b'y'; MAX_KEPT_KEY];
        cache.put(&fits, 0, 0, (100, None));
        assert_eq!(cache.get(&fits, 0, 1), Some((100, None)));
    }

    #[test]
    fn buckets_spread() {
        let used: std::collections::HashSet<usize> = (0..BUCKETS)
            .map(|i| bucket(format!("/api/item/{i}").as_bytes()))
            .collect();
        assert!(
            used.len() > BUCKETS / 2,
            "{} of {BUCKETS} buckets",
            used.len()
        );
    }
}
