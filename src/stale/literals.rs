//! The `$cache_*` values a location sets with literal `set` directives, read back from the
//! rewrite module's compiled script so that bad values fail `nginx -t`.
//!
//! `set $var literal;` compiles to a value code followed by a set-variable code carrying the
//! variable's index; both are exported nginx functions, so the pair is recognised by their
//! addresses. Values with variables in them are only known per request.

use ngx::ffi::{
    ngx_array_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_script_set_var_code,
    ngx_http_script_value_code, ngx_module_t,
};

extern "C" {
    /// nginx's rewrite module (`set`, `if`); exported by the nginx binary.
    static ngx_http_rewrite_module: ngx_module_t;
}

const WORD: usize = core::mem::size_of::<usize>();

/// (variable index, literal value) for each literal `set` of the location being merged.
pub fn literal_sets(cf: *mut ngx_conf_t) -> Vec<(usize, Vec<u8>)> {
    let mut found = Vec::new();
    // SAFETY: during merge, cf.ctx is the location's http conf ctx; the rewrite module's
    // location conf starts with its `ngx_array_t *codes` (null when the location has no
    // rewrite directives); the array holds `nelts * size` bytes of script codes, whose
    // structures are all made of machine words.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let index = (&raw const ngx_http_rewrite_module).read().ctx_index;
        let rewrite_conf = *(*ctx).loc_conf.add(index) as *const *mut ngx_array_t;
        if rewrite_conf.is_null() || (*rewrite_conf).is_null() {
            return found;
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
                let text = if len == 0 || data.is_null() {
                    Vec::new()
                } else {
                    core::slice::from_raw_parts(data, len).to_vec()
                };
                found.push((*base.add(i + 5), text));
                i += 6;
            } else {
                i += 1;
            }
        }
    }
    found
}
