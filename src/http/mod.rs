//! HTTP caching semantics (RFC 9111, RFC 5861) for the `stale_cache_http` mode, free of nginx
//! symbols: what a response says about itself (may it be stored, for how long fresh, how long
//! stale, how long kept for errors), the entry's windows as they are kept beside it in Redis,
//! and the lookup's answer that carries them back.

pub mod date;
pub mod freshness;
pub mod invalidate;
pub mod request;
pub mod vary;
pub mod windows;

pub use freshness::{judge, Limits, Skip, Verdict};
pub use windows::{parse_lookup, Lookup, Windows, LOOKUP_SCRIPT, STORE_SCRIPT};
