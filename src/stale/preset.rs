//! A location's preset settings (`crate::preset`) on the nginx side: the value slots its
//! requests' `$cache_*` variables must hold for the preset to be their settings, and the get
//! handler of the variables no `set` wrote.

use core::cell::Cell;

use ngx::ffi::{ngx_http_request_t, ngx_int_t, ngx_pnalloc, ngx_uint_t, ngx_variable_value_t};

use crate::nginx::vars::{
    handlers_are, indexed_value_unless, set_not_found, value_slot, GetVariableFn, RawSlot, VAR_OK,
};
use crate::preset::Preset;
use crate::settings::{Key, Settings, Var};

/// The get handler of the `$cache_*` variables, registered and compared through this one
/// value: Rust may give a small function one address per codegen unit, so an address taken
/// in one file can differ from the one nginx was given in another (and every comparison with
/// it would fail, silently sending each request down the slow path).
pub static UNSET_VARIABLE: GetVariableFn = unset_variable;

/// "Not found" until a `set` writes the variable (an unset one is simply empty, as in the Lua
/// original, not an "unknown variable" error).
unsafe extern "C" fn unset_variable(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot being evaluated.
    set_not_found(unsafe { value_slot(v) });
    VAR_OK
}

/// A location's preset (`crate::preset`) with the value slots its requests' variables must
/// hold for it to be their settings.
pub struct PresetSlots {
    preset: Preset,
    /// Each variable but the key: its index and the slot the preset needs.
    slots: Vec<(ngx_uint_t, RawSlot)>,
    /// The variables that must be unevaluated (bit `Var::index`): their get handler must
    /// then be the layer's own, which answers "not found".
    unset: u32,
    /// Which variables have that handler (bit `Var::index`), read at a worker's first
    /// request: another module may declare one of them with its own.
    ours: Cell<Option<u32>>,
    indexes: [ngx_uint_t; Var::COUNT],
}

impl PresetSlots {
    pub fn new(preset: Preset, indexes: &[ngx_uint_t; Var::COUNT]) -> Option<PresetSlots> {
        let mut slots = Vec::with_capacity(Var::COUNT - 1);
        let mut unset = 0;
        for var in Var::ALL.into_iter().filter(|&v| v != Var::Key) {
            let slot = match preset.expected(var) {
                Some((addr, len)) => RawSlot::set_to(addr, len)?,
                None => {
                    unset |= 1 << var.index();
                    RawSlot::UNEVALUATED
                }
            };
            slots.push((indexes[var.index()], slot));
        }
        Some(PresetSlots {
            preset,
            slots,
            unset,
            ours: Cell::new(None),
            indexes: *indexes,
        })
    }

    /// The request's settings, when its `$cache_*` variables (the key aside) hold exactly
    /// what a `set` of each literal leaves and nothing else wrote the others; `None`: parse
    /// them (`read_cache_variables`), which gives the same settings whenever this does.
    pub fn settings(&self, r: &ngx_http_request_t) -> Option<Settings> {
        let ours = self.ours.get().unwrap_or_else(|| {
            // Once per worker and configuration: handlers do not change after it.
            let mask = handlers_are(r, &self.indexes, UNSET_VARIABLE);
            self.ours.set(Some(mask));
            mask
        });
        if self.unset & ours != self.unset || r.variables.is_null() {
            return None;
        }
        // SAFETY: a live request's variables, and indexes resolved at configuration time.
        let held = self
            .slots
            .iter()
            .all(|&(index, slot)| unsafe { slot.is_in(r.variables, index) });
        if !held {
            return None;
        }
        let key = indexed_value_unless(r, self.indexes[Var::Key.index()], UNSET_VARIABLE);
        self.preset.with_key_as(key, |key| pool_key(r, key))
    }
}

/// A copy of `key` in `r`'s pool (no malloc, no free: the pool goes whole), on the heap if
/// the pool has no room.
fn pool_key(r: &ngx_http_request_t, key: &[u8]) -> Key {
    // SAFETY: the request's live pool.
    let at = unsafe { ngx_pnalloc(r.pool, key.len()) } as *mut u8;
    if at.is_null() {
        return Key::new(key);
    }
    // SAFETY: `at` is a fresh allocation of key.len() bytes; the copy is the pool's until it
    // is freed with the request, after the request's state (which keeps these settings) was
    // dropped by its pool cleanup; nothing writes it again.
    unsafe {
        core::ptr::copy_nonoverlapping(key.as_ptr(), at, key.len());
        Key::kept(core::slice::from_raw_parts(at, key.len()))
    }
}
