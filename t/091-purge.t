# stale_cache_purge with the module's native Redis locations: PURGE/DELETE of a URL deletes
# its entry through $cache_purge and drops the key's memo and pass mark; 200 or 404; nginx's
# allow/deny guard it (on a purge server); a purge under traffic gives one fill. t/092-purge-redis2.t runs the
# same checks through redis2/HttpRedis locations.
use lib 't/lib';
use Test::StaleCache;
require './t/lib/purge_blocks.pl';

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
_EOC_

our $PURGE_LOCATION = <<'_EOC_';
    location = /redispurge { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis; stale_cache_redis_command DEL $key; }
_EOC_

# The documented location with purging on; $access (allow/deny) at location level.
sub config {
    my ($access) = @_;
    return drop_in_config("set \$cache_purge /redispurge;\n        stale_cache_purge PURGE DELETE;\n        "
                          . ($access // '')) . $PURGE_LOCATION
        . "    location = /metrics { stale_cache_metrics; }\n";
}

# A purge server on its own port, as docs/purge.md documents: the public server has no purge, the
# purge server's allow/deny guard it.
our $PURGE_PORT = pick_port();
sub purge_server {
    my ($access) = @_;
    return $HTTP . "    server {\n        listen 127.0.0.1:$PURGE_PORT;\n        $access\n"
        . config() . "    }\n";
}

sub curl_status {
    my ($method, $port, $uri) = @_;
    return `curl -s -o /dev/null -H 'User-Agent:' -w '%{http_code}' -X $method http://127.0.0.1:$port$uri`;
}

# All variants of a URL, as docs/purge.md writes it with native locations: the store location
# also lists the entry's Redis key in the URL's variant set; the purge location runs the
# module's script on the entry's key and that set.
our $VARIANTS_HTTP = $HTTP . <<'_EOC_';
    stale_cache_redis_variable $escaped_key $cache_key escape;
    stale_cache_redis_variable $escaped_uri $uri escape;
    stale_cache_redis_variable $redis_key $arg_key unescape md5;
    stale_cache_redis_variable $redis_url $arg_url unescape md5;
    stale_cache_redis_variable $redis_fetch_key $args md5;
_EOC_
our $VARIANTS = <<'_EOC_';
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_purge /redispurge;
        set $cache_key "$http_user_agent|$uri";
        set $cache_stale 100;
        stale_cache on;
        stale_cache_purge PURGE;
        srcache_fetch GET /redis $cache_key;
        srcache_store PUT /redis2 key=$escaped_key&exptime=105&url=$escaped_uri;
        add_header X-Stale-Cache $stale_cache_status always;
        proxy_pass http://backend;
    }
    location = /redisttl { internal;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $redis_key; }
    location = /redis { internal;
        stale_cache_redis_pass redis; stale_cache_redis_command GET $redis_fetch_key; }
    location = /redis2 { internal; client_max_body_size 16m; stale_cache_redis_pass redis;
        stale_cache_redis_command SET $redis_key $request_body;
        stale_cache_redis_command EXPIRE $redis_key $arg_exptime;
        stale_cache_redis_command SADD variants:$redis_url $redis_key;
        stale_cache_redis_command EXPIRE variants:$redis_url $arg_exptime; }
    location = /redispurge { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command EVAL $stale_cache_purge_script 2 $redis_key variants:$redis_url; }
    location = /metrics { stale_cache_metrics; }
_EOC_

run_tests();

__DATA__

=== TEST 1: PURGE of a stored entry: 200, deleted from Redis, the next GET fills again
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
::fill_and_purge_checks('/api/x');
--- request
GET /api/x
--- response_headers
X-Stale-Cache: MISS
--- response_body
backend GET /api/x hit 2
--- backend_hits: 2
--- no_error_log
[error]

=== TEST 2: PURGE of a missing key: 404; DELETE purges too; other methods are not purges
--- http_config eval: $::HTTP
--- config eval: ::config()
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

=== TEST 3: the memo and a pass mark are dropped: the next request looks up and fills
--- http_config eval: $::HTTP
--- config eval: ::config()
--- request
GET /api/m
--- response_headers
X-Stale-Cache: MISS
--- check
::memo_and_mark_checks('/api/m');
--- no_error_log
[error]

=== TEST 4: access control: purges on a purge server whose allow/deny guard it
--- http_config eval: ::purge_server('allow 127.0.0.2; deny all;')
--- config eval: drop_in_config() . $::PURGE_LOCATION
--- request
GET /api/d
--- check
is(::curl_status('PURGE', $::PURGE_PORT, '/api/d'), 403, 'purge server, client not allowed: 403');
is(redis('EXISTS', redis_key('/api/d')), 1, 'the entry is still there');
my $r = http_request('PURGE', '/api/d');
like($r->{body}, qr{^backend PURGE /api/d}, 'the public server has no purge: PURGE is proxied');
is(redis('EXISTS', redis_key('/api/d')), 1, 'the entry is still there');
is(::curl_status('GET', $::PURGE_PORT, '/api/d'), 403, 'the purge server refuses reads too');

=== TEST 5: the purge server lets allowed clients purge
--- http_config eval: ::purge_server('allow 127.0.0.1; deny all;')
--- config eval: drop_in_config() . $::PURGE_LOCATION
--- request
GET /api/d
--- check
is(::curl_status('PURGE', $::PURGE_PORT, '/api/d'), 200, 'allowed client: 200');
is(redis('EXISTS', redis_key('/api/d')), 0, 'the entry is gone');
my $r = http_get('/api/d');
is($r->{headers}{'x-stale-cache'}, 'MISS', 'the public server fills it again');

=== TEST 6: purge under traffic: PURGE among 100 concurrent GETs gives one fill, not a herd
--- http_config eval: $::HTTP
--- config eval: ::config()
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

=== TEST 7: nginx -t refuses stale_cache_purge GET
--- http_config eval: $::HTTP
--- config
    location /api { stale_cache_purge GET; }
--- must_die
--- error_log
GET and HEAD would purge on every read

=== TEST 8: nginx -t refuses a literal $cache_purge naming no location
--- http_config eval: $::HTTP
--- config eval
drop_in_config('set $cache_purge /nowhere; stale_cache_purge PURGE;')
--- must_die
--- error_log
$cache_purge: "/nowhere" names no location

=== TEST 9: all variants: a PURGE with one User-Agent deletes every User-Agent's copy
--- http_config eval: $::VARIANTS_HTTP
--- config eval: $::VARIANTS
--- request
GET /metrics
--- check
::variants_checks('/api/x');
--- no_error_log
[error]
