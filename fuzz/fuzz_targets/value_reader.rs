//! ValueReader then BulkBody, driven as the value-mode upstream handlers drive them:
//! skip the setup replies, stop right after the value's head, stream its payload.
//! Whatever the reads, the result must match the reference reader's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::reference::{self, Head, Stop};
use stale_cache_fuzz::resp::{BulkBody, ValueHead, ValueReader, MAX_TEXT_LEN};
use stale_cache_fuzz::{pattern_and_stream, split};

#[derive(Debug, Default, PartialEq)]
struct Read {
    failed: bool,
    head: Option<ValueHead>,
    /// Stream offset just after the head line.
    head_end: Option<usize>,
    first_error: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Stream offset just after the bulk trailer.
    end: Option<usize>,
}

fn drive(skip: usize, reads: &[&[u8]]) -> Read {
    let mut reader = ValueReader::new(skip);
    let mut body: Option<BulkBody> = None;
    let mut out = Read::default();
    let mut offset = 0;
    for read in reads {
        let mut pos = 0;
        if out.head.is_none() {
            pos = match reader.feed(read) {
                Ok(used) => used,
                Err(_) => {
                    out.failed = true;
                    return out;
                }
            };
            assert!(pos <= read.len(), "consumed more than given");
            match reader.head() {
                None => assert_eq!(pos, read.len(), "no head yet, but bytes left"),
                Some(head) => {
                    out.head = Some(head.clone());
                    out.head_end = Some(offset + pos);
                    out.first_error = reader.first_skipped_error().map(<[u8]>::to_vec);
                    if let ValueHead::Bulk { len } = *head {
                        body = Some(BulkBody::new(len));
                    }
                    // Once the head is known the reader reads no further.
                    assert_eq!(reader.feed(&read[pos..]), Ok(0));
                }
            }
        }
        if let Some(body) = body.as_mut().filter(|body| !body.is_complete()) {
            let Ok(split) = body.feed(&read[pos..]) else {
                out.failed = true;
                return out;
            };
            assert!(split.payload <= split.consumed && split.consumed <= read.len() - pos);
            out.payload
                .extend_from_slice(&read[pos..pos + split.payload]);
            pos += split.consumed;
            if body.is_complete() {
                out.end = Some(offset + pos);
            }
        }
        offset += read.len();
    }
    out
}

/// What the reference reader says `drive` must find.
fn expect(skip: usize, stream: &[u8]) -> Read {
    let mut out = Read::default();
    let mut pos = 0;
    for _ in 0..skip {
        match reference::value(stream, pos, 0) {
            Ok((value, end)) => {
                if out.first_error.is_none() {
                    out.first_error = reference::first_error(&value).map(truncate);
                }
                pos = end;
            }
            Err(stop) => {
                out.failed = stop == Stop::Invalid;
                out.first_error = None;
                return out;
            }
        }
    }
    let (head, head_end) = match reference::head(stream, pos) {
        Ok(found) => found,
        Err(stop) => {
            out.failed = stop == Stop::Invalid;
            out.first_error = None;
            return out;
        }
    };
    out.head_end = Some(head_end);
    out.head = Some(match head {
        Head::Simple(text) => ValueHead::Simple(truncate(&text)),
        Head::Error(text) => ValueHead::Error(truncate(&text)),
        Head::Integer(n) => ValueHead::Integer(n),
        Head::Nil | Head::NilArray => ValueHead::Nil,
        Head::Array(_) => ValueHead::Array,
        Head::Bulk(len) => {
            let rest = &stream[head_end..];
            let payload_len = len.min(rest.len());
            out.payload = rest[..payload_len].to_vec();
            let trailer = &rest[payload_len..rest.len().min(len + 2)];
            if !b"\r\n".starts_with(trailer) {
                out.failed = true;
            } else if trailer.len() == 2 {
                out.end = Some(head_end + len + 2);
            }
            ValueHead::Bulk { len }
        }
    });
    out
}

fn truncate(text: &[u8]) -> Vec<u8> {
    text[..text.len().min(MAX_TEXT_LEN)].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((control, pattern, stream)) = pattern_and_stream(data) else {
        return;
    };
    // Setup commands before the value: none, SELECT, AUTH + SELECT, or a MULTI block.
    let skip = usize::from(control & 3);
    let expected = expect(skip, stream);

    let check = |reads: &[&[u8]]| {
        let got = drive(skip, reads);
        if expected.failed {
            // Payload bytes before a bad trailer may or may not have been passed on.
            assert!(got.failed, "reference rejects, reader accepts: {got:?}");
            assert_eq!(
                (&got.head, got.head_end),
                (&expected.head, expected.head_end)
            );
        } else {
            assert_eq!(got, expected);
        }
    };
    check(&[stream]);
    check(&split(stream, pattern));
    check(&stream.chunks(1).collect::<Vec<_>>());
    if stream.len() <= 128 {
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            check(&[a, b]);
        }
    }
});
