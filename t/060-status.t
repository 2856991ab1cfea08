# $stale_cache_status end to end through the drop-in base configuration: MISS, FRESH, STALE,
# the REFRESH it starts, FRESH again. Each value also has blocks of its own, next to the
# behaviour it names:
#   MISS, FRESH          t/020-collapse.t TEST 5 (and most blocks)
#   COLLAPSED            t/020-collapse.t TEST 1, 2, 6, 7 (7: debug-level error_log), 8
#   TIMEOUT              t/020-collapse.t TEST 3
#   STALE, REFRESH       t/030-stale.t (TEST 7: REFRESH as the backend and access log see it)
#   BYPASS               t/040-failopen.t TEST 5 (POST), TEST 12 (variables unset)
#   ERROR                t/040-failopen.t TEST 1, 4 (Redis down or silent), 2, 3 (bad replies),
#                        6, 7 (bad $cache_stale), 8-10 (missing variables, unknown zone)
#   the freshness memo   t/070-memo.t
use lib 't/lib';
use Test::StaleCache;

run_tests();

__DATA__

=== TEST 1: drop-in: the full base configuration, MISS -> FRESH -> stale -> STALE -> refresh -> FRESH
The memo (on in the base configuration) lasts ttl - stale: with TTL 101 the FRESH lookup
remembers the key for 1 s only.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- check
my $ua = { 'User-Agent' => 'e2e/1' };
my $key = redis_key('/api/e2e', 'e2e/1');
my $step = sub {
    my ($what, $status, $cache, $hit) = @_;
    my $r = http_get('/api/e2e', $ua);
    is($r->{status}, 200, "$what: 200");
    is($r->{headers}{'x-stale-cache'}, $status, "$what: X-Stale-Cache $status");
    is($r->{headers}{'x-cache'}, $cache, "$what: X-Cache $cache");
    is($r->{body}, "backend GET /api/e2e hit $hit\n", "$what: body of hit $hit");
    return $r;
};
$step->('first request', 'MISS', 'MISS', 1);
my $ttl = redis('TTL', $key);
ok($ttl >= 100 && $ttl <= 105, "stored under md5(UA|uri) with TTL ~105 (got $ttl)");
redis('EXPIRE', $key, 101);
$step->('second request', 'FRESH', 'HIT', 1);
my $looked_up = Time::HiRes::time();    # the FRESH lookup was before this
redis('EXPIRE', $key, 50);
sleep_until($looked_up + 1 + 0.3);    # the memo (1 s from the lookup) is over, 0.3 s margin
$step->('stale request', 'STALE', 'HIT', 1);
wait_until(sub { refreshed('/api/e2e', $key) }, 5, 'the refresh of /api/e2e to be stored');
is(backend_hits('/api/e2e'), 2, 'the refresh reached the backend');
$ttl = redis('TTL', $key);
ok($ttl >= 100 && $ttl <= 105, "refreshed copy stored with TTL ~105 (got $ttl)");
$step->('after the refresh', 'FRESH', 'HIT', 2);
is(backend_hits('/api/e2e'), 2, 'no more backend hits');
--- error_log eval
[qr{stale_cache: refresh of "/api/e2e" via 127\.0\.0\.1:\d+ 200}]
