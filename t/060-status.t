# $stale_cache_status: every value (FRESH, STALE, MISS, COLLAPSED, TIMEOUT, REFRESH, BYPASS,
# ERROR) in a short block of its own; the drop-in base configuration end to end; the
# freshness memo (stale_cache_memo).
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

# The X-Stale-Cache values of responses(), sorted.
sub statuses { sort map { $_->{headers}{'x-stale-cache'} // '(none)' } responses() }

run_tests();

__DATA__

=== TEST 1: MISS, then FRESH
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- request eval
["GET /api/a", "GET /api/a"]
--- response_body
backend GET /api/a hit 1
--- response_headers eval
["X-Stale-Cache: MISS\nX-Cache: MISS\nX-Store: STORE", "X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS"]
--- backend_hits: 1
--- redis_check eval
[[['TTL', redis_key('/api/a')], qr/^10[0-5]$/]]



=== TEST 2: STALE
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
fill_and_stale('/api/st');
--- request
GET /api/st
--- response_body
backend GET /api/st hit 1
--- response_headers
X-Stale-Cache: STALE
X-Cache: HIT
--- wait: 0.3
--- backend_hits: 2



=== TEST 3: COLLAPSED: 10 concurrent misses, one fill, the others wait and get the stored copy
At the info level: at the debug level a waiting request crashes the worker (see the
"debug error_log" block below).
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
backend_config('/api/c', delay => 0.5);
--- request
GET /api/c
--- concurrency: 10
--- response_body
backend GET /api/c hit 1
--- backend_hits: 1
--- check
is(join(' ', statuses()), join(' ', ('COLLAPSED') x 9, 'MISS'), 'one MISS, nine COLLAPSED');
for my $r (grep { ($_->{headers}{'x-stale-cache'} // '') eq 'COLLAPSED' } responses()) {
    is($r->{headers}{'x-cache'}, 'HIT', 'a COLLAPSED request is served from the cache');
    cmp_ok($r->{elapsed}, '>=', 0.45, 'it waited for the fill');
}



=== TEST 4: TIMEOUT: $cache_lock_timeout 0.2, fill takes 0.6 s, the waiter gives up
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config('set $cache_lock_timeout 0.2;')
--- pre
backend_config('/api/t', delay => 0.6);
--- request
GET /api/t
--- concurrency: 2
--- response_body_like: ^backend GET /api/t hit [12]$
--- backend_hits: 2
--- check
is(join(' ', statuses()), 'MISS TIMEOUT', 'one MISS, one TIMEOUT');
my ($t) = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'TIMEOUT' } responses();
$t ||= { headers => {}, elapsed => -1 };
is($t->{headers}{'x-cache'}, 'MISS', 'the TIMEOUT request found nothing in the cache');
cmp_ok($t->{elapsed}, '>=', 0.75, "it waited 0.2 s, then went to the backend itself ($t->{elapsed}s)");
cmp_ok($t->{elapsed}, '<', 1.1, "it did not wait for the whole fill first ($t->{elapsed}s)");
--- error_log
[warn]
stale_cache: waited $cache_lock_timeout for the request filling "|/api/t"; going on without it



=== TEST 5: COLLAPSED with the error_log at the debug level (the harness default): no worker crash
A waiting request arms the module's 2 ms poll timer; its event must survive nginx's debug
logging of timer events ("event timer del: %d", which reads ((ngx_connection_t *) ev->data)->fd).
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
backend_config('/api/cd', delay => 0.3);
--- request
GET /api/cd
--- concurrency: 2
--- response_body
backend GET /api/cd hit 1
--- backend_hits: 1
--- check
is(join(' ', statuses()), 'COLLAPSED MISS', 'one MISS, one COLLAPSED');



=== TEST 6: REFRESH (seen by the backend through a header)
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config('proxy_set_header X-Seen-Status $stale_cache_status;')
--- pre
fill_and_stale('/api/rf');
--- request
GET /api/rf
--- response_headers
X-Stale-Cache: STALE
--- wait: 0.4
--- check
my @log = backend_log('/api/rf');
is(scalar @log, 2, 'fill + refresh reached the backend');
is($log[0]{headers}{'x-seen-status'}, 'MISS', 'fill: MISS');
is($log[1]{headers}{'x-seen-status'}, 'REFRESH', 'refresh: REFRESH');



=== TEST 7: BYPASS: POST is not in $cache_methods (no TTL lookup, nothing stored)
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
$main::ttl_calls = redis_calls('ttl');
--- request
POST /api/b
hello
--- response_body
backend POST /api/b hit 1
--- response_headers
X-Stale-Cache: BYPASS
--- backend_hits: 1
--- check
is(redis_calls('ttl') - $main::ttl_calls, 0, 'no TTL lookup');
is(redis('DBSIZE'), 0, 'nothing stored');



=== TEST 8: BYPASS: "stale_cache on" without $cache_lock, $cache_ttl and $cache_key
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config
    location /plain {
        stale_cache on;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend;
    }
--- request
GET /plain/x
--- response_body
backend GET /plain/x hit 1
--- response_headers
X-Stale-Cache: BYPASS
--- error_log
"stale_cache on" but $cache_lock, $cache_ttl and $cache_key are unset



=== TEST 9: ERROR: a bad runtime value ($cache_stale "abc") passes the request through untouched
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config('set $cache_stale $arg_stale;')
--- pre
$main::ttl_calls = redis_calls('ttl');
--- request eval
["GET /api/bad?stale=abc", "GET /api/bad?stale=abc"]
--- response_body eval
["backend GET /api/bad?stale=abc hit 1\n", "backend GET /api/bad?stale=abc hit 1\n"]
--- response_headers eval
["X-Stale-Cache: ERROR\nX-Cache: MISS", "X-Stale-Cache: ERROR\nX-Cache: HIT"]
--- backend_hits: 1
--- check
is(redis_calls('ttl') - $main::ttl_calls, 0, 'no TTL lookup');
my @l = grep { /is not a number of seconds/ } split /\n/, error_log_text();
is(scalar @l, 1, 'the error is logged once (rate-limited)') or diag(join "\n", @l);
--- error_log
[error]
stale_cache: $cache_stale: "abc" is not a number of seconds; the request passes through untouched



=== TEST 10: a literal bad value ($cache_stale abc) is rejected by nginx -t
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config('set $cache_stale abc;')
--- must_die
--- error_log
stale_cache: $cache_stale: "abc" is not a number of seconds



=== TEST 11: ERROR: Redis down, the TTL lookup fails open (no 500)
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
stop_redis();
--- request
GET /api/e
--- response_body
backend GET /api/e hit 1
--- response_headers
X-Stale-Cache: ERROR
--- timeout: 5
--- backend_hits: 1
--- error_log
stale_cache: TTL lookup failed for "/api/e"; serving without the stale cache layer



=== TEST 12: drop-in: the full base configuration, MISS -> FRESH -> stale -> STALE -> refresh -> FRESH
The memo (on in the base configuration) lasts ttl - stale: with TTL 101 the FRESH lookup
remembers the key for 1 s only.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_persist /redispersist;
        set $cache_key "$http_user_agent|$uri";
        set $cache_stale 100;
        set $cache_lock_exptime 30;
        set $cache_backend_lock_timeout 0.01;
        set $cache_lock_timeout 3;
        set $cache_lock_timeout_wait 0.06;
        set $cache_skip_fetch "X-Skip-Fetch";
        set_escape_uri $escaped_key $cache_key;
        stale_cache on;
        if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /redis $cache_key;}
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Cache $srcache_fetch_status;
        add_header X-Store $srcache_store_status;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
    location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis; stale_cache_redis_command PERSIST $key; }
    location = /redis { internal; set_md5 $redis_key $args; stale_cache_redis_pass redis; stale_cache_redis_command GET $redis_key; }
    location = /redis2 { internal; set_unescape_uri $exptime $arg_exptime; set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis; stale_cache_redis_command SET $key $request_body; stale_cache_redis_command EXPIRE $key $exptime; }
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
redis('EXPIRE', $key, 50);
sleep_ms(1200);    # the 1 s memo is over
$step->('stale request', 'STALE', 'HIT', 1);
sleep_ms(400);
is(backend_hits('/api/e2e'), 2, 'the refresh reached the backend');
$ttl = redis('TTL', $key);
ok($ttl >= 100 && $ttl <= 105, "refreshed copy stored with TTL ~105 (got $ttl)");
$step->('after the refresh', 'FRESH', 'HIT', 2);
is(backend_hits('/api/e2e'), 2, 'no more backend hits');
--- error_log eval
[qr{stale_cache: refresh of "/api/e2e" via 127\.0\.0\.1:\d+ 200}]



=== TEST 13: stale_cache_memo on (default): after one FRESH lookup no more TTL commands
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config()
--- pre
http_get('/api/memo');    # MISS, fill
my $r = http_get('/api/memo');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'one FRESH lookup');
$main::ttl_calls = redis_calls('ttl');
cmp_ok($main::ttl_calls, '>=', 2, "the MISS and the FRESH request each looked up the TTL ($main::ttl_calls)");
--- request eval
[("GET /api/memo") x 10]
--- response_body
backend GET /api/memo hit 1
--- response_headers
X-Stale-Cache: FRESH
X-Cache: HIT
--- backend_hits: 1
--- check
is(redis_calls('ttl') - $main::ttl_calls, 0, '10 requests within the fresh window: no TTL command');
cmp_ok(redis_calls('get'), '>=', 10, 'srcache_fetch still reads Redis');



=== TEST 14: stale_cache_memo off: every request looks up the TTL
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
drop_in_config('stale_cache_memo off;')
--- pre
http_get('/api/memo');    # MISS, fill
my $r = http_get('/api/memo');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'one FRESH lookup');
$main::ttl_calls = redis_calls('ttl');
--- request eval
[("GET /api/memo") x 10]
--- response_body
backend GET /api/memo hit 1
--- response_headers
X-Stale-Cache: FRESH
X-Cache: HIT
--- backend_hits: 1
--- check
is(redis_calls('ttl') - $main::ttl_calls, 10, '10 requests: 10 TTL commands');
