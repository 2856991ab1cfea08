//! `stale_cache_http`: the `Age` of hits the freshness memo answers without a lookup.
//!
//! The memo's slot keeps, beside "fresh until", when the entry was born (its age 0, in ms;
//! `LockTable::memo_set_born`): it is written with the memo after a lookup found the entry
//! fresh, and read with it on a memo hit: age = now - birth. Only in the mode, so the
//! drop-in configurations' memo is as before.

/// When an entry `age` seconds old at `now` (ms) was born.
pub fn born(age: Option<u64>, now: u64) -> Option<u64> {
    age.map(|age| now.saturating_sub(age.saturating_mul(1000)))
}

/// The age (seconds) at `now` of an entry born at `born` (ms).
pub fn age(born: Option<u64>, now: u64) -> Option<u64> {
    born.map(|born| now.saturating_sub(born) / 1000)
}
