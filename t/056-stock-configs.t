# The configurations shipped in nginx-conf/, run as they are (their server block, with the
# harness's backend and Redis): responses with Set-Cookie are not stored (issue 13), backend
# connections are kept alive (issue 12), and a POST in $cache_methods that srcache does not
# cache is reported. drop-in-redis2.conf needs redis2/HttpRedis, built once into
# build/reference-modules (about 20 s): its blocks say `--- redis2`, and are skipped, saying
# why, where the modules cannot be built.
use lib 't/lib';
use Test::StaleCache;
use StockConf;

# A reverse proxy on this host in front of the main listener, as a TLS terminator or another
# nginx would be: every request it forwards comes from 127.0.0.1.
our $PROXY_PORT = Test::StaleCache::pick_port();
sub local_proxy {
    return <<"_EOC_";
    server {
        listen 127.0.0.1:$::PROXY_PORT;
        location / {
            proxy_pass http://127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT};
            proxy_set_header User-Agent \$http_user_agent;
        }
    }
_EOC_
}

# Through the local proxy, /metrics and PURGE are refused; on the admin listener both work.
sub check_admin_guard {
    my $key = redis_key('/api/g');
    is(http_get('/api/g')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    my $r = at_port($::PROXY_PORT, 'GET /metrics');
    is($r->{status}, 404, 'GET /metrics through the local proxy: 404');
    unlike($r->{body}, qr/stale_cache_requests_total/, 'no metrics through the proxy');
    is(http_get('/metrics')->{status}, 404, 'GET /metrics on the main listener: 404');
    $r = at_port($::PROXY_PORT, 'PURGE /api/g');
    is($r->{status}, 403, 'PURGE through the local proxy: 403');
    is(http_request('PURGE', '/api/g')->{status}, 403, 'PURGE on the main listener: 403');
    is(redis('EXISTS', $key), 1, 'the entry is still there');
    is(at_port($::PROXY_PORT, 'GET /api/g')->{headers}{'x-stale-cache'}, 'FRESH',
       'GET through the proxy is served from the cache');
    $r = at_port($::ADMIN_PORT, 'GET /metrics');
    is($r->{status}, 200, 'GET /metrics on the admin listener: 200');
    like($r->{body}, qr/^stale_cache_requests_total\{zone="srcache_locks",status="fresh"\} [1-9]/m,
         'with the counters');
    $r = at_port($::ADMIN_PORT, 'PURGE /api/g');
    is($r->{status}, 200, 'PURGE on the admin listener: 200');
    is(redis('EXISTS', $key), 0, 'the entry is gone');
}

sub check_set_cookie {
    is(backend_hits('/api/sc'), 2, 'both requests went to the backend');
    is(redis('EXISTS', redis_key('/api/sc')), 0, 'nothing stored for the Set-Cookie response');
    like(redis('GET', redis_key('/api/plain')) // '', qr/hit 1\n\z/, 'a plain response is stored');
    # Its fetch and store locations have roles (native GET/SET, or stale_cache_role).
    my $t = nginx_t_output();
    unlike($t, qr/no location has a role/, 'nginx -t: no legacy notice');
    unlike($t, qr/\[warn\]/, 'nginx -t: no warning');
}

sub check_keepalive {
    my @log = backend_log();
    is(scalar @log, 100, '100 backend requests');
    my %conns = map { $_->{conn} => 1 } @log;
    my $n = keys %conns;
    ok($n <= 2, "100 requests used $n backend connection(s)");
    ok(!grep({ ($_->{headers}{connection} // '') =~ /close/i } @log), 'no Connection: close');
}

# Redis full (issue: every error reply counts): noeviction, 2 MB of data, maxmemory 1mb, so
# every write answers -OOM. The stock store location is one "SET key body EX ttl": a refused
# store changes nothing in Redis, counts as not stored (its answer is kept on this node), and a stale entry's
# refused refresh does not renew the old copy as fresh.
sub check_redis_full {
    my $key = redis_key('/api/full');
    is(http_get('/api/full')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    is(redis('EXPIRE', $key, 50), 1, 'now stale (50 s left)');
    redis('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    redis('SET', "filler:$_", 'f' x 65536) for 1 .. 32;
    redis('CONFIG', 'SET', 'maxmemory', '1mb');
    my $r = http_get('/api/full');
    is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale: served at once, refresh sent');
    wait_log(qr/refused SET \(command 1 of \d\) of location "\/redis2" with OOM/, 10);
    wait_backend_hits('/api/full', 2);
    $r = http_get('/api/full');
    is($r->{headers}{'x-stale-cache'}, 'STALE', 'after the refused refresh: still STALE, not FRESH');
    is($r->{body}, "backend GET /api/full hit 1\n", 'the old body');
    my $ttl = redis('TTL', $key);
    ok($ttl > 0 && $ttl <= 50, "the old copy kept its life (TTL $ttl)");
    is(http_get('/api/cold')->{headers}{'x-stale-cache'}, 'MISS', 'a cold miss under OOM');
    my $cold_hits = backend_hits('/api/cold');
    is(http_get('/api/cold')->{headers}{'x-stale-cache'}, 'LOCAL',
       'its store was refused: its answer kept on this node (the local zone, on by default)');
    is(backend_hits('/api/cold'), $cold_hits, 'no second backend request');
    is(redis('EXISTS', redis_key('/api/cold')), 0, 'nothing stored');
    $r = at_port($::ADMIN_PORT, 'GET /metrics');
    like($r->{body}, qr/^stale_cache_fills_total\{zone="srcache_locks",outcome="stored"\} 2$/m,
         'metrics: the two fills before Redis was full (/api/warm, /api/full) counted stored');
    like($r->{body}, qr/^stale_cache_fills_total\{zone="srcache_locks",outcome="not_stored"\} 1$/m,
         'metrics: the refused one not stored');
    is(error_log_count(qr/refused SET \(command 1 of 1\) of location "\/redis2" with OOM: "OOM /), 1,
       'one line (once per 10 s), naming the command, the location and the cause');
    redis('CONFIG', 'SET', 'maxmemory', '0');
}

run_tests();

__DATA__

=== TEST 1: stock-debian.conf: a response with Set-Cookie is not stored
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- pre
backend_config('/api/sc', header => ['Set-Cookie: session=alice']);
--- request eval
["GET /api/sc", "GET /api/sc", "GET /api/plain"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS", "X-Store: STORE"]
--- check
check_set_cookie();



=== TEST 2: drop-in-redis2.conf: same
--- redis2
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- pre
backend_config('/api/sc', header => ['Set-Cookie: session=alice']);
--- request eval
["GET /api/sc", "GET /api/sc", "GET /api/plain"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS", "X-Store: STORE"]
--- check
check_set_cookie();



=== TEST 3: stock-debian.conf: 100 requests reuse kept-alive backend connections
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request eval
[map { "GET /api/ka$_" } 1 .. 100]
--- check
check_keepalive();



=== TEST 4: drop-in-redis2.conf: same
--- redis2
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- request eval
[map { "GET /api/ka$_" } 1 .. 100]
--- check
check_keepalive();



=== TEST 5: POST in $cache_methods without srcache_methods: collapsed but not cached, reported once
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf', 'set $cache_methods "GET POST";')
--- request eval
["POST /api/p\nx", "POST /api/p\nx"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS"]
--- check
is(error_log_count(qr/\$cache_methods lists POST but srcache did not store the POST response of "\/api\/p": srcache caches GET and HEAD only unless "srcache_methods" lists POST too/), 1, 'reported once');



=== TEST 6: with srcache_methods GET HEAD POST the POST is cached, nothing reported
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf', 'set $cache_methods "GET POST"; srcache_methods GET HEAD POST;')
--- request eval
["POST /api/p\nx", "POST /api/p\nx"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: STORE", "X-Stale-Cache: FRESH\nX-Cache: HIT"]
--- no_error_log
srcache did not store



=== TEST 7: stock-debian.conf with the hot tier: while Redis is down, hot keys are served from the zone within their fresh period
--- http_config eval: ::stock_http('stock-debian.conf') . "    stale_cache_hot_zone hot 4m;\n"
--- config eval: ::stock('stock-debian.conf', 'stale_cache_hot on; stale_cache_hot_max_age 60s;')
--- request
GET /api/warm
--- check
is(http_get('/api/h')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
my $hot = wait_until(sub { my $r = http_get('/api/h'); $r->{headers}{'x-stale-cache'} eq 'HOT' && $r },
    3, 'the key served from the hot zone');
stop_redis();
# Another key's lookup fails: this worker's Redis backoff starts ($stale_cache_redis_down).
my $other = http_get('/api/other');
is($other->{status}, 200, 'another key passes through to the backend');
my $r = http_get('/api/h');
is($r->{headers}{'x-stale-cache'}, 'HOT', 'Redis down: the hot key is still served from the zone');
is($r->{body}, "backend GET /api/h hit 1\n", 'with its cached body');
is(backend_hits('/api/h'), 1, 'the backend saw the key once');
# (The outage's start and /api/other's failed lookup are logged; nothing for the hot key.)
is(error_log_count(qr/\[error\].*GET \/api\/h /), 0, 'no error line for the hot key');
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 8: stock-debian.conf: /metrics and PURGE answer only on the admin listener, never through a local proxy
--- http_config eval: ::stock_http('stock-debian.conf') . ::local_proxy()
--- config eval: ::stock('stock-debian.conf', 'stale_cache_purge PURGE;')
--- request
GET /api/warm
--- check
check_admin_guard();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 9: drop-in-redis2.conf: same
--- redis2
--- http_config eval: ::stock_http('drop-in-redis2.conf') . ::local_proxy()
--- config eval: ::stock('drop-in-redis2.conf', 'stale_cache_purge PURGE;')
--- request
GET /api/warm
--- check
check_admin_guard();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 10: stock-debian.conf: Redis full (-OOM): nothing counted stored, the old copy not renewed as fresh, one log line
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
check_redis_full();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]
