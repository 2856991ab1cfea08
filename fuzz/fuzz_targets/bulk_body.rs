//! BulkBody, as the value-mode filter drives it: payload and trailer split the same
//! way whatever the reads, counts stay within each read, and the trailer is enforced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::resp::{BodySplit, BulkBody};
use stale_cache_fuzz::{pattern_and_stream, split};

#[derive(Debug, PartialEq)]
struct Outcome {
    payload: Vec<u8>,
    /// Bytes taken as payload or trailer.
    consumed: usize,
    complete: bool,
    failed: bool,
}

fn run(len: usize, reads: &[&[u8]]) -> Outcome {
    let mut body = BulkBody::new(len);
    let mut out = Outcome {
        payload: Vec::new(),
        consumed: 0,
        complete: false,
        failed: false,
    };
    for read in reads {
        let before = body.remaining_payload();
        let Ok(BodySplit { payload, consumed }) = body.feed(read) else {
            out.failed = true;
            break;
        };
        assert!(payload <= consumed && consumed <= read.len());
        assert!(consumed <= payload + 2, "at most a CRLF after the payload");
        assert_eq!(body.remaining_payload(), before - payload);
        out.payload.extend_from_slice(&read[..payload]);
        out.consumed += consumed;
        if body.is_complete() {
            out.complete = true;
            // Whatever follows belongs to the next reply.
            assert_eq!(
                body.feed(read),
                Ok(BodySplit {
                    payload: 0,
                    consumed: 0
                })
            );
        } else {
            assert_eq!(consumed, read.len(), "stopped early before the end");
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((len, pattern, stream)) = pattern_and_stream(data) else {
        return;
    };
    // Lengths around the input size matter; 5 bits of the first byte plus a slack.
    let len = usize::from(len) * 3 % (stream.len() + 3);

    let payload_len = len.min(stream.len());
    let trailer = &stream[payload_len..stream.len().min(len + 2)];
    let trailer_ok = b"\r\n".starts_with(trailer);
    let expected = Outcome {
        payload: stream[..payload_len].to_vec(),
        consumed: if trailer_ok {
            payload_len + trailer.len()
        } else {
            0
        },
        complete: trailer_ok && trailer.len() == 2,
        failed: !trailer_ok,
    };

    let check = |reads: &[&[u8]]| {
        let got = run(len, reads);
        if expected.failed {
            // Where it fails depends on the reads; that it fails does not.
            assert!(got.failed, "{got:?}");
            assert!(got.payload.len() <= payload_len);
        } else {
            assert_eq!(got, expected);
        }
    };
    check(&[stream]);
    check(&split(stream, pattern));
    check(&stream.chunks(1).collect::<Vec<_>>());
});
