//! Variables: the `$cache_*` inputs (declared here so an unset one is simply empty, as in
//! the Lua original, instead of an "unknown variable" error) and the module's outputs.

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_get_indexed_variable, ngx_http_get_variable_index,
    ngx_http_get_variable_pt, ngx_http_request_t, ngx_int_t, ngx_str_t, ngx_uint_t,
    ngx_variable_value_t, NGX_HTTP_VAR_CHANGEABLE, NGX_HTTP_VAR_NOCACHEABLE,
};

use crate::settings::{RawVars, Var};

const NGX_OK: ngx_int_t = 0;
const NGX_ERROR: ngx_int_t = -1;

/// Indexes of the `$cache_*` variables, in `Var::ALL` order.
pub type VarIndexes = [ngx_uint_t; Var::COUNT];

unsafe extern "C" fn unset_variable(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    unsafe { (*v).set_not_found(1) };
    NGX_OK
}

fn add_variable(
    cf: *mut ngx_conf_t,
    name: &'static str,
    flags: u32,
    get: ngx_http_get_variable_pt,
) -> Option<*mut ngx::ffi::ngx_http_variable_t> {
    let mut name = ngx_str_t {
        len: name.len(),
        data: name.as_ptr() as *mut u8,
    };
    // SAFETY: cf is the configuration being parsed; nginx copies the name.
    let v = unsafe { ngx_http_add_variable(cf, &mut name, flags as ngx_uint_t) };
    if v.is_null() {
        return None;
    }
    // SAFETY: `v` is the variable nginx just registered (or the existing changeable one).
    unsafe {
        if (*v).get_handler.is_none() {
            (*v).get_handler = get;
        }
    }
    Some(v)
}

/// Declares the `$cache_*` variables as changeable (so `set` works on them) and returns
/// their indexes.
pub fn add_cache_variables(cf: *mut ngx_conf_t) -> Option<VarIndexes> {
    let mut indexes = [0; Var::COUNT];
    for var in Var::ALL {
        add_variable(
            cf,
            var.name(),
            NGX_HTTP_VAR_CHANGEABLE,
            Some(unset_variable),
        )?;
        let mut name = ngx_str_t {
            len: var.name().len(),
            data: var.name().as_ptr() as *mut u8,
        };
        // SAFETY: cf is the configuration being parsed.
        let index = unsafe { ngx_http_get_variable_index(cf, &mut name) };
        if index == NGX_ERROR {
            return None;
        }
        indexes[var.index()] = index as ngx_uint_t;
    }
    Some(indexes)
}

/// Declares a read-only, per-request computed variable of the module.
pub fn add_output_variable(
    cf: *mut ngx_conf_t,
    name: &'static str,
    get: ngx_http_get_variable_pt,
) -> Option<()> {
    let v = add_variable(cf, name, NGX_HTTP_VAR_NOCACHEABLE, None)?;
    // SAFETY: `v` is the variable just registered for this name.
    unsafe { (*v).get_handler = get };
    Some(())
}

/// The request's `$cache_*` values, borrowed from the request's variable storage.
pub fn read_cache_variables<'a>(r: *mut ngx_http_request_t, indexes: &VarIndexes) -> RawVars<'a> {
    let mut raw = RawVars::new();
    for var in Var::ALL {
        // SAFETY: r is a live request and the index was resolved at configuration time.
        let v = unsafe { ngx_http_get_indexed_variable(r, indexes[var.index()]) };
        raw.set(var, value_bytes(v));
    }
    raw
}

/// The bytes of an evaluated variable, `None` when missing.
fn value_bytes<'a>(v: *mut ngx_variable_value_t) -> Option<&'a [u8]> {
    if v.is_null() {
        return None;
    }
    // SAFETY: a non-null value from nginx is a valid slot of the request's variables, which
    // live as long as the request pool.
    unsafe {
        if (*v).not_found() != 0 || (*v).valid() == 0 {
            return None;
        }
        let (len, data) = ((*v).len() as usize, (*v).data);
        if len == 0 || data.is_null() {
            return Some(&[]);
        }
        Some(core::slice::from_raw_parts(data, len))
    }
}

/// Fills `v` with `bytes`, which must live as long as the request (static or pool memory).
pub fn set_value(v: *mut ngx_variable_value_t, bytes: &[u8]) {
    // SAFETY: nginx passes the value slot being evaluated; the data outlives the request.
    unsafe {
        (*v).set_len(bytes.len() as u32);
        (*v).data = bytes.as_ptr() as *mut u8;
        (*v).set_valid(1);
        (*v).set_no_cacheable(1);
        (*v).set_not_found(0);
    }
}

/// Marks `v` as having no value.
pub fn set_not_found(v: *mut ngx_variable_value_t) {
    // SAFETY: nginx passes the value slot being evaluated.
    unsafe { (*v).set_not_found(1) };
}
