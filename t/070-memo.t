# The freshness memo: fresh keys skip the TTL lookup until their fresh time runs out; a full
# zone evicts the least recently used memos and keeps serving.
use lib 't/lib';
use Test::StaleCache;
run_tests();

__DATA__

=== TEST 1: the memo skips TTL lookups while fresh (srcache still reads Redis) and looks up again when it runs out
Through the drop-in configuration (memo on by default).
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
redis('CONFIG', 'RESETSTAT');
my $r = http_get('/api/memo');
is($r->{headers}{'x-stale-cache'}, 'MISS', 'the fill is a MISS');
is(redis_calls('ttl'), 1, 'the MISS looked the TTL up');
# Fresh for 2 more seconds: TTL 102 with the 100 s stale window.
redis('EXPIRE', redis_key('/api/memo'), 102);
$main::expired_at = Time::HiRes::time();
redis('CONFIG', 'RESETSTAT');
--- request
GET /api/memo
--- response_body
backend GET /api/memo hit 1
--- response_headers
X-Stale-Cache: FRESH
X-Cache: HIT
--- check
is(redis_calls('ttl'), 1, 'the FRESH request looked the TTL up');
for (1 .. 10) {
    my $r = http_get('/api/memo');
    is($r->{headers}{'x-stale-cache'}, 'FRESH', "request $_ within the memo is FRESH");
    is($r->{body}, "backend GET /api/memo hit 1\n", "request $_: the cached body");
}
is(redis_calls('ttl'), 1, 'no TTL lookup while the memo holds');
cmp_ok(redis_calls('get'), '>=', 11, 'srcache_fetch still read Redis every time');
# The memo runs out 2 s after the lookup; Redis rounds TTL to the nearest second, so it
# answers below 100 (stale) from 2.5 s after the EXPIRE on: wait until then, 0.5 s margin.
sleep_until($main::expired_at + 2.5 + 0.5);
my $r = http_get('/api/memo');
is(redis_calls('ttl'), 2, 'the memo ran out: looked up again');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'and the key is now in its stale window');
wait_log('stale_cache: refresh of "/api/memo"');    # let the refresh end before nginx stops
is(backend_hits('/api/memo'), 2, 'the fill and one refresh');

=== TEST 2: stale_cache_memo off looks up every time
--- http_config
    stale_cache_zone locks 1m;
--- config
    location /m {
        set $cache_lock locks;
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        stale_cache on;
        stale_cache_memo off;
        add_header X-Stale-Cache $stale_cache_status;
        echo ok;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
--- pre
redis('CONFIG', 'RESETSTAT');
redis('SET', '/m/b', 'x', 'EX', 1000);
--- request
GET /m/b
--- check
http_get('/m/b') for 1 .. 5;
is(redis_calls('ttl'), 6, 'one TTL lookup per request');

=== TEST 3: a full zone evicts least recently used memos, logs it once and keeps serving
--- http_config
    stale_cache_zone tiny 32k;
--- config
    location /m {
        set $cache_lock tiny;
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        stale_cache on;
        add_header X-Stale-Cache $stale_cache_status;
        echo ok;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
--- pre
redis('CONFIG', 'RESETSTAT');
redis('SET', "/m/k$_", 'x', 'EX', 1000) for 1 .. 600;
--- request
GET /m/k1
--- check
my ($capacity) = error_log_text() =~ /zone "tiny": \d+ slots of \d+ bytes, room for (\d+) entries/;
ok($capacity && $capacity < 600, "the zone holds fewer entries than the keys used ($capacity)");
my $bad = 0;
for my $i (1 .. 600) {
    my $r = http_get("/m/k$i");
    $bad++ unless $r->{status} == 200 && $r->{headers}{'x-stale-cache'} eq 'FRESH';
}
is($bad, 0, 'every request was served FRESH while the zone evicted');
my $before = redis_calls('ttl');
http_get('/m/k600');
is(redis_calls('ttl'), $before, 'a recently used key is still remembered');
http_get('/m/k2');
is(redis_calls('ttl'), $before + 1, 'a least recently used key was evicted and is looked up again');
my @lines = error_log_text() =~ /(is full: evicting the least recently used freshness memos)/g;
is(scalar @lines, 1, 'the eviction is logged once');

=== TEST 4: a purge ends the worker's own copy of the memo too: the next request looks the TTL up and fills
Workers keep copies of the memos they read, good while the zone's memo epoch holds; clearing
a memo (a purge here) moves it.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config("set \$cache_purge /redispurge;\n        stale_cache_purge PURGE;\n")
. "    location = /redispurge { internal; set_unescape_uri \$key \$arg_key; set_md5 \$key;
        stale_cache_redis_pass redis; stale_cache_redis_command DEL \$key; }\n"
--- pre
is(http_get('/api/kept')->{headers}{'x-stale-cache'}, 'MISS', 'the fill');
redis('CONFIG', 'RESETSTAT');
--- request
GET /api/kept
--- response_headers
X-Stale-Cache: FRESH
--- check
for (1 .. 5) {
    is(http_get('/api/kept')->{headers}{'x-stale-cache'}, 'FRESH', "request $_: FRESH");
}
is(redis_calls('ttl'), 1, 'one lookup, then the memo');
is(http_request('PURGE', '/api/kept')->{status}, 200, 'purged');
redis('CONFIG', 'RESETSTAT');
my $r = http_get('/api/kept');
is($r->{headers}{'x-stale-cache'}, 'MISS', 'after the purge: a MISS');
is(redis_calls('ttl'), 1, 'which looked the TTL up (no copy of the old memo was used)');
is($r->{body}, "backend GET /api/kept hit 2\n", 'and filled from the backend');
is(http_get('/api/kept')->{headers}{'x-stale-cache'}, 'FRESH', 'then FRESH again');
