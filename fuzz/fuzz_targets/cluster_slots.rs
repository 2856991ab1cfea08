//! SlotMap::from_cluster_slots and reply_len on untrusted bytes: never panic, agree with
//! the reference reader on where the first reply ends, say "incomplete" for every prefix of
//! a map they accept, and only map slots to addresses that parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::cluster::{reply_len, MapError, NodeAddr, NotResp, SlotMap, SLOTS};
use stale_cache_fuzz::reference::{self, Stop};

fuzz_target!(|data: &[u8]| {
    let len = reply_len(data);
    match SlotMap::from_cluster_slots(data) {
        Ok((map, used)) => {
            assert_eq!(len, Ok(Some(used)));
            assert!(used <= data.len());
            // The reference reader ends the reply at the same byte.
            if let Ok((_, end)) = reference::value(data, 0, 0) {
                assert_eq!(end, used);
            }
            for s in 0..SLOTS as u16 {
                if let Some(node) = map.primary(s) {
                    assert_eq!(NodeAddr::parse(node.0.as_bytes()).as_ref(), Some(node));
                }
            }
            assert!(map.covered() <= SLOTS);
            for cut in [0, used / 2, used.saturating_sub(1)] {
                if cut < used {
                    assert_eq!(
                        SlotMap::from_cluster_slots(&data[..cut]).map(|_| ()),
                        Err(MapError::Incomplete)
                    );
                }
            }
        }
        Err(MapError::Incomplete) => assert_eq!(len, Ok(None)),
        Err(MapError::ErrorReply) => assert!(data.starts_with(b"-")),
        Err(MapError::Invalid(_)) => {}
    }
    if let Err(Stop::Incomplete) = reference::value(data, 0, 0) {
        assert!(matches!(len, Ok(None) | Err(NotResp)));
    }
});
