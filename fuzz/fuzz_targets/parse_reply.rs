//! parse_reply (the tree oracle the unit tests lean on) against the reference reader,
//! the framer's first boundary, and re-encoding; and encode_command, and the header
//! encoders the nginx layer writes requests with, against parse_reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::reference::{self, Stop, Value};
use stale_cache_fuzz::resp::{
    encode_array_header, encode_bulk_header, encode_command, parse_reply, Reply, ReplyFramer,
};

fn same(reply: &Reply, value: &Value) -> bool {
    match (reply, value) {
        (Reply::Simple(a), Value::Simple(b))
        | (Reply::Error(a), Value::Error(b))
        | (Reply::Bulk(a), Value::Bulk(b)) => a == b,
        (Reply::Integer(a), Value::Integer(b)) => a == b,
        (Reply::Nil, Value::Nil) | (Reply::NilArray, Value::NilArray) => true,
        (Reply::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        _ => false,
    }
}

/// The shortest wire form of `reply`.
fn encode(reply: &Reply, out: &mut Vec<u8>) {
    let line = |out: &mut Vec<u8>, kind: u8, text: &[u8]| {
        out.push(kind);
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    };
    match reply {
        Reply::Simple(text) => line(out, b'+', text),
        Reply::Error(text) => line(out, b'-', text),
        Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        Reply::Nil => line(out, b'$', b"-1"),
        Reply::NilArray => line(out, b'*', b"-1"),
        Reply::Bulk(payload) => {
            encode_bulk_header(out, payload.len());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Array(items) => {
            encode_array_header(out, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_reply(data);
    match (&parsed, reference::value(data, 0, 0)) {
        (Ok(Some((reply, used))), Ok((value, end))) => {
            assert_eq!(*used, end);
            assert!(same(reply, &value), "{reply:?} != {value:?}");
        }
        (Ok(None), Err(Stop::Incomplete)) | (Err(_), Err(Stop::Invalid)) => {}
        (got, want) => panic!("parse_reply {got:?}, reference {want:?}"),
    }

    if let Ok(Some((reply, used))) = &parsed {
        let used = *used;
        assert!(used <= data.len());
        // The reply alone parses the same, and any shorter prefix is incomplete.
        assert_eq!(parse_reply(&data[..used]), Ok(Some((reply.clone(), used))));
        if used <= 256 {
            for cut in 0..used {
                assert_eq!(parse_reply(&data[..cut]), Ok(None), "prefix {cut}");
            }
        }
        // The framer puts the first boundary in the same place.
        let mut framer = ReplyFramer::new();
        assert_eq!(framer.feed_until(data, 1), Ok(used));
        // Re-encoded, it reads back the same, from no more bytes than the input used.
        let mut wire = Vec::new();
        encode(reply, &mut wire);
        assert!(wire.len() <= used);
        assert_eq!(parse_reply(&wire), Ok(Some((reply.clone(), wire.len()))));
    }

    // The input as command arguments separated by its first byte.
    if let Some((&sep, rest)) = data.split_first() {
        let args: Vec<&[u8]> = rest.split(|&b| b == sep).collect();
        let mut wire = Vec::new();
        encode_command(&mut wire, &args);
        let expected = Reply::Array(args.iter().map(|arg| Reply::Bulk(arg.to_vec())).collect());
        assert_eq!(parse_reply(&wire), Ok(Some((expected, wire.len()))));
        let mut pieces = Vec::new();
        encode_array_header(&mut pieces, args.len());
        for arg in &args {
            encode_bulk_header(&mut pieces, arg.len());
            pieces.extend_from_slice(arg);
            pieces.extend_from_slice(b"\r\n");
        }
        assert_eq!(pieces, wire);
    }
});
