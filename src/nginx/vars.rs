//! nginx variables: declaring them at configuration time and reading or filling their values.

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_get_indexed_variable, ngx_http_get_variable_index,
    ngx_http_get_variable_pt, ngx_http_request_t, ngx_http_variable_t, ngx_int_t, ngx_str_t,
    ngx_uint_t, ngx_variable_value_t, NGX_HTTP_VAR_NOCACHEABLE,
};

use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};

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
    // A value already evaluated (by `set`, or earlier) is read from its slot, as nginx's
    // ngx_http_get_indexed_variable would answer it: the module reads its 16 `$cache_*`
    // variables on every request.
    // SAFETY: a live request's `variables` has a slot per indexed variable, and the index was
    // resolved at configuration time; the slots are pool memory, not the request struct.
    let slot = unsafe { r.variables.add(index).as_ref()? };
    if Flags::read(slot) & (Flags::VALID | Flags::NOT_FOUND) != 0 {
        return value_bytes(slot);
    }
    let r = r as *const ngx_http_request_t as *mut ngx_http_request_t;
    // SAFETY: r is a live request and the index was resolved at configuration time. nginx
    // evaluates the variable into `r->variables`, pool memory the request points to, not into
    // the request struct the shared borrow covers.
    let v = unsafe { ngx_http_get_indexed_variable(r, index) };
    // SAFETY: a non-null value is a slot of the request's variables, which live (and keep
    // their data) as long as the request pool.
    let v = unsafe { v.as_ref()? };
    value_bytes(v)
}

/// [`indexed_value`], except that a variable not evaluated yet whose handler is `absent` (one
/// that only says "not found", for variables a location may leave unset) is answered `None`
/// without a call: most of the module's `$cache_*` variables are unset in most locations.
/// The slot stays unevaluated; a later reader has nginx evaluate it as usual.
pub fn indexed_value_unless(
    r: &ngx_http_request_t,
    index: ngx_uint_t,
    absent: GetVariableFn,
) -> Option<&[u8]> {
    // SAFETY: as in `indexed_value`.
    let slot = unsafe { r.variables.add(index).as_ref()? };
    if Flags::read(slot) & (Flags::VALID | Flags::NOT_FOUND) != 0 {
        return value_bytes(slot);
    }
    if handler_is(r, index, absent) {
        return None;
    }
    indexed_value(r, index)
}

/// Whether indexed variable `index`'s get handler is `handler`.
fn handler_is(r: &ngx_http_request_t, index: ngx_uint_t, handler: GetVariableFn) -> bool {
    let Some(cmcf) = NgxHttpCoreModule::main_conf(r) else {
        return false;
    };
    if index >= cmcf.variables.nelts {
        return false;
    }
    // SAFETY: the core module's `variables` holds `nelts` variables, the one of each index.
    let v = unsafe { &*cmcf.variables.elts.cast::<ngx_http_variable_t>().add(index) };
    v.get_handler
        .is_some_and(|h| core::ptr::fn_addr_eq(h, handler))
}

/// A value slot as a whole: its flag word and its data pointer, compared at once with what a
/// `set` of a literal leaves in it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawSlot {
    word: u32,
    data: usize,
}

impl RawSlot {
    /// A slot nobody evaluated or wrote (nginx zeroes a request's slots).
    pub const UNEVALUATED: RawSlot = RawSlot { word: 0, data: 0 };

    /// What `set $var literal;` leaves: a valid, cacheable, found value of `len` bytes at
    /// `addr` (the literal's own bytes); `None` for a length a slot cannot hold.
    pub fn set_to(addr: usize, len: usize) -> Option<RawSlot> {
        let len = u32::try_from(len).ok().filter(|&l| l <= Flags::LEN)?;
        Some(RawSlot {
            word: len | Flags::VALID,
            data: addr,
        })
    }

    /// Whether `r`'s slot of variable `index` holds exactly this (the pointer of an
    /// unevaluated slot is not looked at).
    ///
    /// # Safety
    /// `variables` must be the live request's `variables` array and `index` an index
    /// resolved at configuration time.
    #[inline]
    pub unsafe fn is_in(self, variables: *const ngx_variable_value_t, index: ngx_uint_t) -> bool {
        // SAFETY: (caller) a slot of the request's variables.
        let slot = unsafe { &*variables.add(index) };
        let word = Flags::read(slot);
        word == self.word && (word == 0 || slot.data as usize == self.data)
    }
}

