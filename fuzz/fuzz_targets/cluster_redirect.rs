//! parse_redirect, which reads the error replies of cluster nodes: never panics, accepts
//! only a well-formed `MOVED`/`ASK <slot> <ip:port>` (slot in range, a literal IP, a port),
//! and what it accepts prints back to an equivalent line; the slot of any key is in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::cluster::{hash_part, parse_redirect, slot, NodeAddr, Redirect, SLOTS};

fuzz_target!(|data: &[u8]| {
    assert!(usize::from(slot(data)) < SLOTS);
    let part = hash_part(data);
    assert!(!part.is_empty() || data.is_empty());
    match parse_redirect(data) {
        Some(Redirect::Moved { slot, node }) | Some(Redirect::Ask { slot, node }) => {
            assert!(usize::from(slot) < SLOTS);
            assert!(data.starts_with(b"MOVED ") || data.starts_with(b"ASK "));
            // The address is canonical: parsing it again gives itself.
            assert_eq!(NodeAddr::parse(node.0.as_bytes()), Some(node.clone()));
            let kind = if data.starts_with(b"MOVED") { "MOVED" } else { "ASK" };
            let again = format!("{kind} {slot} {}", node.0);
            assert_eq!(
                parse_redirect(again.as_bytes()).map(|r| matches!(r, Redirect::Moved { .. })),
                Some(kind == "MOVED")
            );
        }
        Some(Redirect::TryAgain) => assert!(data.starts_with(b"TRYAGAIN")),
        Some(Redirect::ClusterDown) => assert!(data.starts_with(b"CLUSTERDOWN")),
        None => {}
    }
});
