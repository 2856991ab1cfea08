//! nginx variables: declaring them at configuration time and reading or filling their values.

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_get_indexed_variable, ngx_http_get_variable_index,
    ngx_http_get_variable_pt, ngx_http_request_t, ngx_http_variable_t, ngx_int_t, ngx_str_t,
    ngx_uint_t, ngx_variable_value_t, NGX_HTTP_VAR_NOCACHEABLE,
};

use super::util::ERROR;

/// Declares variable `name` with `flags`. `replace`: `get` becomes its handler even if it has
/// one (a changeable variable another module declared too keeps its own otherwise).
fn declare(
    cf: *mut ngx_conf_t,
    name: &'static str,
    flags: u32,
    get: ngx_http_get_variable_pt,
    replace: bool,
) -> Option<()> {
    let mut name = static_str(name);
    // SAFETY: cf is the configuration being parsed; nginx copies the name.
    let v = unsafe { ngx_http_add_variable(cf, &mut name, flags as ngx_uint_t) };
    // SAFETY: a non-null result is the variable nginx registered in the configuration's
    // memory; nothing else refers to it while the configuration is being read.
    let v: &mut ngx_http_variable_t = unsafe { v.as_mut()? };
    if replace || v.get_handler.is_none() {
        v.get_handler = get;
    }
    Some(())
}

/// Declares a variable that `set` may change; `get` answers while it is unset.
pub fn add_variable(
    cf: *mut ngx_conf_t,
    name: &'static str,
    flags: u32,
    get: ngx_http_get_variable_pt,
) -> Option<()> {
    declare(cf, name, flags, get, false)
}

/// Declares a read-only, per-request computed variable.
pub fn add_output_variable(
    cf: *mut ngx_conf_t,
    name: &'static str,
    get: ngx_http_get_variable_pt,
) -> Option<()> {
    declare(cf, name, NGX_HTTP_VAR_NOCACHEABLE, get, true)
}

/// The index of variable `name` for indexed look-ups at run time.
pub fn variable_index(cf: *mut ngx_conf_t, name: &'static str) -> Option<ngx_uint_t> {
    let mut name = static_str(name);
    // SAFETY: cf is the configuration being parsed.
    let index = unsafe { ngx_http_get_variable_index(cf, &mut name) };
    (index != ERROR).then_some(index as ngx_uint_t)
}

/// The value of indexed variable `index` in request `r`; `None` when it has none.
pub fn indexed_value(r: &ngx_http_request_t, index: ngx_uint_t) -> Option<&[u8]> {
    let r = r as *const ngx_http_request_t as *mut ngx_http_request_t;
    // SAFETY: r is a live request and the index was resolved at configuration time. nginx
    // evaluates the variable into `r->variables`, pool memory the request points to, not into
    // the request struct the shared borrow covers.
    let v = unsafe { ngx_http_get_indexed_variable(r, index) };
    // SAFETY: a non-null value is a slot of the request's variables, which live (and keep
    // their data) as long as the request pool.
    let v = unsafe { v.as_ref()? };
    if v.not_found() != 0 || v.valid() == 0 {
        return None;
    }
    if v.len() == 0 || v.data.is_null() {
        return Some(&[]);
    }
    // SAFETY: a valid value's data holds `len` bytes of pool memory (see above).
    Some(unsafe { core::slice::from_raw_parts(v.data, v.len() as usize) })
}

/// Fills `v` with `bytes`, which must live as long as the request (static or pool memory).
pub fn set_value(v: &mut ngx_variable_value_t, bytes: &'static [u8]) {
    set_value_in_pool(v, bytes);
}

/// Fills `v` with `bytes` from the request's pool.
pub fn set_value_in_pool(v: &mut ngx_variable_value_t, bytes: &[u8]) {
    v.set_len(bytes.len() as u32);
    v.data = bytes.as_ptr() as *mut u8;
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
}

/// Marks `v` as having no value.
pub fn set_not_found(v: &mut ngx_variable_value_t) {
    v.set_not_found(1);
}

/// A variable handler's value slot.
///
/// # Safety
/// `v` must be the slot nginx passed to a variable handler.
pub unsafe fn value_slot<'a>(v: *mut ngx_variable_value_t) -> &'a mut ngx_variable_value_t {
    // SAFETY: (caller) nginx passes the slot being evaluated, valid during the handler call.
    unsafe { &mut *v }
}

fn static_str(name: &'static str) -> ngx_str_t {
    ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    }
}

/// Result code of a variable handler.
pub const VAR_OK: ngx_int_t = super::util::OK;

/// The value of variable `name` of `r` (looked up by name, for variables of other modules
/// such as srcache's), if set; `None` when unknown (the module is not loaded) or not found.
pub fn by_name<'a>(r: &'a mut ngx::ffi::ngx_http_request_t, name: &[u8]) -> Option<&'a [u8]> {
    let mut key = ngx::ffi::ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: a live request; nginx looks the variable up by name (unknown: null or
    // not_found) and its value lives in the request pool, as long as `r`.
    unsafe {
        let hash = ngx::ffi::ngx_hash_key(key.data, key.len);
        let v = ngx::ffi::ngx_http_get_variable(r, &mut key, hash).as_ref()?;
        (v.valid() != 0 && v.not_found() == 0)
            .then(|| core::slice::from_raw_parts(v.data, v.len() as usize))
    }
}
