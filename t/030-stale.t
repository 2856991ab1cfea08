# The stale path of "stale_cache on": a stale entry is served at once, one background
# refresh per key replays the request to the backend and srcache_store stores the new copy.
# Every block uses the drop-in base configuration (see api_config) with
# "stale_cache_memo off;", fills an entry through nginx in --- pre, then moves it into
# the stale window with EXPIRE key 50 (TTL 50 < $cache_stale 100).
use lib 't/lib';
use Test::StaleCache;
use Time::HiRes ();
use Digest::MD5 qw(md5_hex);

# A second port for a reuseport listener (from the harness's port picker, so it cannot
# collide with the ports it uses).
my $port2;
sub port2 { $port2 ||= Test::StaleCache::pick_port() }

# The drop-in configuration with the memo off, so blocks can age entries at once.
sub api_config { drop_in_config('stale_cache_memo off; ' . (shift // '')) }

run_tests();

__DATA__

=== TEST 1: 50 concurrent stale hits: stale body at once, exactly one refresh, then the new copy
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config()
--- pre
$main::key = fill_and_stale('/api/s', undef, delay => 1);
--- request
GET /api/s
--- concurrency: 50
--- response_body
backend GET /api/s hit 1
--- response_headers
X-Stale-Cache: STALE
X-Cache: HIT
--- wait_for: refreshed('/api/s', $main::key)
--- check
my @r = responses();
is(scalar(grep { !$_->{error} && $_->{status} == 200 && $_->{body} eq "backend GET /api/s hit 1\n" } @r),
   50, 'all 50 answered 200 with the stale body');
my ($max) = sort { $b <=> $a } map { $_->{elapsed} } @r;
# a stale hit that waited for the refresh would take its 1 s
cmp_ok($max, '<', 0.6, "every stale hit answered in < 600 ms (slowest ${max}s)");
is(backend_hits('/api/s'), 2, 'backend hits: the fill + exactly one refresh');
my $r = http_get('/api/s');
is($r->{body}, "backend GET /api/s hit 2\n", 'next request gets the refreshed copy');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'next request is FRESH');
is($r->{headers}{'x-cache'}, 'HIT', 'next request is a cache HIT');
my $ttl = redis('TTL', $main::key);
ok($ttl >= 100 && $ttl <= 105, "TTL back to ~105 after the refresh (got $ttl)");
like(redis('GET', $main::key), qr/backend GET \/api\/s hit 2/, 'Redis holds the new copy');
is(backend_hits('/api/s'), 2, 'no further backend hit');
my @lines = grep { /stale_cache: refresh of / } split /\n/, error_log_text();
is(scalar @lines, 1, 'one refresh logged') or diag(join "\n", @lines);
--- error_log eval
[qr{\[info\].*stale_cache: refresh of "/api/s" via 127\.0\.0\.1:\d+ 200 in \d+ ms}]



=== TEST 2: the client's next request on the same keep-alive connection is not delayed by the refresh
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config() . '    location = /plain { return 200 "plain\n"; }'
--- pre
$main::key = fill_and_stale('/api/k', undef, delay => 1.5);
--- keepalive_requests eval
["GET /api/k", "GET /api/k", "GET /plain"]
--- response_body eval
["backend GET /api/k hit 1\n", "backend GET /api/k hit 1\n", "plain\n"]
--- response_headers eval
["X-Stale-Cache: STALE", "X-Stale-Cache: STALE", "!X-Stale-Cache"]
--- check
my @r = responses();
# run_jobs stops at a closed connection: a request after it gets an error, not a response
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 3, 'all 3 answered 200 on the one connection');
# a request held up by the refresh would take its 1.5 s
# (a request that got no response has no elapsed: it counts as infinitely slow)
cmp_ok($r[$_]{elapsed} // 9**9**9, '<', 0.5,
       "request $_ on the keep-alive connection took < 500 ms (" . ($r[$_]{elapsed} // 'no response') . "s)")
    for 0 .. 2;
cmp_ok($r[2]{end} // 9**9**9, '<', 1, "all three done long before the 1.5 s refresh ends (" . ($r[2]{end} // 'no response') . "s)");
wait_backend_hits('/api/k', 2);
is(backend_hits('/api/k'), 2, 'the refresh reached the backend meanwhile');
wait_until(sub { refreshed('/api/k', $main::key) }, 5, 'the refresh of /api/k to be stored');
my $r = http_get('/api/k');
is($r->{body}, "backend GET /api/k hit 2\n", 'refreshed copy afterwards');
ok(!exists $r->{headers}{'x-stale-cache-refreshed'},
   'the copy a refresh stored does not show the internal confirmation header to clients');
is(backend_hits('/api/k'), 2, 'exactly one refresh');



=== TEST 3: the refresh replays method, URI with args, Host, client headers, and adds X-Skip-Fetch: TRUE
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config('proxy_set_header Host $host;')
--- pre
$main::h = { 'Host' => 'stale.example', 'X-Custom' => 'abc', 'User-Agent' => 'tester/1.0',
             'Accept-Language' => 'de' };
$main::key = fill_and_stale('/api/r?a=1&b=x%20y', $main::h);
--- request
GET /api/r?a=1&b=x%20y
--- more_headers
Host: stale.example
X-Custom: abc
User-Agent: tester/1.0
Accept-Language: de
--- response_body
backend GET /api/r?a=1&b=x%20y hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: refreshed('/api/r?a=1&b=x%20y', $main::key)
--- check
my @log = backend_log('/api/r');
is(scalar @log, 2, 'fill + refresh reached the backend');
my ($fill, $refresh) = @log;
ok(!defined $fill->{headers}{'x-skip-fetch'}, 'the fill carries no X-Skip-Fetch');
is($refresh->{method}, 'GET', 'refresh: same method');
is($refresh->{path}, '/api/r?a=1&b=x%20y', 'refresh: same URI with query args');
is($refresh->{headers}{host}, 'stale.example', 'refresh: same Host');
is($refresh->{headers}{'x-custom'}, 'abc', 'refresh: custom header replayed');
is($refresh->{headers}{'user-agent'}, 'tester/1.0', 'refresh: User-Agent replayed');
is($refresh->{headers}{'accept-language'}, 'de', 'refresh: Accept-Language replayed');
is($refresh->{headers}{'x-skip-fetch'}, 'TRUE', 'refresh: X-Skip-Fetch: TRUE');
my $ttl = redis('TTL', $main::key);
ok($ttl >= 100 && $ttl <= 105, "the refresh stored under the same key (TTL $ttl)");
like(redis('GET', $main::key), qr{backend GET /api/r\?a=1&b=x%20y hit 2}, 'new copy stored');
--- error_log eval
[qr{stale_cache: refresh of "/api/r\?a=1&b=x%20y" via 127\.0\.0\.1:\d+ 200}]



=== TEST 4: $cache_persist without $cache_expire (lua-resty-cache's configuration) + slow refresh: no PERSIST, the key keeps its expiry during the refresh, ~105 once the refresh stored
Lua-resty-cache PERSISTed the key here, which pinned the copy forever when the refresh failed
(ORIGINAL.md defect 7); a copy with 50 s left outlives the refresh anyway.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config()
--- pre
$main::key = fill_and_stale('/api/p', undef, delay => 1);
$main::persist_before = redis_calls('persist');
--- request
GET /api/p
--- response_body
backend GET /api/p hit 1
--- response_headers
X-Stale-Cache: STALE
--- check
my $ttl = redis('TTL', $main::key);
ok($ttl >= 45 && $ttl <= 50, "right after the stale hit the key keeps its expiry (TTL $ttl, -1 = PERSISTed)");
wait_backend_hits('/api/p', 2);    # the refresh is running (its backend answers 1 s later)
like(redis('GET', $main::key), qr{hit 1}, 'stale copy still there during the refresh');
cmp_ok(Time::HiRes::time(), '<', (backend_log('/api/p'))[1]{time} + 1, 'checked before the refresh answered');
wait_until(sub { refreshed('/api/p', $main::key) }, 5, 'the refresh of /api/p to be stored');
$ttl = redis('TTL', $main::key);
ok($ttl >= 100 && $ttl <= 105, "after the refresh stored: TTL ~105 (got $ttl)");
like(redis('GET', $main::key), qr{hit 2}, 'new copy stored');
is(backend_hits('/api/p'), 2, 'fill + one refresh');
is(redis_calls('persist') - $main::persist_before, 0, 'no PERSIST sent');



=== TEST 5: set $cache_persist off: no PERSIST, the TTL keeps counting down during the refresh
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config('set $cache_persist off;')
--- pre
$main::key = fill_and_stale('/api/np', undef, delay => 1);
$main::persist_before = redis_calls('persist');
--- request
GET /api/np
--- response_body
backend GET /api/np hit 1
--- response_headers
X-Stale-Cache: STALE
--- check
my $ttl = redis('TTL', $main::key);
ok($ttl >= 45 && $ttl <= 50, "right after the stale hit the TTL still counts down (got $ttl)");
wait_backend_hits('/api/np', 2);    # the refresh is running (its backend answers 1 s later)
$ttl = redis('TTL', $main::key);
ok($ttl >= 44 && $ttl <= 50, "during the refresh: not persisted (got $ttl)");
is(redis_calls('persist') - $main::persist_before, 0, 'no PERSIST sent');
cmp_ok(Time::HiRes::time(), '<', (backend_log('/api/np'))[1]{time} + 1, 'checked before the refresh answered');
wait_until(sub { refreshed('/api/np', $main::key) }, 5, 'the refresh of /api/np to be stored');
$ttl = redis('TTL', $main::key);
ok($ttl >= 100 && $ttl <= 105, "after the refresh: TTL ~105 (got $ttl)");
is(backend_hits('/api/np'), 2, 'fill + one refresh');



=== TEST 6: ttl == -1 (no expiry): served STALE, refreshed, never PERSISTed
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config()
--- pre
$main::key = fill_and_stale('/api/m');
is(redis('PERSIST', $main::key), 1, 'key PERSISTed beforehand');
is(redis('TTL', $main::key), -1, 'TTL -1');
$main::persist_before = redis_calls('persist');
--- request
GET /api/m
--- response_body
backend GET /api/m hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: refreshed('/api/m', $main::key)
--- check
is(backend_hits('/api/m'), 2, 'refreshed: fill + one refresh');
my $ttl = redis('TTL', $main::key);
ok($ttl >= 100 && $ttl <= 105, "TTL back to ~105 after the refresh (got $ttl)");
is(redis_calls('persist') - $main::persist_before, 0, 'no PERSIST sent for a key without expiry');
my $r = http_get('/api/m');
is($r->{body}, "backend GET /api/m hit 2\n", 'refreshed copy served');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'FRESH afterwards');



=== TEST 7: the refresh request has status REFRESH and bypasses srcache_fetch (goes to the backend)
--- http_config
    stale_cache_zone srcache_locks 1m;
    log_format sc '$request_uri status=$stale_cache_status fetch=$srcache_fetch_status store=$srcache_store_status skip=$http_x_skip_fetch';
--- config eval
api_config('access_log logs/sc.log sc;')
--- pre
$main::key = fill_and_stale('/api/rs');
--- request
GET /api/rs
--- response_body
backend GET /api/rs hit 1
--- response_headers
X-Stale-Cache: STALE
X-Cache: HIT
--- wait_for
# the refresh's access log line is written when it has ended
refreshed('/api/rs', $main::key)
    && (Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/sc.log") // '') =~ /status=REFRESH/
--- check
my @log = backend_log('/api/rs');
is(scalar @log, 2, 'fill + refresh reached the backend');
is($log[0]{headers}{'x-status-seen'}, 'MISS', 'the fill had status MISS');
is($log[1]{headers}{'x-status-seen'}, 'REFRESH', 'the refresh had status REFRESH');
is($log[1]{headers}{'x-skip-fetch'}, 'TRUE', 'the refresh carried X-Skip-Fetch: TRUE');
open my $fh, '<', "$TEST_NGINX_SERVROOT/logs/sc.log" or die "sc.log: $!";
my @lines = <$fh>;
my @refresh = grep { /status=REFRESH/ } @lines;
is(scalar @refresh, 1, 'one REFRESH request in the access log') or diag(@lines);
like($refresh[0] // '', qr{^/api/rs status=REFRESH fetch=BYPASS store=STORE skip=TRUE$},
     'the refresh skipped srcache_fetch and stored');
like(redis('GET', $main::key), qr{hit 2}, 'Redis holds the refreshed copy');



=== TEST 8: two workers, 50 concurrent stale hits: exactly one refresh across workers
The /api server listens with reuseport on a second port, so the kernel spreads the
connections (the front server proxies each request on a new connection) over both workers.
--- workers: 2
--- http_config eval
"    stale_cache_zone srcache_locks 1m;\n"
. "    server {\n        listen 127.0.0.1:" . port2() . " reuseport;\n        server_name localhost;\n"
. api_config('add_header X-Pid $pid;') . "    }\n"
--- config eval
"    location /api { proxy_pass http://127.0.0.1:" . port2() . "; }\n"
--- pre
$main::key = fill_and_stale('/api/w', undef, delay => 1);
--- request
GET /api/w
--- concurrency: 50
--- response_body
backend GET /api/w hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: refreshed('/api/w', $main::key)
--- check
my ($max) = sort { $b <=> $a } map { $_->{elapsed} } responses();
# a stale hit that waited for the refresh would take its 1 s
cmp_ok($max, '<', 0.6, "every stale hit answered in < 600 ms (slowest ${max}s)");
my %pids;
$pids{ $_->{headers}{'x-pid'} // '?' }++ for responses();
is(scalar keys %pids, 2, 'both workers served stale hits') or diag(explain(\%pids));
is(backend_hits('/api/w'), 2, 'the fill + exactly one refresh across both workers');
my @lines = grep { /stale_cache: refresh of / } split /\n/, error_log_text();
is(scalar @lines, 1, 'one refresh logged') or diag(join "\n", @lines);
my $r = http_get('/api/w');
is($r->{body}, "backend GET /api/w hit 2\n", 'the refreshed copy is served');
--- error_log eval
[qr{stale_cache: refresh of "/api/w" via 127\.0\.0\.1:\d+ 200}]



=== TEST 9: a failing refresh (backend 500): stale copy still served, warn logged, nothing stored
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config()
--- pre
$main::key = fill_and_stale('/api/f', undef, status => 500);
--- request
GET /api/f
--- response_body
backend GET /api/f hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: error_log_text() =~ m{stale_cache: refresh of "/api/f" via \S+ status 500}
--- check
is(backend_hits('/api/f'), 2, 'the refresh reached the backend');
like(redis('GET', $main::key), qr{backend GET /api/f hit 1}, 'the stale copy is untouched');
unlike(redis('GET', $main::key), qr{hit 2}, 'the 500 was not stored');
my $ttl = redis('TTL', $main::key);
ok($ttl == -1 || ($ttl >= 0 && $ttl <= 50), "TTL not renewed (got $ttl)");
my $failed_at = Time::HiRes::time();
my $r = http_get('/api/f');
is($r->{status}, 200, 'next request: 200');
is($r->{body}, "backend GET /api/f hit 1\n", 'next request: still the stale copy');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'next request: STALE');
is(backend_hits('/api/f'), 2, 'inside the 1 s backoff after the failure: no new refresh');
sleep_until($failed_at + 1.2);    # the first backoff is 1 s
is(http_get('/api/f')->{headers}{'x-stale-cache'}, 'STALE', 'after the backoff: STALE');
wait_backend_hits('/api/f', 3);
is(backend_hits('/api/f'), 3, 'and a new refresh went to the backend');
--- error_log eval
[qr{\[warn\].*stale_cache: refresh of "/api/f" via 127\.0\.0\.1:\d+ status 500 in \d+ ms}]



=== TEST 10: a failing refresh of a PERSISTed entry does not pin the stale copy forever (ORIGINAL.md defect 7)
Deleted page: the refresh gets 404, which srcache does not store. With $cache_expire set the
module never removes the key's expiry (a copy with 50 s left outlives the 30 s refresh lock),
so the stale copy still expires within its stale window.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config('set $cache_expire /redisexpire;')
--- pre
redis('CONFIG', 'RESETSTAT');
$main::key = fill_and_stale('/api/gone', undef, status => 404);
--- request
GET /api/gone
--- response_body
backend GET /api/gone hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: error_log_text() =~ m{stale_cache: refresh of "/api/gone" via \S+ status 404}
--- check
is(backend_hits('/api/gone'), 2, 'the refresh reached the backend (404)');
like(redis('GET', $main::key), qr{hit 1}, 'the 404 was not stored');
my $ttl = redis('TTL', $main::key);
ok($ttl > 0 && $ttl <= 50, "after the failed refresh the entry still expires within its stale window (TTL $ttl, -1 = pinned forever)");
is(redis_calls('persist'), 0, 'no PERSIST with $cache_expire');
--- error_log eval
[qr{\[warn\].*stale_cache: refresh of "/api/gone" via 127\.0\.0\.1:\d+ status 404}]



=== TEST 11: without $cache_expire (lua-resty-cache's configuration, two lines changed) a failing refresh of a copy about to expire does not pin it forever (ORIGINAL.md defect 7)
The copy has 20 s left, less than the 30 s refresh lock: lua-resty-cache PERSISTed it, and the
refresh's 404 (not stored) left it in Redis without expiry.
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
api_config()
--- pre
redis('CONFIG', 'RESETSTAT');
$main::key = fill_and_stale('/api/gone2', undef, status => 404);
redis('EXPIRE', $main::key, 20);
--- request
GET /api/gone2
--- response_body
backend GET /api/gone2 hit 1
--- response_headers
X-Stale-Cache: STALE
--- wait_for: error_log_text() =~ m{stale_cache: refresh of "/api/gone2" via \S+ status 404}
--- check
is(backend_hits('/api/gone2'), 2, 'the refresh reached the backend (404)');
like(redis('GET', $main::key), qr{hit 1}, 'the 404 was not stored');
my $ttl = redis('TTL', $main::key);
ok($ttl > 0 && $ttl <= 20, "after the failed refresh the copy still expires (TTL $ttl, -1 = pinned forever)");
is(redis_calls('persist'), 0, 'no PERSIST without $cache_expire');
--- error_log eval
[qr{\[warn\].*stale_cache: refresh of "/api/gone2" via 127\.0\.0\.1:\d+ status 404}]
