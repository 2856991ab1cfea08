//! The TTL lookup's answer: a bare TTL, or (in the `stale_cache_http` mode) the TTL with the
//! entry's own windows.

use super::super::error::StaleError;
use super::super::state::RequestState;
use crate::http::windows::EntryWindows;
use crate::policy::FailReason;
use crate::resp::{parse_integer_reply, ReplyError};

type TtlAnswer = (i64, Option<EntryWindows>, Option<Vec<u8>>);

/// The TTL lookup's answer, read strictly: anything but an integer reply fails open. In the
/// `stale_cache_http` mode the lookup script may also answer the entry's own windows.
/// The third value: the URL varies on these names (its variant is to be looked up).
pub fn ttl_of(state: &RequestState, http: bool) -> Result<TtlAnswer, StaleError> {
    let capture = state.capture();
    if !capture.answered_ok() {
        // A raw-mode Redis location answers an error reply with 502 and the reply as body.
        if let (502, Err(ReplyError::ErrorReply(text))) =
            (capture.status, parse_integer_reply(&capture.body))
        {
            return Err(StaleError::RedisError(text));
        }
        return Err(StaleError::Lookup(FailReason::LookupFailed));
    }
    let parsed = if http {
        crate::http::parse_lookup(&capture.body).map(|l| (l.ttl, l.entry, l.vary))
    } else {
        parse_integer_reply(&capture.body).map(|ttl| (ttl, None, None))
    };
    parsed.map_err(|e| match e {
        ReplyError::ErrorReply(text) => StaleError::RedisError(text),
        _ => StaleError::Lookup(FailReason::BadReply),
    })
}
