//! ReplyFramer, as the raw-reply filter drives it: whatever the reads look like, it
//! must find the reference reader's reply boundaries, fail exactly where the reference
//! fails, and never claim more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::reference::{self, Stop};
use stale_cache_fuzz::resp::{ProtocolError, ReplyFramer};
use stale_cache_fuzz::{pattern_and_stream, split};

/// Feeds whole reads; returns the outcome and the replies completed.
fn feed_all(reads: &[&[u8]]) -> (Result<(), ProtocolError>, usize, bool) {
    let mut framer = ReplyFramer::new();
    for read in reads {
        match framer.feed(read) {
            Ok(used) => assert_eq!(used, read.len(), "feed consumes whole reads"),
            Err(err) => {
                // Sticky: the stream position is lost for good.
                assert_eq!(framer.feed(b"+OK\r\n"), Err(err));
                assert!(!framer.is_at_boundary());
                return (Err(err), framer.complete_replies(), false);
            }
        }
    }
    (Ok(()), framer.complete_replies(), framer.is_at_boundary())
}

/// Asks for one more reply at a time, as a pipeline of commands does; returns the
/// stream offsets where replies ended.
fn frame_one_by_one(reads: &[&[u8]]) -> (Result<(), ProtocolError>, Vec<usize>) {
    let mut framer = ReplyFramer::new();
    let mut ends = Vec::new();
    let mut offset = 0;
    for read in reads {
        let mut pos = 0;
        loop {
            let target = framer.complete_replies() + 1;
            let used = match framer.feed_until(&read[pos..], target) {
                Ok(used) => used,
                Err(err) => return (Err(err), ends),
            };
            assert!(used <= read.len() - pos, "consumed more than given");
            pos += used;
            if framer.complete_replies() == target {
                ends.push(offset + pos);
                assert!(framer.is_at_boundary());
                // Already there: a reached (or lower) target consumes nothing.
                assert_eq!(framer.feed_until(&read[pos..], target), Ok(0));
                assert_eq!(framer.feed_until(&read[pos..], 0), Ok(0));
            } else {
                assert_eq!(pos, read.len(), "stopped early without a reply");
            }
            if pos == read.len() {
                break;
            }
        }
        offset += read.len();
    }
    (Ok(()), ends)
}

fuzz_target!(|data: &[u8]| {
    let Some((_, pattern, stream)) = pattern_and_stream(data) else {
        return;
    };
    let (replies, stop) = reference::stream(stream);
    let expected_ends: Vec<usize> = replies.iter().map(|&(_, end)| end).collect();

    let (whole, complete, at_boundary) = feed_all(&[stream]);
    match stop {
        Some(Stop::Invalid) => assert!(whole.is_err(), "reference rejects, framer accepts"),
        _ => {
            assert_eq!(whole, Ok(()), "reference accepts, framer rejects");
            assert_eq!(at_boundary, stop.is_none());
        }
    }
    assert_eq!(complete, expected_ends.len());
    if let Err(err) = whole {
        let message = err.to_string();
        assert!(!message.contains(['\r', '\n']), "{message}");
    }

    // The same verdict however the stream is cut into reads.
    let reads = split(stream, pattern);
    assert_eq!(feed_all(&reads), (whole, complete, at_boundary));
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(feed_all(&bytes), (whole, complete, at_boundary));
    if stream.len() <= 128 {
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                feed_all(&[a, b]),
                (whole, complete, at_boundary),
                "cut {cut}"
            );
        }
    }

    assert_eq!(frame_one_by_one(&reads), (whole, expected_ends.clone()));
    assert_eq!(frame_one_by_one(&[stream]), (whole, expected_ends));
});
