# Fail open: whatever goes wrong with Redis, the TTL location or the $cache_*
# variables, the request is served by the backend (never a 500, never a hang),
# with $stale_cache_status ERROR and one rate-limited error line. (With Redis away and the
# local zone on, the default, requests collapse on the node instead: t/048-local.t.)
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

our $BASE_HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
_EOC_

# nginx -t's error about $what cites a file and line holding $directive.
sub cites_its_set_line {
    my ($what, $directive) = @_;
    my $out = Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/nginx-t.out") // '';
    my ($file, $line) = $out =~ /\Q$what\E.* in (\S+):(\d+)$/m;
    ok(defined $line, "the error cites a line") or return diag($out);
    my @lines = split /\n/, Test::StaleCache::slurp($file) // '';
    like($lines[$line - 1] // '', qr/\Q$directive\E/, "line $line is the set directive");
}

run_tests();

__DATA__

=== TEST 1: Redis stopped, local zone off: 20 concurrent + 5 sequential requests served by the backend, one error line
--- http_config eval: $::BASE_HTTP . "    stale_cache_local_zone off;\n"
--- config eval: base_config()
--- pre
stop_redis();
--- request
GET /api/x
--- concurrency: 20
--- timeout: 3
--- response_body_like: ^backend GET /api/x hit \d+$
--- response_headers
X-Stale-Cache: ERROR
--- check
my @r = responses();
my ($slowest) = sort { $b <=> $a } map { $_->{end} } @r;
cmp_ok($slowest, '<', 1, sprintf('all 20 concurrent answered within 1 s (slowest %.3f s)', $slowest));
for my $i (1 .. 5) {
    my $x = http_get('/api/x');
    is($x->{status}, 200, "sequential $i: 200");
    is($x->{headers}{'x-stale-cache'}, 'ERROR', "sequential $i: ERROR");
    like($x->{body}, qr/^backend GET \/api\/x hit \d+$/, "sequential $i: backend body");
    cmp_ok($x->{elapsed}, '<', 1, sprintf("sequential $i: within 1 s (%.3f s)", $x->{elapsed}));
}
is(backend_hits('/api/x'), 25, 'all 25 went to the backend');
is(error_log_count(qr/stale_cache: TTL lookup failed for "\/api\/x"; serving without the stale cache layer/), 1,
   'one "TTL lookup failed" line for 25 requests (rate-limited)');
--- error_log
stale_cache: TTL lookup failed for "/api/x"
--- no_error_log
[crit]
[alert]



=== TEST 2: Redis answers -ERR to the TTL command: backend 200, ERROR, the redis error logged once
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(ttl_cmd => 'stale_cache_redis_command TTL $key extra;')
--- request eval
["GET /api/x", "GET /api/x", "GET /api/x", "GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: ERROR
--- backend_hits: 1
--- check
is(error_log_count(qr/stale_cache: the TTL lookup got a redis error: "ERR wrong number of arguments for 'ttl' command"/), 1,
   'the redis error text is logged once');
is(error_log_count(qr/stale_cache: TTL lookup answered no integer for "\/api\/x"/), 1,
   'one fail-open line for the 5 requests (rate-limited)');
--- no_error_log
[crit]
[alert]



=== TEST 3: TTL location answers garbage: backend 200, ERROR, one line
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(set => { ttl => '/garbage' }, after => <<'_E_')
    location = /garbage { internal; echo hello; }
_E_
--- request eval
["GET /api/x", "GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: ERROR
--- backend_hits: 1
--- check
is(error_log_count(qr/stale_cache: TTL lookup answered no integer for "\/api\/x"; serving without the stale cache layer/), 1,
   'one "answered no integer" line');
--- no_error_log
[crit]
[alert]



=== TEST 4: Redis never answers (blackhole), local zone off: bounded by the redis timeouts, backend 200, ERROR
--- http_config eval: $::BASE_HTTP . "    stale_cache_local_zone off;\n"
--- config eval: base_config()
--- pre
fake_redis_blackhole();
--- request eval
["GET /api/x", "GET /api/x", "GET /api/x"]
--- timeout: 5
--- response_body_like: ^backend GET /api/x hit \d+$
--- response_headers
X-Stale-Cache: ERROR
--- backend_hits: 3
--- check
my @r = responses();
for my $i (0 .. $#r) {
    cmp_ok($r[$i]{elapsed}, '<', 1.5, sprintf("request $i: answered within 1.5 s (%.3f s)", $r[$i]{elapsed}));
}
is(error_log_count(qr/stale_cache: TTL lookup failed for "\/api\/x"/), 1, 'one "TTL lookup failed" line');
--- error_log
upstream timed out
--- no_error_log
[crit]
[alert]



=== TEST 5: POST with the default $cache_methods (GET): BYPASS, backend hit, nothing looked up or stored
--- http_config eval: $::BASE_HTTP
--- config eval: base_config()
--- redis_setup
CONFIG RESETSTAT
--- request
POST /api/x
hello
--- response_body
backend POST /api/x hit 1
--- response_headers
X-Stale-Cache: BYPASS
--- backend_hits: 1
--- redis_check eval
[[["DBSIZE"], 0], [["EXISTS", redis_key('/api/x')], 0]]
--- check
is(redis_calls('ttl'), 0, 'no TTL lookup in Redis');
my ($l) = backend_log('/api/x');
is($l->{body}, 'hello', 'request body reached the backend');
is($l->{headers}{'x-status-seen'}, 'BYPASS', 'backend saw BYPASS');
--- no_error_log
[error]



=== TEST 6: $cache_stale "abc" (from a variable): untouched request, ERROR, one line naming the variable and value
# A literal `set $cache_stale abc;` is rejected by nginx -t (TEST 7); through
# another variable the value is only known per request.
--- http_config eval: $::BASE_HTTP
--- config eval
my $c = base_config(set => { stale => '$stale_value' });
$c =~ s/(\n\s+set \$cache_stale)/\n        set \$stale_value abc;$1/; $c
--- redis_setup
CONFIG RESETSTAT
--- request eval
["GET /api/x", "GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers eval
["X-Stale-Cache: ERROR\nX-Cache: MISS", "X-Stale-Cache: ERROR\nX-Cache: HIT", "X-Stale-Cache: ERROR\nX-Cache: HIT"]
--- backend_hits: 1
--- check
is(redis_calls('ttl'), 0, 'no TTL lookup');
is(error_log_count(qr/\[error\].*stale_cache: \$cache_stale: "abc" is not a number of seconds; the request passes through untouched/), 1,
   'one line naming $cache_stale and "abc"');
--- no_error_log
[crit]
[alert]



=== TEST 7: literal set $cache_stale abc: refused by nginx -t, naming the variable and value
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(set => { stale => 'abc' })
--- must_die
--- error_log
stale_cache: $cache_stale: "abc" is not a number of seconds



=== TEST 8: only $cache_key set: ERROR, the line names the missing $cache_lock
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(vars => <<'_E_')
        set $cache_key "$http_user_agent|$uri";
_E_
--- redis_setup
CONFIG RESETSTAT
--- request eval
["GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: ERROR
--- backend_hits: 1
--- check
is(redis_calls('ttl'), 0, 'no TTL lookup');
is(error_log_count(qr/stale_cache: \$cache_lock: not set, but \$cache_key is; the request passes through untouched/), 1,
   'one line naming the missing variable');
--- no_error_log
[crit]
[alert]



=== TEST 9: $cache_key and $cache_lock set, $cache_ttl missing: the line names $cache_ttl
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(vars => <<'_E_')
        set $cache_lock srcache_locks;
        set $cache_key "$http_user_agent|$uri";
_E_
--- request
GET /api/x
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: ERROR
--- error_log eval
qr/stale_cache: \$cache_ttl: not set, but \$cache_lock is; the request passes through untouched/



=== TEST 10: $cache_lock names an unknown zone (from a variable): ERROR and a line
--- http_config eval: $::BASE_HTTP
--- config eval
my $c = base_config(); $c =~ s/set \$cache_lock srcache_locks;/set \$zone_name nozone; set \$cache_lock \$zone_name;/; $c
--- redis_setup
CONFIG RESETSTAT
--- request eval
["GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: ERROR
--- backend_hits: 1
--- check
is(redis_calls('ttl'), 0, 'no TTL lookup');
is(error_log_count(qr/stale_cache: \$cache_lock names "nozone" but no "stale_cache_zone nozone SIZE;" is configured/), 1,
   'one line naming the zone');
--- no_error_log
[crit]
[alert]



=== TEST 11: literal $cache_lock naming an unknown zone: refused by nginx -t
--- http_config eval: $::BASE_HTTP
--- config eval
my $c = base_config(); $c =~ s/set \$cache_lock srcache_locks;/set \$cache_lock nozone;/; $c
--- must_die
--- error_log
stale_cache: $cache_lock: "nozone" names no zone



=== TEST 11b: nginx -t errors about literal $cache_* values cite the set line, not the end of the http block; a zone-name typo suggests the zone
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(set => { stale => 'abc' })
--- must_die
--- error_log
stale_cache: $cache_stale: "abc" is not a number of seconds
--- check
::cites_its_set_line('$cache_stale: "abc"', 'set $cache_stale abc;');



=== TEST 11c: a $cache_lock one letter off a zone's name: "did you mean", at the set line
--- http_config eval: $::BASE_HTTP
--- config eval
my $c = base_config(); $c =~ s/set \$cache_lock srcache_locks;/set \$cache_lock srcache_lock;/ or die; $c
--- must_die
--- error_log
stale_cache: $cache_lock: "srcache_lock" names no zone; did you mean srcache_locks?
--- check
::cites_its_set_line('$cache_lock: "srcache_lock"', 'set $cache_lock srcache_lock;');
unlike(Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/nginx-t.out"), qr/add "stale_cache_zone/,
       'no second zone suggested');



=== TEST 12: all of $cache_lock/ttl/key unset: BYPASS and the "are unset" line
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(vars => "        set \$cache_key_unused 1;\n")
--- request
GET /api/x
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: BYPASS
--- error_log
"stale_cache on" but $cache_lock, $cache_ttl and $cache_key are unset



=== TEST 13: subrequests are never touched (echo_location into the stale_cache location)
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(after => <<'_E_')
    location = /agg { echo_location /api/x; echo_location /api/x; }
_E_
--- redis_setup
CONFIG RESETSTAT
--- request
GET /agg
--- response_body
backend GET /api/x hit 1
backend GET /api/x hit 2
--- backend_hits: 2
--- check
is(redis_calls('ttl'), 0, 'no TTL lookup for the subrequests');
for my $l (backend_log('/api/x')) {
    ok(!exists $l->{headers}{'x-status-seen'}, 'no $stale_cache_status in the subrequest')
        or diag($l->{headers}{'x-status-seen'});
}
--- no_error_log eval
[qr/stale_cache: (?!zone "srcache_locks": \d+ slots)/, "[error]"]

=== TEST 14: Redis down with error_page set, local zone off: the lookup's error never reaches the client
A failing TTL subrequest (502) would be redirected by error_page; its output must stay a
capture, not be written in front of the client's response.
--- log_level: info
--- http_config eval: $::BASE_HTTP . "    stale_cache_local_zone off;\n"
--- config eval
"    error_page 500 502 503 504 /50x.html;\n    location = /50x.html { echo 'ERROR PAGE'; }\n" . base_config()
--- pre
stop_redis();
--- request eval
["GET /api/ep", "GET /api/ep"]
--- error_code eval
[200, 200]
--- response_body eval
["backend GET /api/ep hit 1\n", "backend GET /api/ep hit 2\n"]
--- response_headers
X-Stale-Cache: ERROR

=== TEST 15: a TTL location whose server speaks garbage mid-reply: fail open, connection kept
The TTL location points at the HTTP backend: the "reply" starts with "HTTP/1.1", not RESP.
The local zone is off: with it, the key would be filled and reused on this node (t/048).
--- log_level: info
--- http_config eval: $::BASE_HTTP . "    stale_cache_local_zone off;\n"
--- config eval
base_config(set => { ttl => '/garbagettl' }, after => <<'_E_')
    location = /garbagettl { internal; stale_cache_redis_pass 127.0.0.1:$TEST_NGINX_BACKEND_PORT;
        stale_cache_redis_command TTL $arg_key; }
_E_
--- keepalive_requests eval
["GET /api/g", "GET /api/g"]
--- check
my @r = responses();
# run_jobs stops at a closed connection: a request after it gets an error, not a response
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 2, 'both requests answered 200 on one connection');
is($_->{status}, 200, 'answered 200') for @r;
is($_->{headers}{'x-stale-cache'}, 'ERROR', 'failed open') for @r;
like(error_log_text(), qr/sent an invalid reply/, 'the garbage is logged');



=== TEST 16: a zone defined twice fails nginx -t, naming it
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_zone srcache_locks 2m;
--- config
    location /api { return 200; }
--- must_die
--- error_log
"stale_cache_zone": zone "srcache_locks" is already defined



=== TEST 17: a hot zone below 1m fails nginx -t
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 512k;
--- config
    location /api { return 200; }
--- must_die
--- error_log
"stale_cache_hot_zone": invalid size "512k" (a size like 64m; at least 1048576 bytes)



=== TEST 18: a hot zone named like a lock zone fails nginx -t
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone srcache_locks 64m;
--- config
    location /api { return 200; }
--- must_die
--- error_log
"stale_cache_hot_zone": names a stale_cache_zone; give the hot zone its own name
