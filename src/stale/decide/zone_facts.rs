//! What the lock zone says of a key before any lookup, read under the zone's mutex.

use super::super::waiters::owner_alive;
use crate::flow::ZoneFacts;
use crate::nginx::zone::ZoneRef;

const NOTHING: ZoneFacts = ZoneFacts {
    memo_fresh_until: None,
    pass_left_ms: None,
    lock: None,
};

/// The key's memo (with `memo`), else its pass mark and lock. A memo found is kept in this
/// worker's copy under `memo_epoch`, read before the table (`crate::memocache`); `born`
/// receives when the memo's entry was born, if the table knows.
pub fn locked_facts(
    zone: ZoneRef,
    key: &[u8],
    memo: bool,
    memo_epoch: Option<u32>,
    now: u64,
    born: &mut Option<u64>,
) -> ZoneFacts {
    let facts = zone
        .with_key(key, |t, fp| {
            if let Some((until, memo_born)) = memo.then(|| t.memo_get_born(fp, now)).flatten() {
                // A fresh hit needs nothing else from the table.
                *born = memo_born;
                return ZoneFacts {
                    memo_fresh_until: Some(until),
                    ..NOTHING
                };
            }
            // A lock whose worker died (crash, kill -9) is let go at once, not at its expiry.
            t.release_if_owner_dead(fp, now, owner_alive);
            ZoneFacts {
                memo_fresh_until: None,
                pass_left_ms: t.pass_left_ms(fp, now),
                lock: t.lock_state(fp, now).map(|l| (l.kind, l.token.get())),
            }
        })
        .unwrap_or(NOTHING);
    if let (Some(epoch), Some(until)) = (memo_epoch, facts.memo_fresh_until) {
        zone.memos.put(key, epoch, now, (until, *born));
    }
    facts
}
