//! The hot tier's part of a request's state (kept in `RequestState`, so this file imports
//! nothing of the layer: the state depends on it, not the reverse).

use core::ptr;

use ngx::ffi::{ngx_buf_t, ngx_chain_t, ngx_http_request_body_t, ngx_http_request_t};

use crate::hotcache::{Pin, Plan};

/// The hot tier's part of a request's state.
pub struct Hot {
    pub plan: Plan,
    /// The key's fresh period as the module knows it (memo or TTL lookup), in ms.
    pub(super) fresh_until: u64,
    /// The fetch subrequest being served or filled from, once recognised.
    pub(super) fetch: *mut ngx_http_request_t,
    /// What the fetch subrequest answers (its pool): the whole stored response, or for a
    /// response sent in place its status line and headers and the body's first byte.
    pub(super) served: *mut ngx_buf_t,
    /// A response sent in place from the zone.
    pub(super) in_place: Option<InPlace>,
    /// The fetch's output, while filling.
    pub(super) bytes: Vec<u8>,
    /// The fill cannot be used (too large, in a file, ...).
    pub(super) spoiled: bool,
    /// Redis is away: `Plan::Serve` answers from a copy kept on this node (no max age, the
    /// local zone; `crate::stale::local`), reported LOCAL.
    pub local: bool,
    /// The local copy served is past its fresh period (`Cache-Status`: `detail=local-stale`).
    pub local_stale: bool,
    /// srcache's store subrequest (`Plan::KeepStore`), boxed: few requests have one, and
    /// the state stays small (one allocation size for every request).
    pub store: Option<Box<StoreNote>>,
}

impl Hot {
    /// Whether this module answered srcache's fetch itself (hot tier or local copy), so the
    /// answer did not come from Redis.
    ///
    /// # Safety
    /// `hot` must point at a live `Hot`.
    pub unsafe fn answered_fetch(hot: *const Hot) -> bool {
        // SAFETY: (caller) a live `Hot`; one field is read, no reference is made.
        !unsafe { ptr::addr_of!((*hot).served).read() }.is_null()
    }
}

/// What srcache's store subrequest carried (`crate::stale::local`).
pub struct StoreNote {
    /// Its body: the response as srcache stores it (main request's pool).
    pub body: *mut ngx_http_request_body_t,
    /// `exptime=` of the store.
    pub exptime: Option<u64>,
}

impl Default for Hot {
    fn default() -> Self {
        Hot {
            plan: Plan::Nothing,
            fresh_until: 0,
            fetch: ptr::null_mut(),
            served: ptr::null_mut(),
            in_place: None,
            bytes: Vec::new(),
            spoiled: false,
            local: false,
            local_stale: false,
            store: None,
        }
    }
}

/// A response whose body goes out from the zone in place (see the top of this file); it is
/// unpinned when the request ends.
pub struct InPlace {
    pub(super) pin: Pin,
    pub(super) owner: usize,
    pub(super) pid: u32,
    /// The body, one buffer per stretch of the zone (main request's pool).
    pub(super) body: *mut ngx_chain_t,
    pub(super) body_len: usize,
    /// The stored status, which srcache sets on the main request.
    pub(super) status: usize,
    /// The header filter gave the response the body's length: the body filter swaps.
    pub(super) armed: bool,
    /// Another response replaced this one after it was armed (a filter below this module
    /// finalized it: 412, 416, an error page): nothing is swapped.
    pub(super) replaced: bool,
    pub(super) swapped: bool,
}
