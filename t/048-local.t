# Collapsing without Redis (issue 20, point 1): while Redis is away (stopped, in backoff,
# lookups failing), one request per key on the node goes to the backend; the others wait for
# it and are answered from the node's local zone (LOCAL), and so are the next requests within
# the response's fresh period. When Redis comes back (empty), collapsing through Redis goes
# on at once. Run with nginx-conf/stock-debian.conf as it is (its server block, the harness's
# backend and Redis), 2 workers.
use lib 't/lib';
use Test::StaleCache;
use Time::HiRes ();
use Fleet;
use StockConf;

# $n concurrent GETs of $path: the responses, each checked to be a 200 from the backend's body.
# With $bad (an array ref), the failures are added to it instead of being a test each.
sub burst {
    my ($path, $n, $what, $bad) = @_;
    my @r = concurrent_get($path, $n, undef, 10);
    my @bad = grep { ($_->{status} // 0) != 200 || ($_->{body} // '') !~ /^backend GET \Q$path\E hit \d+$/ } @r;
    if ($bad) { push @$bad, @bad; return @r }
    is(scalar @bad, 0, "$what: all $n answered 200 with the backend's body")
        or diag(explain [map { { status => $_->{status}, error => $_->{error}, body => $_->{body} } } @bad[0 .. 2]]);
    return @r;
}

# stale_cache_requests_total of $status, from the admin listener's /metrics.
sub requests_total {
    my ($status) = @_;
    my $r = at_port($::ADMIN_PORT, 'GET /metrics');
    my ($n) = ($r->{body} // '') =~ /^stale_cache_requests_total\{[^}]*status="\Q$status\E"[^}]*\} (\d+)/m;
    return $n // 0;
}

# TEST 13: a proxy that connects the fetch location's requests to Redis late, and a listener
# whose connections the kernel spreads over both workers (reuseport).
our $SLOW_PORT = pick_port();
our $PORT2 = pick_port();

# drop-in-redis2.conf with its fetch location (/redis, HttpRedis) behind the slow proxy, and
# the reuseport listener.
sub dropin_slow_fetch {
    my $server = ::stock('drop-in-redis2.conf');
    $server =~ s{(location = /redis \{.*?)redis_pass redis;}
                {$1redis_pass slowredis; redis_read_timeout 30s;}s
        or die 'no /redis location in drop-in-redis2.conf';
    return "    listen 127.0.0.1:$PORT2 reuseport;\n$server";
}

run_tests();

__DATA__

=== TEST 1: stock-debian.conf, Redis stopped: a fresh key is fetched once per node, the others are LOCAL; Redis back empty: collapsing through Redis at once
--- workers: 2
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
is(http_get('/api/k')->{headers}{'x-stale-cache'}, 'MISS', 'filled while Redis is up');
# With 2 workers the next request may still meet the fill's lock (COLLAPSED): ask until FRESH.
ok(wait_until(sub { http_get('/api/k')->{headers}{'x-stale-cache'} eq 'FRESH' }, 5, 'a FRESH hit'),
   'fresh (the memo now knows it)');
stop_redis();
my @r = burst('/api/k', 32, 'Redis down, 32 at once');
is(backend_hits('/api/k'), 2, 'one backend request for the key during the outage (plus the fill)')
    or diag(explain statuses(@r));
my $s = statuses(@r);
cmp_ok($s->{LOCAL} // 0, '>=', 28, 'the others were answered from the local zone') or diag(explain $s);
my $x = http_get('/api/k');
is($x->{headers}{'x-stale-cache'}, 'LOCAL', 'the next request: LOCAL');
like($x->{headers}{'cache-status'} // '', qr/^stale-cache; hit; detail=local$/, 'Cache-Status says so');
is($x->{body}, "backend GET /api/k hit 2\n", 'with the response of the one backend request');
is(backend_hits('/api/k'), 2, 'still one backend request');
cmp_ok(::requests_total('local'), '>=', 29, 'counted: stale_cache_requests_total{status="local"}');
start_redis();
@r = burst('/api/k', 32, 'Redis back, empty, 32 at once');
cmp_ok(backend_hits('/api/k'), '<=', 4, 'at most 2 more backend requests once Redis is back')
    or diag(explain statuses(@r));
my $hit = wait_until(sub { my $r = http_get('/api/k');
                           ($r->{headers}{'x-cache'} // '') eq 'HIT' && $r->{headers}{'x-stale-cache'} eq 'FRESH' && $r },
                     5, 'served from Redis again');
cmp_ok(backend_hits('/api/k'), '<=', 4, 'and no more backend requests');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 2: stock-debian.conf, Redis stopped: a cold miss goes to the backend once; PASS is never set by the outage
--- workers: 2
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
stop_redis();
# This worker's backoff starts with another key's failed lookup.
is(http_get('/api/other')->{status}, 200, 'another key: 200');
my @r = burst('/api/cold', 32, 'a cold key, 32 at once');
is(backend_hits('/api/cold'), 1, 'one backend request for the cold key') or diag(explain statuses(@r));
my $s = statuses(@r);
is($s->{PASS} // 0, 0, 'no PASS') or diag(explain $s);
@r = burst('/api/cold', 16, 'again');
is(backend_hits('/api/cold'), 1, 'still one') or diag(explain statuses(@r));
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 3: stock-debian.conf, Redis stopped: a key in its stale window, once per node
--- workers: 2
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
is(http_get('/api/st')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
is(redis('EXPIRE', redis_key('/api/st'), 50), 1, 'now in its stale window');
stop_redis();
my @r = burst('/api/st', 32, 'Redis down, 32 at once');
is(backend_hits('/api/st'), 2, 'one backend request during the outage') or diag(explain statuses(@r));
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 4: stale_cache_local_zone off: Redis stopped, every request goes to the backend (ERROR), as before
--- http_config eval: ::stock_http('stock-debian.conf') . "    stale_cache_local_zone off;\n"
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
stop_redis();
my @r = burst('/api/off', 8, 'Redis down');
is(backend_hits('/api/off'), 8, 'each went to the backend');
is(statuses(@r)->{LOCAL} // 0, 0, 'none LOCAL');
start_redis();



=== TEST 5: stale_cache_local_zone with its own name and size
--- http_config eval: ::stock_http('stock-debian.conf') . "    stale_cache_local_zone mine 2m;\n"
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
stop_redis();
burst('/api/mine', 8, 'Redis down');
is(backend_hits('/api/mine'), 1, 'one backend request');
start_redis();



=== TEST 6: stale_cache_local_zone: a size below 1m fails nginx -t
--- http_config eval: $::HTTP . "    stale_cache_local_zone l 100k;\n"
--- config
    location /t { return 200; }
--- must_die
--- error_log
invalid size "100k" (a size like 4m; at least 1048576 bytes)



=== TEST 7: stale_cache_local_zone: a size that is not one fails nginx -t
--- http_config eval: $::HTTP . "    stale_cache_local_zone l lots;\n"
--- config
    location /t { return 200; }
--- must_die
--- error_log
invalid size "lots"



=== TEST 8: stale_cache_local_zone: one argument other than off, or twice, fails nginx -t
--- http_config eval: $::HTTP . "    stale_cache_local_zone on;\n"
--- config
    location /t { return 200; }
--- must_die
--- error_log
takes a name and a size (like "local 4m"), or "off"



=== TEST 9: stale_cache_local_zone twice fails nginx -t
--- http_config eval: $::HTTP . "    stale_cache_local_zone a 1m;\n    stale_cache_local_zone off;\n"
--- config
    location /t { return 200; }
--- must_die
--- error_log
is duplicate (one local zone per http block)



=== TEST 10: drop-in-redis2.conf with real redis2/HttpRedis, Redis stopped for 2 s: one backend request per key, about one error line per second per worker
--- redis2
--- workers: 2
--- log_level: notice
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- request
GET /api/warm
--- check
is(http_get('/api/d')->{headers}{'x-stale-cache'}, 'MISS', 'filled while Redis is up');
# With 2 workers the next request may still meet the fill's lock (COLLAPSED): ask until FRESH.
ok(wait_until(sub { http_get('/api/d')->{headers}{'x-stale-cache'} eq 'FRESH' }, 5, 'a FRESH hit'), 'fresh');
my $from = Time::HiRes::time();
stop_redis();
my (%s, $n, @bad, $first, $after_first);
my $lines = sub { scalar grep { /\[(warn|error|crit|alert|emerg)\]/ } split /\n/, error_log_text() };
while (Time::HiRes::time() < $from + 2) {
    my @r = burst('/api/d', 16, '', \@bad);
    burst('/api/dcold', 16, '', \@bad);
    $s{$_} += statuses(@r)->{$_} for keys %{ statuses(@r) };
    $n++;
    # The first half second meets Redis gone in each worker: lookups in flight, and a
    # worker's first requests before it has seen a failure itself (a line each).
    ($first, $after_first) = ($lines->(), Time::HiRes::time())
        if !defined $first && Time::HiRes::time() >= $from + 0.5;
}
($first, $after_first) = ($lines->(), Time::HiRes::time()) unless defined $first;
my $outage = Time::HiRes::time() - $from;
is(scalar @bad, 0, "all answered 200 with the backend's body ($n bursts of 2 x 16)")
    or diag(explain [@bad[0 .. 2]]);
is(backend_hits('/api/d'), 2, "one backend request for the key during the outage ($n bursts)")
    or diag(explain \%s);
is(backend_hits('/api/dcold'), 1, 'one for the cold key');
cmp_ok($s{LOCAL} // 0, '>=', 16 * $n - 2, 'the others: LOCAL') or diag(explain \%s);
my @lines = grep { /\[(warn|error|crit|alert|emerg)\]/ } split /\n/, error_log_text();
cmp_ok($first, '<=', 4 * 32 + 8, "$first error lines in the first 0.5 s, while each worker meets Redis gone");
# Then 2 workers, at most 2 lines per second each (the module's probe of its lookups, the
# fills' fetch and store).
my $then = Time::HiRes::time() - $after_first;
cmp_ok(@lines - $first, '<=', 2 * 2 * ($then + 1), (@lines - $first) . " error lines in the next $then s")
    or diag(join "\n", @lines[$first .. ($#lines < $first + 20 ? $#lines : $first + 20)]);
start_redis();
wait_until(sub { my $r = http_get('/api/d');
                 ($r->{headers}{'x-cache'} // '') eq 'HIT' && $r->{headers}{'x-stale-cache'} eq 'FRESH' },
           5, 'served from Redis again');
cmp_ok(backend_hits('/api/d'), '<=', 4, 'at most 2 more backend requests once Redis is back');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 11: 3 nodes with the fleet lease, Redis stopped: one backend request per key per node (a fresh key and a cold one)
--- http_config eval
"    stale_cache_zone srcache_locks 1m;\n"
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- check
is((fleet_get('/api/fw', 1))[0]{headers}{'x-stale-cache'}, 'MISS', 'filled while Redis is up');
stop_redis();
for my $path ('/api/fw', '/api/fc') {
    my @r = fleet_get($path, 96, undef, 10);
    is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 96, "$path: every client 200");
    my $s = statuses(@r);
    cmp_ok($s->{LOCAL} // 0, '>=', 90, "$path: the others LOCAL") or diag(explain $s);
}
cmp_ok(backend_hits('/api/fw'), '<=', 1 + 3, 'the fresh key: at most one backend request per node');
cmp_ok(backend_hits('/api/fc'), '<=', 3, 'the cold key: at most one backend request per node');
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 12: stock-debian.conf, Redis stopped past a local copy's fresh period: the stale copy is served at once while one request fills again
--- workers: 2
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request
GET /api/warm
--- check
stop_redis();
my @r = burst('/api/sl', 16, 'Redis down, 16 at once');
is(backend_hits('/api/sl'), 1, 'one backend request');
my $t0 = Time::HiRes::time();
# The copy is fresh for 5 s (stored for 105, 100 of them stale): the time passing is the test.
sleep_until($t0 + 5.2);
backend_config('/api/sl', delay => 0.5);
@r = burst('/api/sl', 16, 'after its fresh period, 16 at once');
is(backend_hits('/api/sl'), 2, 'one more backend request') or diag(explain statuses(@r));
my $s = statuses(@r);
is($s->{MISS} // 0, 1, 'one MISS (the fill)') or diag(explain $s);
is($s->{LOCAL} // 0, 15, 'the others LOCAL') or diag(explain $s);
my @quick = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'LOCAL' && $_->{elapsed} < 0.4 } @r;
is(scalar @quick, 15, 'served the stale copy without waiting for the 0.5 s fill');
is(scalar(grep { ($_->{headers}{'cache-status'} // '') eq 'stale-cache; hit; detail=local-stale' } @quick), 15,
   'Cache-Status says the local copy was stale');
my $x = wait_until(sub { my $r = http_get('/api/sl'); $r->{body} =~ /hit 2$/ && $r }, 3, 'the new copy served');
is($x->{headers}{'x-stale-cache'}, 'LOCAL', 'LOCAL, the fill kept');
is($x->{headers}{'cache-status'}, 'stale-cache; hit; detail=local', 'a fresh local copy: detail=local');
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 13: drop-in-redis2.conf, 2 workers, Redis stopped and fetches failing late: a worker whose fetch fails after the other worker kept the key's copy answers from that copy
# Request A's fetch fails first (its worker then fills and keeps the answer on the node); the
# 8 later requests were fresh by the memo too, and their fetches fail after the copy is kept.
# On a worker that had not seen Redis away, a failed fetch was taken for an entry gone from
# Redis, and the copy was forgotten: a second backend request. (A native fetch location's
# failure puts the worker in its backoff, which counts as away: HttpRedis's does not.)
--- redis2
--- workers: 2
--- http_config eval: ::stock_http('drop-in-redis2.conf') . "    upstream slowredis {\n        server 127.0.0.1:$::SLOW_PORT;\n    }\n"
--- config eval: ::dropin_slow_fetch()
--- request
GET /metrics
--- error_code: 404
--- check
my $d = 1.5 * Test::StaleCache::time_scale();
my $proxy = Test::StaleCache::spawn_slow_proxy($::SLOW_PORT, $ENV{TEST_NGINX_REDIS_PORT}, $d, '--connect-late');
my $p = '/api/late';
is(http_get($p)->{headers}{'x-stale-cache'}, 'MISS', 'filled while Redis is up');
# Fresh for long (the shipped 105 s store with a 100 s stale window leaves 5 s, and each
# fetch now takes $d): the memo learns it from the next lookup.
is(redis('EXPIRE', redis_key($p), 1000), 1, 'the entry is in Redis');
ok(wait_until(sub { http_get($p)->{headers}{'x-stale-cache'} eq 'FRESH' }, 10 * $d, 'a FRESH hit'),
   'fresh (the memo now knows it)');
stop_redis();
my $a = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$::PORT2") or die "connect: $!";
print $a Test::StaleCache::build_request("GET $p")->{raw};
Time::HiRes::sleep($d / 3);
my @r = concurrent_get($p, 8, undef, 10 + 3 * $d, $::PORT2);
my $buf = '';
my $deadline = Time::HiRes::time() + 10 + 3 * $d;
while ((my $left = $deadline - Time::HiRes::time()) > 0) {
    IO::Select->new($a)->can_read($left) or last;
    sysread($a, $buf, 65536, length $buf) or last;
}
unshift @r, Test::StaleCache::parse_response(\$buf, 1) // { error => 'no answer' };
my @bad = grep { ($_->{status} // 0) != 200 || ($_->{body} // '') ne "backend GET $p hit 2\n" } @r;
is(scalar @bad, 0, 'all 9 answered 200 with the one backend response of the outage')
    or diag(explain [map { { status => $_->{status}, error => $_->{error}, body => $_->{body} } } @bad]);
is(backend_hits($p), 2, 'one backend request during the outage (plus the fill)')
    or diag(explain statuses(@r));
my $s = statuses(@r[1 .. $#r]);
is($s->{LOCAL} // 0, 8, 'the 8 later requests: LOCAL') or diag(explain $s);
kill 'TERM', $proxy;
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]



=== TEST 14: drop-in-redis2.conf: a fetch Redis refuses with an error reply (-WRONGTYPE) is not Redis away: the next key is still fetched from Redis
# The key's entry was replaced by a hash while the memo says it is fresh: srcache's fetch gets
# -WRONGTYPE (HttpRedis answers 502), the request goes to the backend and its store puts a
# string back. Redis answered, so the worker does not skip the next fetches as if it were away.
--- redis2
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- request
GET /metrics
--- error_code: 404
--- check
for my $p ('/api/wa', '/api/wb') {
    is(http_get($p)->{headers}{'x-stale-cache'}, 'MISS', "$p filled");
    ok(wait_until(sub { http_get($p)->{headers}{'x-stale-cache'} eq 'FRESH' }, 5, "$p FRESH"), "$p fresh by the memo");
}
my $key = redis_key('/api/wa');
redis('DEL', $key);
redis('HSET', $key, 'f', 'v');
redis('EXPIRE', $key, 1000);
my $r = http_get('/api/wa');
is($r->{status}, 200, 'the refused fetch: 200');
is($r->{body}, "backend GET /api/wa hit 2\n", 'from the backend');
my $b = http_get('/api/wb');
is($b->{headers}{'x-cache'}, 'HIT', 'the next key is fetched from Redis (not skipped as if Redis were away)');
is($b->{headers}{'x-stale-cache'}, 'FRESH', 'and is FRESH');
is(backend_hits('/api/wb'), 1, 'no second backend request for it');
ok(wait_until(sub { (redis('TYPE', $key) // '') eq 'string' }, 5, 'the store'), 'the store put a string back');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/Redis is away/]
