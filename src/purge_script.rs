//! The Redis script of the variants purge (docs/purge.md, "All variants of a URL"), given to
//! configurations as `$stale_cache_purge_script` for the `$cache_purge` location's `EVAL`.

/// The variants purge, for `EVAL <script> 2 <entry key> <index key>`: deletes the entry, every
/// key in the index set (popped in batches, so no reply or `DEL` grows with the set) and so
/// the index; answers how many entries went. With more keys (`EVAL <script> N <key>...
/// <index key>`), every key before the last is deleted (`stale_cache_http`: the entry, its
/// windows, its variant set). One line, no `$`, as nginx values need.
pub const VARIANTS_SCRIPT: &str = "local ix = KEYS[#KEYS] \
local n = redis.call('DEL', unpack(KEYS, 1, #KEYS - 1)) \
local batch = redis.call('SPOP', ix, 100) \
while #batch > 0 do for _, k in ipairs(batch) do \
if k ~= KEYS[1] then n = n + redis.call('DEL', k) end end \
batch = redis.call('SPOP', ix, 100) end \
return n";

#[cfg(test)]
mod tests {
    use super::VARIANTS_SCRIPT;

    #[test]
    fn the_variants_script_is_one_line_without_nginx_variables() {
        assert!(!VARIANTS_SCRIPT.contains('$') && !VARIANTS_SCRIPT.contains('\n'));
        assert!(VARIANTS_SCRIPT.contains("'SPOP', ix, 100"));
    }
}