/// For each of `indexes`, whether its variable's get handler is `handler` (bit i for
/// `indexes[i]`). Handlers are set at configuration time, so the answer holds for the cycle.
pub fn handlers_are(r: &ngx_http_request_t, indexes: &[ngx_uint_t], handler: GetVariableFn) -> u32 {
    indexes
        .iter()
        .enumerate()
        .filter(|&(_, &index)| handler_is(r, index, handler))
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

/// A variable's get handler.
pub type GetVariableFn =
    unsafe extern "C" fn(*mut ngx_http_request_t, *mut ngx_variable_value_t, usize) -> ngx_int_t;

/// The bytes of an evaluated value; `None` when it has none (not found, or not valid).
pub fn value_bytes(v: &ngx_variable_value_t) -> Option<&[u8]> {
    let word = Flags::read(v);
    if word & Flags::NOT_FOUND != 0 || word & Flags::VALID == 0 {
        return None;
    }
    let len = (word & Flags::LEN) as usize;
    if len == 0 || v.data.is_null() {
        return Some(&[]);
    }
    // SAFETY: a valid value's data holds `len` bytes of pool memory (see above).
    Some(unsafe { core::slice::from_raw_parts(v.data, len) })
}

/// Fills `v` with `bytes`, which must live as long as the request (static or pool memory).
pub fn set_value(v: &mut ngx_variable_value_t, bytes: &'static [u8]) {
    set_value_in_pool(v, bytes);
}

/// Fills `v` with `bytes` from the request's pool.
pub fn set_value_in_pool(v: &mut ngx_variable_value_t, bytes: &[u8]) {
    // `escape` is kept; nginx's values are far below the 28-bit length limit.
    let word = Flags::read(v) & Flags::ESCAPE;
    let len = bytes.len() as u32 & Flags::LEN;
    Flags::write(v, word | len | Flags::VALID | Flags::NO_CACHEABLE);
    v.data = bytes.as_ptr() as *mut u8;
}

/// Marks `v` as having no value.
pub fn set_not_found(v: &mut ngx_variable_value_t) {
    Flags::write(v, Flags::read(v) | Flags::NOT_FOUND);
}

/// The first word of `ngx_variable_value_t`: `unsigned len:28, valid:1, no_cacheable:1,
/// not_found:1, escape:1`. The generated accessors move one bit at a time (about 300
/// instructions to fill a value, 40 to read one; variables are read and filled on every
/// request), so the word is read and written whole, in the layout those accessors use.
struct Flags;

impl Flags {
    const LEN: u32 = (1 << 28) - 1;
    const VALID: u32 = 1 << 28;
    const NO_CACHEABLE: u32 = 1 << 29;
    const NOT_FOUND: u32 = 1 << 30;
    const ESCAPE: u32 = 1 << 31;

    #[cfg(target_endian = "little")]
    fn read(v: &ngx_variable_value_t) -> u32 {
        // SAFETY: the bitfield unit is 4 plain bytes (aligned for u32 by the zero-sized
        // `_bitfield_align_1` before it); bindgen numbers its bits from the first byte's
        // lowest bit, as a little-endian u32 does.
        u32::from_le_bytes(unsafe { *core::ptr::addr_of!(v._bitfield_1).cast::<[u8; 4]>() })
    }

    #[cfg(target_endian = "little")]
    fn write(v: &mut ngx_variable_value_t, word: u32) {
        // SAFETY: as in `read`; the 4 bytes belong to `v`, borrowed mutably.
        unsafe { *core::ptr::addr_of_mut!(v._bitfield_1).cast::<[u8; 4]>() = word.to_le_bytes() };
    }

    // Elsewhere, through the generated accessors (slow, but right for that layout).
    #[cfg(not(target_endian = "little"))]
    fn read(v: &ngx_variable_value_t) -> u32 {
        // Each accessor answers 0 or 1.
        v.len() & Self::LEN
            | v.valid() << 28
            | v.no_cacheable() << 29
            | v.not_found() << 30
            | v.escape() << 31
    }

    #[cfg(not(target_endian = "little"))]
    fn write(v: &mut ngx_variable_value_t, word: u32) {
        v.set_len(word & Self::LEN);
        v.set_valid(u32::from(word & Self::VALID != 0));
        v.set_no_cacheable(u32::from(word & Self::NO_CACHEABLE != 0));
        v.set_not_found(u32::from(word & Self::NOT_FOUND != 0));
        v.set_escape(u32::from(word & Self::ESCAPE != 0));
    }
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
