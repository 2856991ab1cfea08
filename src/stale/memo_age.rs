//! `stale_cache_http`: the `Age` of hits the freshness memo answers without a lookup.
//!
//! The memo slot holds one time (fresh until), so the entry's age travels in a second memo
//! slot of the same zone, under the memo key with `\0age` appended: its "fresh until" is the
//! time the entry's age was 0 (ms), shifted far into the future so that it stays live as long
//! as the zone keeps it. It is written with the memo (after a lookup found the entry fresh)
//! and read on a memo hit: age = now - that time. Only in the mode, so the drop-in
//! configurations' memo is as before.

use crate::nginx::zone::ZoneRef;

/// Puts any time (ms since the epoch, below 2^43: until about 2248) in the future.
const SHIFT: u64 = 1 << 43;

fn age_key(memo_key: &[u8]) -> Vec<u8> {
    [memo_key, b"\0age"].concat()
}

/// The entry of `memo_key` was `age` seconds old at `now` (ms).
pub fn remember(zone: ZoneRef, memo_key: &[u8], age: Option<u64>, now: u64) {
    let Some(age) = age else {
        return;
    };
    let born = now.saturating_sub(age.saturating_mul(1000));
    zone.with_key(&age_key(memo_key), |t, fp| {
        t.memo_set(fp, born + SHIFT, now)
    });
}

/// The age (seconds) at `now` of the entry of `memo_key`, when remembered.
pub fn recall(zone: ZoneRef, memo_key: &[u8], now: u64) -> Option<u64> {
    let shifted = zone
        .with_key(&age_key(memo_key), |t, fp| t.memo_get(fp, now))
        .flatten()?;
    let born = shifted.checked_sub(SHIFT)?;
    Some(now.saturating_sub(born) / 1000)
}
