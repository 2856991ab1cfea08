# Collapsed forwarding of misses: one filler per key, waiters woken when the
# fill ends, lock timeouts, lock release on client abort, no double fill.
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);
use IO::Socket::INET;
use Time::HiRes ();

our $BASE_HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
_EOC_

# Response headers the blocks read besides base_config's: the waiter's wake delay, the worker.
our $HEADERS = ['add_header X-Wake-Delay $stale_cache_wake_delay;', 'add_header X-Worker $pid;'];

# An extra listener (from the harness's port range).
our $PORT2 = pick_port();

run_tests();

__DATA__

=== TEST 1: 100 concurrent misses, 300 ms backend: one fill, 99 collapsed, woken at once
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS)
--- request
GET /api/x
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 100
--- timeout: 10
--- response_body
backend GET /api/x hit 1
--- response_headers_like
X-Stale-Cache: ^(MISS|COLLAPSED)$
--- backend_hits: 1
--- redis_check eval
[[["EXISTS", redis_key('/api/x')], 1], [["TTL", redis_key('/api/x')], qr/^10[0-5]$/]]
--- check
my @r = responses();
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 100, 'all 100 answered 200');
my $n = statuses(@r);
is($n->{MISS}, 1, 'exactly one MISS');
is($n->{COLLAPSED}, 99, 'the other 99 COLLAPSED') or diag(explain $n);
my ($miss) = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'MISS' } @r;
my @waiters = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'COLLAPSED' } @r;
is(scalar(grep { ($_->{headers}{'x-cache'} // '') eq 'HIT' } @waiters), 99,
   'waiters were served from the stored copy (X-Cache: HIT)');
is($miss->{headers}{'x-cache'}, 'MISS', 'filler: X-Cache MISS');
is($miss->{headers}{'x-store'}, 'STORE', 'filler: X-Store STORE');
cmp_ok($miss->{end}, '>=', 0.29, 'filler waited for the backend');
my ($last) = sort { $b <=> $a } map { $_->{end} } @waiters;
my ($first) = sort { $a <=> $b } map { $_->{end} } @waiters;
cmp_ok($first, '>=', 0.29, 'no waiter answered before the fill');
# Waiters that slept through the 3 s lock timeout would be seconds late. How promptly they
# were woken is X-Wake-Delay's check below (the module's own clock): on the client's side 99
# responses through a loaded machine take tens of ms (59 ms seen).
cmp_ok($last - $miss->{end}, '<=', 0.25,
       sprintf('last waiter answered within 250 ms of the fill end (fill end %.3f, last %.3f)',
               $miss->{end}, $last));
my %bodies = map { $_->{body} => 1 } @r;
is(scalar keys %bodies, 1, 'one body for all');
my @delays = map { $_->{headers}{'x-wake-delay'} } @waiters;
is(scalar(grep { defined && /^\d+$/ && $_ <= 20 } @delays), 99,
   '$stale_cache_wake_delay: every waiter resumed within 20 ms of the store');
ok(!defined $miss->{headers}{'x-wake-delay'}, 'the filler has no wake delay');
my @log = backend_log('/api/x');
is($log[0]{headers}{'x-status-seen'}, 'MISS', 'backend saw the filler (MISS)');
--- no_error_log
[error]
[warn]



=== TEST 2: same with 2 workers: requests spread over both (reuseport listener), one fill
# The harness's listener is shared by the workers and the kernel may hand every
# connection to one of them; a reuseport listener spreads them over both.
--- workers: 2
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval
"    listen 127.0.0.1:$::PORT2 reuseport;\n" . base_config(in => $::HEADERS)
--- check
my @r = concurrent_get('/api/x', 100, { 'X-Backend-Delay' => '0.3' }, 10, $::PORT2);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 100, 'all 100 answered 200')
    or diag(explain [grep { $_->{error} } @r]);
is(scalar(grep { ($_->{body} // '') eq "backend GET /api/x hit 1\n" } @r), 100,
   'all 100 got the one backend body');
is(backend_hits('/api/x'), 1, 'one backend hit');
my $n = statuses(@r);
is($n->{MISS}, 1, 'exactly one MISS');
is($n->{COLLAPSED}, 99, 'the other 99 COLLAPSED') or diag(explain $n);
my (undef, @workers) = nginx_pids();
is(scalar @workers, 2, 'two workers');
my %by_worker;
$by_worker{ $_->{headers}{'x-worker'} // '?' }++ for @r;
is(scalar(grep { $by_worker{$_} } @workers), 2, 'both workers served requests')
    or diag(explain \%by_worker);
my ($miss) = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'MISS' } @r;
SKIP: {
    skip 'no MISS response', 3 unless $miss;
    my @other = grep { ($_->{headers}{'x-worker'} // '') ne $miss->{headers}{'x-worker'} } @r;
    cmp_ok(scalar @other, '>=', 10, scalar(@other) . ' requests were in the other worker than the filler');
    is(scalar(grep { $_->{headers}{'x-stale-cache'} eq 'COLLAPSED'
                     && $_->{headers}{'x-cache'} eq 'HIT' } @other), scalar @other,
       'other worker\'s requests collapsed and were served from the stored copy');
    my ($last) = sort { $b <=> $a } map { $_->{end} } @other;
    my ($first) = sort { $a <=> $b } map { $_->{end} } @other;
    cmp_ok($first, '>=', 0.29, 'no waiter of the other worker answered before the fill');
    # as in TEST 1: far below the 3 s lock timeout, above the client's scheduling noise
    cmp_ok($last - $miss->{end}, '<=', 0.25,
           sprintf('last waiter of the other worker answered within 250 ms of the fill end (%.3f vs %.3f)',
                   $last, $miss->{end}));
}
--- no_error_log
[error]
[warn]



=== TEST 3: backend slower than $cache_lock_timeout: waiters give up on time, filler stores, no lock left
# Waiters that timed out get "Cache-Control: no-store" from the backend (through
# the map), so srcache does not store their copies: what Redis holds is the filler's.
--- log_level: info
--- http_config eval
$::BASE_HTTP . <<'_E_'
    map $stale_cache_status $timeout_no_store { TIMEOUT "Cache-Control: no-store"; default ""; }
_E_
--- config eval
base_config(set => { lock_timeout => 0.5 },
            in => [@$::HEADERS, 'proxy_set_header X-Backend-Header $timeout_no_store;'])
--- request
GET /api/x
--- more_headers
X-Backend-Delay: 1.5
--- concurrency: 10
--- timeout: 10
--- response_body_like: ^backend GET /api/x hit \d+$
--- response_headers_like
X-Stale-Cache: ^(MISS|TIMEOUT)$
--- check
my @r = responses();
my $n = statuses(@r);
is($n->{MISS}, 1, 'one MISS (the filler)');
is($n->{TIMEOUT}, 9, 'nine TIMEOUT') or diag(explain $n);
my ($miss) = grep { $_->{headers}{'x-stale-cache'} eq 'MISS' } @r;
my @to = grep { $_->{headers}{'x-stale-cache'} eq 'TIMEOUT' } @r;
cmp_ok($miss->{end}, '>=', 1.45, 'filler took the backend delay');
# a filler held up by its waiters' timeouts would end at 2 s
cmp_ok($miss->{end}, '<', 1.9, 'filler not delayed further');
# waiters: 0.5 s wait, then their own 1.5 s backend request. Waiting for the fill first would
# end them at 3 s, waiting the default lock timeout at 4.5 s.
for my $w (@to) {
    cmp_ok($w->{end}, '>=', 1.95, "waiter #$w->{index} ended after wait + backend");
    cmp_ok($w->{end}, '<', 2.8, "waiter #$w->{index} gave up on time");
    is($w->{headers}{'x-cache'}, 'MISS', "waiter #$w->{index} found nothing in the cache");
}
my @log = sort { $a->{time} <=> $b->{time} } backend_log('/api/x');
is(scalar @log, 10, '10 backend hits (waiters proceeded to the backend)');
my $t0 = $log[0]{time};
is($log[0]{headers}{'x-status-seen'}, 'MISS', 'first backend hit is the filler');
for my $l (@log[1 .. $#log]) {
    my $d = $l->{time} - $t0;
    # after the 0.5 s lock timeout; well before the fill ended (1.5 s)
    ok($d >= 0.45 && $d <= 1.0, sprintf('waiter reached the backend %.3f s after the filler', $d));
    is($l->{headers}{'x-status-seen'}, 'TIMEOUT', 'backend saw TIMEOUT');
}
my $k = redis_key('/api/x');
is($miss->{headers}{'x-store'}, 'STORE', 'filler: X-Store STORE');
is(scalar(grep { ($_->{headers}{'x-store'} // '') eq 'BYPASS' } @to), 9,
   'timed-out waiters\' (no-store) copies were not stored');
like(redis('GET', $k) // '', qr/\r\n\r\nbackend GET \/api\/x hit 1\n\z/, 'Redis holds the filler\'s copy (hit 1)');
my $ttl = redis('TTL', $k);
ok($ttl >= 100 && $ttl <= 105, "stored with exptime 105 (TTL $ttl)");
# no lock outlives its request: a new miss fills at once
redis('DEL', $k);
my $x = http_get('/api/x');
is($x->{status}, 200, 'new request 200');
is($x->{headers}{'x-stale-cache'}, 'MISS', 'new request is a MISS (lock free)');
# a lock left behind would hold it for the 0.5 s lock timeout
cmp_ok($x->{elapsed}, '<', 0.45, sprintf('new request not delayed (%.3f s)', $x->{elapsed}));
is(redis('EXISTS', $k), 1, 'stored again');
--- error_log eval
[qr/\[warn\].*stale_cache: waited \$cache_lock_timeout for the request filling "\|\/api\/x"; going on without it/]
--- no_error_log
[error]



=== TEST 4: client disconnects while filling: the lock is released, the next request is not stuck
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS)
--- pre
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$TEST_NGINX_SERVER_PORT", Timeout => 2)
    or die "connect: $!";
print $s "GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Backend-Delay: 2\r\nConnection: close\r\n\r\n";
wait_backend_hits('/api/x', 1);    # it is filling: it holds the lock
close $s;
wait_log('client prematurely closed connection');    # nginx saw the abort
--- request
GET /api/x
--- response_body
backend GET /api/x hit 2
--- response_headers
X-Stale-Cache: MISS
X-Cache: MISS
--- check
my @r = responses();
# Held until the aborted fill's backend answer (2 s after it started) or the 3 s lock
# timeout, it would take well over 1 s.
cmp_ok($r[0]{elapsed}, '<', 1,
       sprintf('next request not held by the aborted fill (%.3f s, backend 2 s, lock_timeout 3 s)', $r[0]{elapsed}));
my @log = backend_log('/api/x');
is(scalar @log, 2, 'aborted request reached the backend, next one too');
is($log[0]{headers}{'x-status-seen'}, 'MISS', 'the aborted request was the filler');
# The aborted request's backend answer (2 s after it arrived) is never stored: look after it.
sleep_until($log[0]{time} + 2 + 0.3);
my $v = redis('GET', redis_key('/api/x'));
like($v, qr/hit 2\n\z/, 'stored copy is the second request\'s');
my $y = http_get('/api/x');
is($y->{headers}{'x-cache'}, 'HIT', 'then served from cache');
is(backend_hits('/api/x'), 2, 'no further backend hit');
--- error_log
client prematurely closed connection



=== TEST 5: sequential requests after a fill: MISS, then FRESH from the cache, one backend hit
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS)
--- request eval
["GET /api/x", "GET /api/x", "GET /api/x", "GET /api/x"]
--- response_body
backend GET /api/x hit 1
--- response_headers eval
["X-Stale-Cache: MISS\nX-Cache: MISS\nX-Store: STORE",
 ("X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS") x 3]
--- backend_hits: 1
--- redis_check eval
[[['TTL', redis_key('/api/x')], qr/^10[0-5]$/]]



=== TEST 6: a lookup that races a finished fill does not fill again
# /slowttl answers "missing" after $http_x_ttl_delay: request B's lookup starts
# with A's (before A holds the lock, at 0.1 s) but answers at 1 s, after A's
# fill ended (0.3 s, 0.7 s of slack for a loaded machine); B must not fill a second time.
--- http_config eval: $::BASE_HTTP
--- config eval
base_config(set => { ttl => '/slowttl' }, in => $::HEADERS, after => <<'_E_')
    location = /slowttl { internal; echo_sleep $http_x_ttl_delay; echo -n ":-2\r\n"; }
_E_
--- request eval
["GET /api/x", "GET /api/x"]
--- more_headers eval
["X-Ttl-Delay: 0.1\nX-Backend-Delay: 0.2", "X-Ttl-Delay: 1"]
--- concurrency: 2
--- response_body
backend GET /api/x hit 1
--- response_headers eval
["X-Stale-Cache: MISS\nX-Cache: MISS", "X-Stale-Cache: COLLAPSED\nX-Cache: HIT"]
--- backend_hits: 1
--- check
my @r = responses();
cmp_ok($r[1]{end}, '>=', 0.95, 'B answered after its slow lookup');
cmp_ok($r[0]{end}, '<', 0.9, 'A finished before B\'s lookup answered');



=== TEST 7: waiting for a fill with a debug-level error_log does not crash the worker
# The harness's default log level is debug (nginx is built --with-debug). A waiting request
# arms the module's 2 ms poll timer; its event must survive nginx's debug logging of timer
# events ("event timer del: %d", which reads ((ngx_connection_t *) ev->data)->fd).
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS)
--- request
GET /api/x
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 5
--- response_body
backend GET /api/x hit 1
--- response_headers_like
X-Stale-Cache: ^(MISS|COLLAPSED)$
--- backend_hits: 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one MISS');
is($n->{COLLAPSED}, 4, 'four COLLAPSED') or diag(explain $n);
--- no_error_log
exited on signal

=== TEST 8: after an abandoned fill one waiter fills in its place; the others keep waiting
The filling client goes away before its answer is complete (nothing is stored). Instead of all
waiters going to the backend at once, one of them takes the lock and fills; the rest are served
what it stored. (A fill whose complete answer was not stored is another case: pass marks,
t/025-pass.t.)
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval
<<'_EOC_' . redis_locations()
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        set_escape_uri $escaped_key $cache_key;
        stale_cache on;
        srcache_fetch_skip $stale_cache_skip_fetch;
        srcache_fetch GET /redis $cache_key;
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Stale-Cache $stale_cache_status always;
        proxy_pass http://backend;
    }
_EOC_
--- request
GET /t-unused
--- ignore_response
--- check
my $dir = "$TEST_NGINX_SERVROOT/failfill";
mkdir $dir;
my $url = "http://127.0.0.1:$TEST_NGINX_SERVER_PORT/api/f";
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$TEST_NGINX_SERVER_PORT", Timeout => 2)
    or die "connect: $!";
print $s "GET /api/f HTTP/1.1\r\nHost: localhost\r\nX-Backend-Delay: 2\r\nConnection: close\r\n\r\n";
wait_backend_hits('/api/f', 1);    # the first request holds the lock before the others come
# each curl touches done$i when it has finished
for my $i (1 .. 5) {
    system("(curl -s -D $dir/h$i -o $dir/b$i -H 'X-Backend-Delay: 0.3' $url; touch $dir/done$i) &");
}
wait_until(sub { error_log_count(qr/stale_cache: waiting up to/) >= 5 }, 10,
           'the five waiters to be parked');    # before the filler goes
close $s;
wait_until(sub { !grep { !-e "$dir/done$_" } 1 .. 5 }, 10, 'all five curl requests to finish');
my $slurp = sub { open my $fh, '<', $_[0] or return ''; local $/; <$fh> };
is(backend_hits('/api/f'), 2, 'one waiter refilled; the others did not reach the backend');
my (%status, %body);
for my $i (1 .. 5) {
    my ($st) = $slurp->("$dir/h$i") =~ /X-Stale-Cache: (\w+)/i;
    $status{$st // 'none'}++;
    $body{ $slurp->("$dir/b$i") }++;
}
is($status{MISS}, 1, 'one waiter became the filler');
is($status{COLLAPSED}, 4, 'the others were served its fill');
is_deeply([keys %body], ["backend GET /api/f hit 2\n"], 'every waiter got the refill');



=== TEST 9: redis2/HttpRedis locations with stale_cache_role: the store is known by its location, the fill counts, waiters are COLLAPSED
--- redis2
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS, variant => 'redis2')
--- request
GET /api/r2
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 10
--- timeout: 10
--- response_body
backend GET /api/r2 hit 1
--- backend_hits: 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one MISS');
is($n->{COLLAPSED}, 9, 'the other 9 COLLAPSED: the fill was counted as stored') or diag(explain $n);
unlike(Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/nginx-t.out") // '',
       qr/no location has a role/, 'nginx -t: no legacy notice');
--- no_error_log
[error]
no location has a role



=== TEST 10: the same locations without stale_cache_role (a configuration from before roles): a notice, and the old recognition still counts the fill
--- redis2
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::HEADERS, variant => 'redis2-legacy')
--- request
GET /api/r2
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 10
--- timeout: 10
--- response_body
backend GET /api/r2 hit 1
--- backend_hits: 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one MISS');
is($n->{COLLAPSED}, 9, 'the other 9 COLLAPSED: the fill was counted as stored') or diag(explain $n);
like(Test::StaleCache::slurp("$TEST_NGINX_SERVROOT/logs/nginx-t.out") // '',
     qr/\[notice\].*stale_cache: no location has a role: srcache's fetch and store subrequests are recognised by their arguments and timing \(legacy\)/,
     'nginx -t: the legacy notice');
--- no_error_log
[error]
