# stale_cache_purge through the redis2/HttpRedis locations of nginx-conf/drop-in-redis2.conf:
# the same checks as t/091-purge.t. The two reference modules are built once (see
# t/lib/RefModules.pm).
BEGIN {
    use lib 't/lib';
    require RefModules;
    RefModules::load_or_skip_all();
}
use lib 't/lib';
use Test::StaleCache;
require './t/lib/purge_blocks.pl';

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
_EOC_

# drop-in-redis2.conf's /api location and its redis2/HttpRedis locations, plus the purge.
our $CONFIG = <<'_EOC_';
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_persist /redispersist;
        set $cache_purge /redispurge;
        set $cache_key "$http_user_agent|$uri";
        set $cache_stale 100;
        set $cache_lock_exptime 30;
        set $cache_lock_timeout 3;
        set $cache_skip_fetch "X-Skip-Fetch";
        set_escape_uri $escaped_key $cache_key;
        stale_cache on;
        stale_cache_purge PURGE DELETE;
        if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /redis $cache_key;}
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Stale-Cache $stale_cache_status;
        add_header Cache-Status $stale_cache_rfc9211 always;
        proxy_pass http://backend;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query ttl $key; redis2_pass redis; }
    location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query persist $key; redis2_pass redis; }
    location = /redispurge { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query del $key; redis2_pass redis; }
    location = /redis { internal; stale_cache_role fetch; set_md5 $redis_key $args;
        redis_pass redis; }
    location = /redis2 { internal; stale_cache_role store;
        set_unescape_uri $exptime $arg_exptime; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query set $key $echo_request_body; redis2_query expire $key $exptime;
        redis2_pass redis; }
    location = /metrics { stale_cache_metrics; }
_EOC_

# All variants of a URL with redis2: the store also lists the entry's key in the URL's
# variant set; the purge location EVALs the module's script on the entry's key and that set.
our $VARIANTS = $CONFIG;
for ([qr{srcache_store PUT /redis2 key=\$escaped_key&exptime=105;},
      'set_escape_uri $escaped_uri $uri;
        srcache_store PUT /redis2 key=$escaped_key&exptime=105&url=$escaped_uri;'],
     [qr{redis2_query set \$key \$echo_request_body; redis2_query expire \$key \$exptime;},
      'set_unescape_uri $url $arg_url; set_md5 $url;
        redis2_query set $key $echo_request_body; redis2_query expire $key $exptime;
        redis2_query sadd variants:$url $key; redis2_query expire variants:$url $exptime;'],
     [qr{redis2_query del \$key; redis2_pass redis;},
      'set_unescape_uri $url $arg_url; set_md5 $url;
        redis2_query eval $stale_cache_purge_script 2 $key variants:$url; redis2_pass redis;']) {
    my ($from, $to) = @$_;
    $VARIANTS =~ s/$from/$to/ or die "the variants config: no $from\n";
}

run_tests();

__DATA__

=== TEST 1: PURGE of a stored entry through redis2: 200, deleted, the next GET fills again
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- pre
::fill_and_purge_checks('/api/x');
--- request
GET /api/x
--- response_headers
X-Stale-Cache: MISS
Cache-Status: stale-cache; fwd=miss; fwd-status=200
--- response_body
backend GET /api/x hit 2
--- backend_hits: 2
--- no_error_log
[error]

=== TEST 2: PURGE and DELETE of a missing key: 404
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- request eval
["PURGE /api/none", "DELETE /api/none"]
--- error_code: 404
--- response_body
key: |/api/none
redis: not found
memo: none
pass-mark: none
--- check
::methods_checks();
--- no_error_log
[error]

=== TEST 3: the memo and a pass mark are dropped
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- request
GET /api/m
--- response_headers
X-Stale-Cache: MISS
--- check
::memo_and_mark_checks('/api/m');
--- no_error_log
[error]

=== TEST 4: purge under traffic through redis2: one fill, not a herd
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- pre
::under_traffic_pre('/api/h');
--- request eval
[ "PURGE /api/h", ("GET /api/h") x 100 ]
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 101
--- timeout: 15
--- check
::under_traffic_checks('/api/h');
--- no_error_log
[error]

=== TEST 5: all variants through redis2: a PURGE with one User-Agent deletes every copy
--- http_config eval: $::HTTP
--- config eval: $::VARIANTS
--- request
GET /metrics
--- check
::variants_checks('/api/x');
--- no_error_log
[error]
