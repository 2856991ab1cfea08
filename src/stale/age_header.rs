//! `stale_cache_http`: the `Age` header of a response from the cache, written by the layer's
//! header filter (`filters`), so a configuration needs no `add_header Age ...` line.
//!
//! A response gets one exactly when `$stale_cache_http_age` has a value (the looked-up or
//! memo-known entry's age): FRESH, STALE, 304, hot-tier and LOCAL answers alike; never a
//! response that did not come from the cache. An `Age` already in the response (stored, or
//! the origin's) is replaced.
//!
//! A configuration that still has `add_header Age $stale_cache_http_age always;` must not
//! send a second one: nginx's headers filter runs after this one, so while the rest of the
//! header filter chain runs for a response this filter gave an `Age`, the variable is empty
//! (an empty value makes `add_header` add nothing). Logs, evaluated later, see the value.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use ngx::ffi::{ngx_http_request_t, ngx_list_part_t, ngx_str_t, ngx_table_elt_t};

use crate::nginx::util::pool_str;
use crate::stale::conf::StaleCacheConf;

const AGE: &str = "Age";

/// The request whose header filter chain runs after this filter wrote its `Age`. Requests
/// run on the worker's one event thread; an atomic (relaxed) rather than a thread-local
/// spares the TLS look-up a module's thread-local costs on every access.
static WRITTEN: AtomicPtr<ngx_http_request_t> = AtomicPtr::new(ptr::null_mut());

/// Writes `Age: age` into `req`'s response when the mode is on in its location, replacing
/// any `Age` there. Returns whether it did (the caller then runs the rest of the chain
/// inside `while_written`).
pub fn write(req: &mut ngx_http_request_t, age: Option<u64>) -> bool {
    let Some(age) = age else {
        return false;
    };
    if !StaleCacheConf::http_mode_in(req) {
        return false;
    }
    let Some(value) = age_value(req, age) else {
        return false;
    };
    // SAFETY: a live request's headers_out list, walked part by part; its elements are
    // valid, and a pushed element is fresh pool memory, fully written below.
    unsafe {
        let mut slot: *mut ngx_table_elt_t = ptr::null_mut();
        let mut part: *mut ngx_list_part_t = &mut req.headers_out.headers.part;
        while let Some(p) = part.as_mut() {
            let elts = p.elts as *mut ngx_table_elt_t;
            for i in 0..p.nelts {
                let h = &mut *elts.add(i);
                if h.hash != 0
                    && h.key.len == AGE.len()
                    && crate::nginx::util::str_bytes(&h.key).eq_ignore_ascii_case(AGE.as_bytes())
                {
                    if slot.is_null() {
                        slot = h;
                    } else {
                        // A hash of 0 marks a deleted header: it is not sent.
                        h.hash = 0;
                    }
                }
            }
            part = p.next;
        }
        if slot.is_null() {
            slot = ngx::ffi::ngx_list_push(&mut req.headers_out.headers) as *mut ngx_table_elt_t;
            let Some(h) = slot.as_mut() else {
                return false;
            };
            h.hash = 1;
            h.key = ngx_str_t {
                len: AGE.len(),
                data: AGE.as_ptr() as *mut u8,
            };
            h.lowcase_key = ptr::null_mut();
        }
        (*slot).value = value;
    }
    true
}

/// "00" to "99": the value of an `Age` below 100 s points into it (nginx only reads header
/// values), so the usual hit allocates nothing for it.
static SMALL: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// `n` in decimal from [`SMALL`], when below 100.
pub fn small_decimal(n: u64) -> Option<&'static [u8]> {
    let i = usize::try_from(n).ok().filter(|&i| i < 100)?;
    Some(&SMALL[2 * i + usize::from(i < 10)..2 * i + 2])
}

/// `age` in decimal: static below 100, else in `req`'s pool.
pub fn age_value(req: &ngx_http_request_t, age: u64) -> Option<ngx_str_t> {
    if let Some(digits) = small_decimal(age) {
        return Some(ngx_str_t {
            len: digits.len(),
            data: digits.as_ptr() as *mut u8,
        });
    }
    let mut digits = [0u8; 20];
    pool_str(req.pool, crate::resp::decimal(age, &mut digits))
}

/// Runs `next` (the rest of the header filter chain) with `r` marked as having its `Age`.
pub fn while_written<T>(r: *mut ngx_http_request_t, next: impl FnOnce() -> T) -> T {
    let before = WRITTEN.swap(r, Ordering::Relaxed);
    let out = next();
    WRITTEN.store(before, Ordering::Relaxed);
    out
}

/// Whether `$stale_cache_http_age` is to be empty now for `r`: its `Age` is written and the
/// rest of the header filter chain (`add_header` among it) runs.
pub fn hidden(r: &ngx_http_request_t) -> bool {
    ptr::eq(WRITTEN.load(Ordering::Relaxed), r)
}

#[cfg(test)]
mod tests {
    use super::small_decimal;

    #[test]
    fn small_ages() {
        for i in 0..100u64 {
            assert_eq!(small_decimal(i), Some(i.to_string().as_bytes()));
        }
        assert_eq!(small_decimal(100), None);
        assert_eq!(small_decimal(u64::MAX), None);
    }
}
