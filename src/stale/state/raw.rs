//! Reads and writes of a request's state through its pointer, for the output filters and
//! variable handlers: nginx may run them inside a step that borrows the state, so they make
//! no reference to it, only to the one field each touches.

use core::ptr::{self, NonNull};

use ngx::ffi::ngx_http_request_t;

use super::super::hot::request::Hot;
use super::{find, Phase, RequestState};
use crate::collapse::StoreOutcome;
use crate::policy::CacheStatus;

impl RequestState {
    /// Records the status srcache's store subrequest answered (a fill counts only when
    /// stored); written alone, through the pointer: the filters may run inside a step that
    /// borrows the state.
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn note_store(state: NonNull<Self>, status: usize) {
        // SAFETY: (caller) a live state; one field is written, no reference is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).store_status).write(Some(status)) };
    }

    /// Records that srcache's fetch answered an entry from Redis; written alone, through the
    /// pointer, as `note_store`.
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn note_fetch_found(state: NonNull<Self>) {
        // SAFETY: (caller) a live state; one field is written, no reference is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).fetch_found).write(true) };
    }

    /// Whether the request holds the fill lock (its phase is `Filling`), through the pointer.
    ///
    /// # Safety
    /// `state` must be a live state no step borrows mutably meanwhile.
    pub unsafe fn is_filling(state: NonNull<Self>) -> bool {
        // SAFETY: (caller) a live state; only the stage is read.
        unsafe { (*ptr::addr_of!((*state.as_ptr()).stage)).phase() == Phase::Filling }
    }

    /// The cache key, once read, through the pointer (for the filters, which may not borrow
    /// the whole state).
    ///
    /// # Safety
    /// `state` must be a live state whose settings no step changes while the key is used.
    pub unsafe fn key_ptr<'a>(state: NonNull<Self>) -> Option<&'a [u8]> {
        // SAFETY: (caller) a live state; only the settings field is borrowed.
        unsafe { (*ptr::addr_of!((*state.as_ptr()).settings)).as_ref() }.map(|s| s.key.as_slice())
    }

    /// The hot tier's part of the state behind `state`, as a pointer: filters of the main
    /// request and variable handlers may run inside a step that borrows the state, so they
    /// reach only this part.
    ///
    /// # Safety
    /// `state` must be a live state.
    pub unsafe fn hot_ptr(state: NonNull<Self>) -> *mut Hot {
        // SAFETY: (caller) a live state; no reference to it is made.
        unsafe { ptr::addr_of_mut!((*state.as_ptr()).hot) }
    }
}

/// Copies of the fields variable handlers read, without borrowing the state (a step may hold
/// it while nginx evaluates a variable).
pub struct Peek {
    pub status: Option<CacheStatus>,
    pub is_refresh: bool,
    /// A lease operation request (of this nginx to itself), not a refresh.
    pub lease_op: bool,
    pub wake_delay_ms: Option<u64>,
    pub ttl_left: Option<i64>,
    /// What srcache's store subrequest did (final in the LOG phase).
    pub store: StoreOutcome,
    pub entry_age: Option<u64>,
    /// A LOCAL answer came from a stale copy.
    pub local_stale: bool,
}

/// What variable handlers and filters may know of `r`'s state.
pub fn peek(r: &ngx_http_request_t) -> Option<Peek> {
    let state = find(r)?.as_ptr();
    // SAFETY: the state is live while its request is; the fields are copied through the raw
    // pointer, no reference to the state is made.
    unsafe {
        Some(Peek {
            status: ptr::addr_of!((*state).status).read(),
            is_refresh: ptr::addr_of!((*state).is_refresh).read(),
            lease_op: ptr::addr_of!((*state).lease_op).read(),
            wake_delay_ms: ptr::addr_of!((*state).wake_delay_ms).read(),
            ttl_left: ptr::addr_of!((*state).ttl_left).read(),
            store: StoreOutcome::of(
                ptr::addr_of!((*state).store_status).read(),
                ptr::addr_of!((*state).fetch_found).read(),
            ),
            entry_age: ptr::addr_of!((*state).entry_age).read(),
            local_stale: ptr::addr_of!((*state).hot.local_stale).read(),
        })
    }
}

/// `r`'s variant suffix (`stale_cache_http`) handed to `f`; `None` when its URL does not
/// vary.
#[inline]
pub fn with_variant_suffix<T>(r: &ngx_http_request_t, f: impl FnOnce(&str) -> T) -> Option<T> {
    let state = find(r)?.as_ptr();
    // SAFETY: the state is live while its request is; a variable handler runs while no step
    // changes the field, which is only read during `f`.
    unsafe {
        (*ptr::addr_of!((*state).variant))
            .as_ref()
            .map(|v| f(&v.suffix))
    }
}
