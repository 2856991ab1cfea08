/*
 * Bitfields of ngx_http_request_t and ngx_http_upstream_t, read and written by the C
 * compiler.
 *
 * nginx-sys 0.5 generates its bindings with bindgen 0.72, which places the bitfields of
 * ngx_http_request_t two bits off once a 16-bit field precedes them (nginx 1.29.3 added
 * "in_port_t port"): the generated accessors then touch the wrong flags. The few flags this
 * module uses go through these functions instead, compiled against the same headers as
 * nginx, so they are right on every nginx version (clippy.toml denies the generated ones;
 * the upstream's are denied too, in case its layout shifts the same way).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


unsigned
ngx_stale_cache_count(ngx_http_request_t *r)
{
    return r->count;
}


void
ngx_stale_cache_set_count(ngx_http_request_t *r, unsigned count)
{
    r->count = count;
}


unsigned
ngx_stale_cache_header_sent(ngx_http_request_t *r)
{
    return r->header_sent;
}


void
ngx_stale_cache_set_header_sent(ngx_http_request_t *r, unsigned on)
{
    r->header_sent = on ? 1 : 0;
}


unsigned
ngx_stale_cache_header_only(ngx_http_request_t *r)
{
    return r->header_only;
}


unsigned
ngx_stale_cache_filter_finalize(ngx_http_request_t *r)
{
    return r->filter_finalize;
}


void
ngx_stale_cache_set_keepalive(ngx_http_request_t *r, unsigned on)
{
    r->keepalive = on ? 1 : 0;
}


void
ngx_stale_cache_set_preserve_body(ngx_http_request_t *r, unsigned on)
{
    r->preserve_body = on ? 1 : 0;
}


void
ngx_stale_cache_set_upstream_keepalive(ngx_http_upstream_t *u, unsigned on)
{
    u->keepalive = on ? 1 : 0;
}
