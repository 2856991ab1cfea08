//! At `nginx -t`: whether a literal `$cache_ttl`, `$cache_persist` or `$cache_expire` URI can
//! reach a location of the server, so a typo fails the configuration test instead of turning
//! every request into an ERROR. Exact and prefix locations are matched; a server with any
//! regex location is given the benefit of the doubt (matching regexes needs the request-time
//! machinery, and a false alarm would refuse a working configuration).

use ngx::ffi::{
    ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_core_loc_conf_t, ngx_http_core_module,
    ngx_http_location_queue_t, ngx_queue_t,
};
use ngx::http::{HttpModuleServerConf, NgxHttpCoreModule};

use crate::nginx::util::str_bytes;

/// Whether `uri` matches a location of the server being merged (or may, see above).
pub fn reaches_a_location(cf: &ngx_conf_t, uri: &[u8]) -> bool {
    let Some(cscf) = NgxHttpCoreModule::server_conf(cf) else {
        return true;
    };
    // SAFETY: a server's core configuration points at the server's context, whose core
    // location configuration (the server level) lists the server's locations; all of it
    // lives in the configuration pool, and merging (when this runs) changes none of it.
    let locations = unsafe {
        let ctx: &ngx_http_conf_ctx_t = &*cscf.ctx;
        let index = (*core::ptr::addr_of!(ngx_http_core_module)).ctx_index;
        let server_level = &*(*ctx.loc_conf.add(index) as *const ngx_http_core_loc_conf_t);
        server_level.locations
    };
    // SAFETY: as above.
    unsafe { any_matches(locations, uri, 0) }
}

/// Nesting deeper than this is not followed (nginx has no limit; configurations have a few).
const MAX_DEPTH: usize = 16;

/// # Safety
/// `locations` must be null or a location queue of the configuration being merged.
unsafe fn any_matches(locations: *mut ngx_queue_t, uri: &[u8], depth: usize) -> bool {
    if locations.is_null() || depth > MAX_DEPTH {
        return depth > MAX_DEPTH;
    }
    // SAFETY: (caller) a valid circular queue with `locations` as its sentinel; its entries
    // are `ngx_http_location_queue_t`, whose first field is the queue link.
    unsafe {
        let mut q = (*locations).next;
        while !q.is_null() && q != locations {
            let entry = &*(q as *const ngx_http_location_queue_t);
            let clcf = if entry.exact.is_null() {
                entry.inclusive
            } else {
                entry.exact
            };
            if let Some(clcf) = clcf.as_ref() {
                if clcf.noname() == 0 && clcf.named() == 0 {
                    if !clcf.regex.is_null() {
                        return true;
                    }
                    let name = str_bytes(&clcf.name);
                    let hit = if clcf.exact_match() != 0 {
                        name == uri
                    } else {
                        uri.starts_with(name)
                    };
                    if hit {
                        return true;
                    }
                }
                if any_matches(clcf.locations, uri, depth + 1) {
                    return true;
                }
            }
            q = (*q).next;
        }
    }
    false
}
