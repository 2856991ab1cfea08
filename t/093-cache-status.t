# $stale_cache_rfc9211: `add_header Cache-Status $stale_cache_rfc9211 always;` gives an RFC 9211
# Cache-Status header for every status of the layer.
use lib 't/lib';
use Test::StaleCache;

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    log_format rfc9211 '$request_method $uri $stale_cache_status "$stale_cache_rfc9211"';
_EOC_

sub config {
    my ($extra) = @_;
    return drop_in_config(join "\n        ", 'add_header Cache-Status $stale_cache_rfc9211 always;',
                          'access_log logs/rfc9211.log rfc9211;', $extra // ())
        . "    location /off { add_header Cache-Status \$stale_cache_rfc9211 always; proxy_pass http://backend; }\n";
}

sub cs { $_[0]{headers}{'cache-status'} }

run_tests();

__DATA__

=== TEST 1: MISS, FRESH by lookup and by memo, BYPASS, PASS, ERROR (local zone off); none where the layer is off
--- http_config eval: $::HTTP . "    stale_cache_local_zone off;\n"
--- config eval: ::config()
--- request
GET /api/a
--- response_headers
X-Stale-Cache: MISS
Cache-Status: stale-cache; fwd=miss; fwd-status=200
--- check
my $r = http_get('/api/a');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'FRESH by lookup');
like(::cs($r), qr/^stale-cache; hit; ttl=[45]$/, 'FRESH: hit with the freshness left (105 - 100 s)');
$r = http_get('/api/a');
like(::cs($r), qr/^stale-cache; hit; ttl=[0-5]$/, 'FRESH by the memo: hit, ttl');
$r = http_request('POST', '/api/a');
is($r->{headers}{'x-stale-cache'}, 'BYPASS', 'POST: BYPASS');
is(::cs($r), 'stale-cache; fwd=bypass; fwd-status=200', 'BYPASS: fwd=bypass');
backend_config('/api/bad', status => 500);
http_get('/api/bad');
$r = http_get('/api/bad');
is($r->{status}, 500, 'a pass');
is(::cs($r), 'stale-cache; fwd=miss; fwd-status=500; detail=pass', 'PASS (header on a 500: always)');
$r = http_get('/off/x');
ok(!defined ::cs($r), 'the layer is off: no Cache-Status');
stop_redis();
$r = http_get('/api/e');
is($r->{headers}{'x-stale-cache'}, 'ERROR', 'redis down: ERROR');
is(::cs($r), 'stale-cache; fwd=bypass; fwd-status=200; detail=error', 'ERROR: fwd=bypass, detail=error');
start_redis();
--- error_log
TTL lookup failed

=== TEST 2: STALE (negative ttl) and the refresh request (fwd=request, in the access log)
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
fill_and_stale('/api/s');
--- request
GET /api/s
--- response_headers
X-Stale-Cache: STALE
Cache-Status: stale-cache; hit; ttl=-50; detail=stale
--- wait_for
redis('TTL', redis_key('/api/s')) > 100
--- check
my $log = "$TEST_NGINX_SERVROOT/logs/rfc9211.log";
wait_until(sub { -e $log && `cat $log` =~ /REFRESH/ }, 5, 'the refresh in the access log');
like(`cat $log`, qr{^GET /api/s REFRESH "stale-cache; fwd=request; fwd-status=200; detail=refresh"$}m,
     'REFRESH: fwd=request, detail=refresh');
my $r = http_get('/api/s');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'refreshed');

=== TEST 3: COLLAPSED and TIMEOUT
--- http_config eval: $::HTTP
--- config eval: ::config('set $cache_lock_timeout 0.5;')
--- request eval
["GET /api/c", "GET /api/c", "GET /api/c?slow"]
--- more_headers eval
["X-Backend-Delay: 0.2", "X-Backend-Delay: 0.2", "X-Backend-Delay: 0.2"]
--- concurrency: 3
--- check
my %by;
push @{ $by{ $_->{headers}{'x-stale-cache'} } }, ::cs($_) for responses();
is(scalar @{ $by{MISS} // [] }, 1, 'one MISS');
is(scalar @{ $by{COLLAPSED} // [] }, 2, 'two COLLAPSED');
is($_, 'stale-cache; fwd=miss; fwd-status=200; collapsed', 'COLLAPSED: fwd=miss, collapsed')
    for @{ $by{COLLAPSED} // [] };
backend_config('/api/t', delay => 1.5);
redis('FLUSHALL');
my $pid = fork // die;
if (!$pid) { http_get('/api/t'); exit 0 }
wait_backend_hits('/api/t', 1, 5);
my $r = http_get('/api/t');
waitpid($pid, 0);
is($r->{headers}{'x-stale-cache'}, 'TIMEOUT', 'a waiter gave up: TIMEOUT');
is(::cs($r), 'stale-cache; fwd=miss; fwd-status=200; detail=lock-timeout', 'TIMEOUT: detail=lock-timeout');
--- error_log
waited $cache_lock_timeout

=== TEST 4: with $cache_stale_if_error the ttl counts the grace band too: FRESH by lookup and by memo agree, STALE and STALE-ERROR are negative
Stored for 165 s with a 100 s stale window and 60 s of grace: fresh for 5 s, stale from 159 s
(1 s past freshness), in the band below 60 s.
--- http_config eval: $::HTTP
--- config eval
::config("set \$cache_stale_if_error 60;\n        srcache_fetch_skip \$stale_cache_skip_fetch;")
    =~ s/exptime=105/exptime=165/r
--- request
GET /api/g
--- response_headers
X-Stale-Cache: MISS
--- check
my $key = redis_key('/api/g');
my $r = http_get('/api/g');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'FRESH by lookup');
like(::cs($r), qr/^stale-cache; hit; ttl=[45]$/, 'FRESH by lookup: 165 - 100 - 60 s left');
$r = http_get('/api/g');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'FRESH by the memo');
like(::cs($r), qr/^stale-cache; hit; ttl=[3-5]$/, 'FRESH by the memo: the same freshness left');
redis('FLUSHALL');
my $s = http_get('/api/s2');
is($s->{headers}{'x-stale-cache'}, 'MISS', 'another entry filled');
is(redis('EXPIRE', redis_key('/api/s2'), 150), 1, 'EXPIRE 150: 10 s past freshness');
backend_config('/api/s2', delay => 1);
$r = http_get('/api/s2');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'STALE');
like(::cs($r), qr/^stale-cache; hit; ttl=-1[01]; detail=stale$/, 'STALE: seconds past freshness (150 - 160)');
wait_until(sub { redis('TTL', redis_key('/api/s2')) > 160 }, 5, 'the refresh to store');
my $e = http_get('/api/e2');
is($e->{headers}{'x-stale-cache'}, 'MISS', 'a third entry filled');
is(redis('EXPIRE', redis_key('/api/e2'), 30), 1, 'EXPIRE 30: in the grace band');
backend_config('/api/e2', status => 500);
$r = http_get('/api/e2');
is($r->{headers}{'x-stale-cache'}, 'STALE-ERROR', 'the backend failed: STALE-ERROR');
like(::cs($r), qr/^stale-cache; hit; ttl=-13[01]; detail=stale-if-error$/, 'STALE-ERROR: seconds past freshness (30 - 160)');
