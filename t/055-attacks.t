# Issue 13, tried from the client side: the skip header cannot be spelled around, a stalled
# body holds no lock, refreshes are bounded per worker, and refreshes carry no one's
# credentials. One block (or more) per row of the issue's table; each failed before.
use lib 't/lib';
use Test::StaleCache;
use IO::Socket::INET;

our $HTTP = "    stale_cache_zone srcache_locks 1m;\n";

# The fill request, then one request per spelling of the skip header (and of the refresh
# header), all on a fresh entry: each must be a cache HIT that stores nothing.
our @SPELLINGS = ('X_Skip_Fetch: TRUE', 'x_skip_fetch: TRUE', 'X_Skip-Fetch: TRUE',
                  'X-SKIP-FETCH: TRUE', "X_Skip_Fetch: TRUE\nX_Stale_Cache_Refresh: guess");
our @REQS = ('GET /api/sp') x (1 + @SPELLINGS);
our @HEADERS = ('', @SPELLINGS);
our @EXPECT = ("X-Stale-Cache: MISS\nX-Cache: MISS\nX-Store: STORE",
               ("X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS") x @SPELLINGS);

sub check_not_bypassed {
    is(backend_hits('/api/sp'), 1, 'one backend hit: no spelling bypassed the cache');
    like(redis('GET', redis_key('/api/sp')) // '', qr/hit 1\n\z/, 'the first copy is kept');
    ok(!grep({ grep { $_->[1] eq 'guess' } @{ $_->{header_list} } } backend_log()),
       'the guessed refresh header did not reach the backend');
}

# A raw connection that sends a request head announcing a body it never sends.
sub stall_body {
    my ($path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$TEST_NGINX_SERVER_PORT")
        or die "connect: $!";
    print $s "GET $path HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n";
    return $s;
}

# Keep-alive requests on one connection, as the harness sends them concurrently.
sub ka_job {
    my ($paths, $headers) = @_;
    return { port => $TEST_NGINX_SERVER_PORT,
             reqs => [map { Test::StaleCache::build_request("GET $_", $headers, 1) } @$paths] };
}

run_tests();

__DATA__

=== TEST 1: skip header spellings, underscores_in_headers on: every spelling is hidden
--- log_level: info
--- http_config eval: $::HTTP
--- config eval: "underscores_in_headers on;\n" . drop_in_config()
--- request eval: [@::REQS]
--- more_headers eval: [@::HEADERS]
--- response_body
backend GET /api/sp hit 1
--- response_headers eval: [@::EXPECT]
--- check
check_not_bypassed();



=== TEST 2: skip header spellings, ignore_invalid_headers off: every spelling is hidden
--- log_level: info
--- http_config eval: $::HTTP
--- config eval: "ignore_invalid_headers off;\n" . drop_in_config()
--- request eval: [@::REQS]
--- more_headers eval: [@::HEADERS]
--- response_body
backend GET /api/sp hit 1
--- response_headers eval: [@::EXPECT]
--- check
check_not_bypassed();



=== TEST 3: skip header spellings, default settings (nginx drops the _ spellings itself)
--- log_level: info
--- http_config eval: $::HTTP
--- config eval: drop_in_config()
--- request eval: [@::REQS]
--- more_headers eval: [@::HEADERS]
--- response_body
backend GET /api/sp hit 1
--- response_headers eval: [@::EXPECT]
--- check
check_not_bypassed();



=== TEST 4: srcache_fetch_skip form, underscores_in_headers on: a custom skip header spelled with _
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_skip_header X-Refresh-Me;
--- config eval
"underscores_in_headers on;\n" . drop_in_config('set $cache_skip_fetch X-Refresh-Me;')
    =~ s/if \(\$http_x_skip_fetch != TRUE\)\{ (srcache_fetch [^;]+;)\}/$1 srcache_fetch_skip \$stale_cache_skip_fetch;/r
--- request eval
["GET /api/sp", "GET /api/sp", "GET /api/sp"]
--- more_headers eval
["", "X_Refresh_Me: TRUE", "x-refresh_me: TRUE"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS", "X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS"]
--- backend_hits: 1



=== TEST 5: a stale hit whose body never arrives takes no refresh lock: the next stale hit refreshes
--- http_config eval: $::HTTP . "    log_format st '\$request_uri \$status [\$stale_cache_status]';\n"
--- config eval: "client_body_timeout 4s;\naccess_log logs/st.log st;\n" . drop_in_config()
--- check
my $key = fill_and_stale('/api/body');
my $t0 = error_log_text() =~ tr/\n//;
my $s = stall_body('/api/body');
wait_log(qr/http header: "Content-Length: 10"/);    # the stalled request's head is in
my $r = http_get('/api/body');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'the next client gets the stale copy');
wait_backend_hits('/api/body', 2, 2);    # its refresh is not held up by the stalled one
wait_until(sub { redis('TTL', $key) > 100 }, 5, 'the refresh to be stored');
like(http_get('/api/body')->{body}, qr/hit 2/, 'then the refreshed copy');
# client_body_timeout ends the stalled request with a 408 it reports as nothing else
my $line = wait_until(sub { (Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/st.log") // '') =~ /^(\/api\/body 408 .*)$/m && $1 }, 8, 'the stalled request to time out');
is($line, '/api/body 408 [-]', 'the stalled request: 408, no cache status (no lock, not served stale)');
close $s;
is(backend_hits('/api/body'), 2, 'fill + one refresh, nothing for the stalled request');



=== TEST 6: a stalled body on a missing key takes no fill lock: 20 concurrent misses, one fill
--- http_config eval: $::HTTP
--- config eval: drop_in_config()
--- pre
backend_config('/api/gone', delay => 0.3);
$::STALLED = stall_body('/api/gone');
wait_log(qr/http header: "Content-Length: 10"/);
--- request
GET /api/gone
--- concurrency: 20
--- response_body
backend GET /api/gone hit 1
--- backend_hits: 1
--- check
close $::STALLED;



=== TEST 7: refreshes in flight are capped per worker: 40 stale keys over 4 connections, 4 refreshes, connections <= clients + cap
--- log_level: info
--- http_config eval: $::HTTP
--- config eval: "location = /status { stub_status; }\n" . drop_in_config('stale_cache_refresh_limit 4;')
--- check
my $stored = do { http_get('/api/k0'); redis('GET', redis_key('/api/k0')) };
ok($stored, 'one entry stored');
redis('SET', redis_key("/api/k$_"), $stored, 'EX', 50) for 0 .. 40;    # 41 stale entries
# every refresh replays this header: the backend holds each one for 4 s
my @jobs = map { my $c = $_; ka_job([map { "/api/k" . ($c * 10 + $_) } 0 .. 9], { 'X-Backend-Delay' => 4 }) } 0 .. 3;
push @jobs, ka_job([('/status') x 40]);    # a fifth client watches the connection count
my @r = Test::StaleCache::run_jobs(\@jobs, 10);
my @api = grep { defined $_->{headers}{'x-stale-cache'} } @r;
is(scalar(grep { $_->{headers}{'x-stale-cache'} eq 'STALE' } @api), 40, '40 stale hits served');
my @active = map { ($_->{body} // '') =~ /Active connections: (\d+)/ ? $1 : () } @r;
my ($max) = sort { $b <=> $a } @active;
# no reading at all (the watcher failed) must not pass as "no connections"
cmp_ok(@active == 40 ? $max : 9**9**9, '<=', 5 + 4,
       'active connections peaked at ' . ($max // 'none') . ' <= 5 clients + 4 refreshes ('
       . scalar(@active) . ' of 40 readings)');
wait_until(sub { backend_hits() >= 5 }, 5, 'the 4 refreshes to reach the backend');
is(backend_hits(), 5, 'the fill and 4 refreshes reached the backend, no more');
like(error_log_text(), qr/4 refreshes in flight in this worker \(stale_cache_refresh_limit 4\): stale hit of "[^"]*" served without a refresh/, 'the skipped refreshes are logged');
is(error_log_count(qr/refreshes in flight in this worker/), 1, 'once per interval');
# the slots come back when the refreshes end
wait_until(sub { error_log_count(qr/stale_cache: refresh of "\/api\/k\d+" via .* 200/) == 4 }, 8, 'the 4 refreshes to end');
is(http_get('/api/k40')->{headers}{'x-stale-cache'}, 'STALE', 'a later stale hit');
wait_backend_hits('/api/k40', 1, 5);



=== TEST 8: the default cap (32 per worker): 40 stale keys at once, 32 refreshes
--- log_level: info
--- http_config eval: $::HTTP
--- config eval: drop_in_config()
--- check
my $stored = do { http_get('/api/k0'); redis('GET', redis_key('/api/k0')) };
redis('SET', redis_key("/api/k$_"), $stored, 'EX', 50) for 0 .. 39;
my @jobs = map { my $c = $_; ka_job([map { "/api/k" . ($c * 10 + $_) } 0 .. 9], { 'X-Backend-Delay' => 4 }) } 0 .. 3;
my @r = Test::StaleCache::run_jobs(\@jobs, 10);
is(scalar(grep { ($_->{headers}{'x-stale-cache'} // '') eq 'STALE' } @r), 40, '40 stale hits served');
wait_until(sub { backend_hits() >= 33 }, 5, '32 refreshes to reach the backend');
is(backend_hits(), 33, 'the fill and 32 refreshes, no more');
like(error_log_text(), qr/32 refreshes in flight in this worker \(stale_cache_refresh_limit 32\)/, 'the skip is logged');



=== TEST 9: a refresh does not replay Cookie or Authorization by default
--- http_config eval: $::HTTP
--- config eval: drop_in_config()
--- check
fill_and_stale('/api/me');
my $r = http_get('/api/me?user=alice', { Cookie => 'session=alice', Authorization => 'Basic YWxpY2U6cHc=', 'X-Other' => 'kept' });
is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale hit of a logged-in user');
wait_backend_hits('/api/me', 2, 5);
my $refresh = (backend_log('/api/me'))[-1];
is($refresh->{headers}{'x-skip-fetch'}, 'TRUE', 'this is the refresh');
ok(!exists $refresh->{headers}{cookie}, 'no Cookie replayed');
ok(!exists $refresh->{headers}{authorization}, 'no Authorization replayed');
is($refresh->{headers}{'x-other'}, 'kept', 'other headers are replayed');



=== TEST 10: stale_cache_refresh_credentials on replays them (for keys that include them)
--- http_config eval: $::HTTP
--- config eval: drop_in_config('stale_cache_refresh_credentials on;')
--- check
fill_and_stale('/api/me');
http_get('/api/me', { Cookie => 'session=alice', Authorization => 'Basic YWxpY2U6cHc=' });
wait_backend_hits('/api/me', 2, 5);
my $refresh = (backend_log('/api/me'))[-1];
is($refresh->{headers}{cookie}, 'session=alice', 'Cookie replayed');
is($refresh->{headers}{authorization}, 'Basic YWxpY2U6cHc=', 'Authorization replayed');



=== TEST 11: a client cannot forge error-log lines through the URI of a failing lookup
--- log_level: warn
--- http_config eval: $::HTTP
--- config eval
base_config(set => { ttl => '/garbage' }, after => <<'_E_')
    location = /garbage { internal; echo hello; }
_E_
--- request
GET /api/x%0d%0a2026/12/06%2000:00:00%20[notice]%20forged%1b[31m
--- error_code: 200
--- response_headers
X-Stale-Cache: ERROR
--- check
# (At the debug level nginx itself logs the decoded URI raw: this block logs from warn up.)
my @lines = split /\n/, error_log_text();
is(scalar(grep { /^2026\/12\/06 00:00:00 \[notice\]/ } @lines), 0, 'no forged line starts a line of the log');
ok(!grep({ /\x1b/ } @lines), 'no raw escape byte in the log');
is(scalar(grep { /answered no integer for "\/api\/x\\x0d\\x0a2026\/12\/06 00:00:00 \[notice\] forged\\x1b\[31m"/ } @lines), 1,
   'the line shows the URI with its control bytes escaped');
--- no_error_log
[crit]
[alert]
