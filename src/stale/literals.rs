//! The `$cache_*` values a location sets with literal `set` directives, read back from the
//! rewrite module's compiled script so that bad values fail `nginx -t`.
//!
//! `set $var literal;` compiles to a value code followed by a set-variable code carrying the
//! variable's index; both are exported nginx functions, so the pair is recognised by their
//! addresses. Values with variables in them are only known per request.

use ngx::ffi::{
    ngx_array_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t, ngx_http_core_module,
    ngx_http_core_srv_conf_t, ngx_http_script_set_var_code, ngx_http_script_value_code,
    ngx_module_t,
};

extern "C" {
    /// nginx's rewrite module (`set`, `if`); exported by the nginx binary.
    static ngx_http_rewrite_module: ngx_module_t;
}

const WORD: usize = core::mem::size_of::<usize>();

/// (variable index, literal value) for each literal `set` of the location being merged.
pub fn literal_sets(cf: *mut ngx_conf_t) -> Vec<(usize, Vec<u8>)> {
    let mut found = Vec::new();
    for_each_literal(cf, |index, text| found.push((index, text.to_vec())));
    found
}

/// Calls `f` with (variable index, literal value) for each literal `set` of the location
/// being merged, in script order; the value is the literal's own bytes in the configuration's
/// memory (where a request's variable points after the `set` ran: see `crate::preset`).
pub fn for_each_literal(cf: *mut ngx_conf_t, mut f: impl FnMut(usize, &[u8])) {
    // SAFETY: during merge, cf.ctx is the location's http conf ctx; the rewrite module's
    // location conf starts with its `ngx_array_t *codes` (null when the location has no
    // rewrite directives); the array holds `nelts * size` bytes of script codes, whose
    // structures are all made of machine words.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let index = (&raw const ngx_http_rewrite_module).read().ctx_index;
        let rewrite_conf = *(*ctx).loc_conf.add(index) as *const *mut ngx_array_t;
        if rewrite_conf.is_null() || (*rewrite_conf).is_null() {
            return;
        }
        let codes = &**rewrite_conf;
        let words = codes.nelts * codes.size / WORD;
        let base = codes.elts as *const usize;
        let value_code = ngx_http_script_value_code as *const () as usize;
        let set_var_code = ngx_http_script_set_var_code as *const () as usize;
        // value code: [code, value, text_len, text_data], then set-var code: [code, index].
        let mut i = 0;
        while i + 6 <= words {
            if *base.add(i) == value_code && *base.add(i + 4) == set_var_code {
                let (len, data) = (*base.add(i + 2), *base.add(i + 3) as *const u8);
                // The literal's text, which the configuration's memory keeps for the cycle.
                let text = if len == 0 || data.is_null() {
                    &[][..]
                } else {
                    core::slice::from_raw_parts(data, len)
                };
                f(*base.add(i + 5), text);
                i += 6;
            } else {
                i += 1;
            }
        }
    }
}

/// Which block the configuration being merged belongs to: whose `set`s its requests run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Block {
    /// A `server` (its `set`s run before any location's).
    Server,
    /// An `if` (or `limit_except`) block inside a location: no script of its own, its `set`s
    /// are compiled into the enclosing location's.
    Inner,
    /// A location, nested or not: its own script (and the server's) run.
    Location,
}

/// The block of the configuration being merged.
pub fn block_of(cf: *mut ngx_conf_t) -> Block {
    // SAFETY: during merge, cf.ctx is the http conf ctx of the block being merged; its
    // srv_conf holds the core module's server conf, whose `ctx` is the server block's own,
    // and its loc_conf the core module's location conf.
    unsafe {
        let ctx = &*((*cf).ctx as *const ngx_http_conf_ctx_t);
        let core = (&raw const ngx_http_core_module).read().ctx_index;
        let cscf = *ctx.srv_conf.add(core) as *const ngx_http_core_srv_conf_t;
        if !cscf.is_null() && !(*cscf).ctx.is_null() && (*(*cscf).ctx).loc_conf == ctx.loc_conf {
            return Block::Server;
        }
        let clcf = *ctx.loc_conf.add(core) as *const ngx_http_core_loc_conf_t;
        if !clcf.is_null() && (*clcf).noname() != 0 {
            return Block::Inner;
        }
    }
    Block::Location
}
