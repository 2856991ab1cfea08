use ngx::ffi::*;
#[no_mangle]
pub extern "C" fn foo(r: *mut ngx_http_request_t) -> isize { unsafe { ngx_http_discard_request_body(r) } }
