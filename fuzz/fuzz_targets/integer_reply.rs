//! parse_integer_reply, which reads the TTL lookup's subrequest body: it must agree
//! with the reference reader's first line, accept only `:<i64>\r\n`, and describe
//! every failure (protocol errors included) in one ASCII log line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stale_cache_fuzz::reference::{self, Head, Stop};
use stale_cache_fuzz::resp::{parse_integer_reply, ReplyError, ReplyKind, MAX_TEXT_LEN};

fuzz_target!(|data: &[u8]| {
    let got = parse_integer_reply(data);
    if let Err(err) = &got {
        let message = err.to_string();
        assert!(!message.contains(['\r', '\n']), "{message}");
        assert!(message.is_ascii());
    }
    let expected = match reference::head(data, 0) {
        Err(Stop::Incomplete) => Err(ReplyError::Incomplete),
        Err(Stop::Invalid) => {
            assert!(matches!(got, Err(ReplyError::Protocol(_))), "{got:?}");
            return;
        }
        Ok((Head::Integer(n), end)) if end == data.len() => Ok(n),
        Ok((Head::Integer(_), end)) => Err(ReplyError::TrailingData {
            extra: data.len() - end,
        }),
        Ok((Head::Error(text), _)) => Err(ReplyError::ErrorReply(
            text[..text.len().min(MAX_TEXT_LEN)].to_vec(),
        )),
        Ok((Head::Simple(_), _)) => Err(ReplyError::WrongType(ReplyKind::Simple)),
        Ok((Head::Bulk(_), _)) => Err(ReplyError::WrongType(ReplyKind::Bulk)),
        Ok((Head::Nil | Head::NilArray, _)) => Err(ReplyError::WrongType(ReplyKind::Nil)),
        Ok((Head::Array(_), _)) => Err(ReplyError::WrongType(ReplyKind::Array)),
    };
    assert_eq!(got, expected);

    if let Ok(n) = got {
        // Independently: a colon, a decimal i64 (no sign but '-'), CRLF.
        let text = std::str::from_utf8(&data[1..data.len() - 2]).unwrap();
        assert!(data.starts_with(b":") && data.ends_with(b"\r\n"));
        assert!(!text.starts_with('+'));
        assert_eq!(text.parse::<i64>(), Ok(n));
    }
});
