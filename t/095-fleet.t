# A fleet: several nginx instances (own prefixes, ports, zones) sharing one Redis and one
# backend, with `$cache_lease` (the fleet lease, docs/fleet.md). This file runs the
# lease through the module's native Redis locations; t/096-fleet-redis2.t runs the same
# blocks through redis2 + HttpRedis.
use lib 't/lib';
use Test::StaleCache;
use Fleet;
use IO::Socket::INET;
run_tests();
__DATA__

=== TEST 1: 3 nodes, 300 concurrent cold misses round-robin, backend 300 ms: one backend hit for the fleet, every client 200, waiters on the other nodes answered soon after the store
--- log_level: info
--- http_config eval
"    stale_cache_zone srcache_locks 1m;\n" . fleet_log_format()
--- config eval: fleet_config('access_log logs/t.log t;')
--- pre
start_nodes(3);
--- check
backend_config('/api/cold', delay => 0.3);
my $evals = redis_calls('eval');
my @r = fleet_get('/api/cold', 300, undef, 20);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 300, 'every client 200');
is(scalar(grep { ($_->{body} // '') eq "backend GET /api/cold hit 1\n" } @r), 300,
   'every client got the one fill');
is(backend_hits('/api/cold'), 1, 'one backend hit for the whole fleet');
my $c = statuses(@r);
is($c->{MISS}, 1, 'one MISS') or diag explain $c;
is($c->{COLLAPSED}, 299, 'the others COLLAPSED') or diag explain $c;
# In nginx: when each request was answered ($msec of the access log), after the filler's
# answer (which ends after its store).
my @t = answer_times(0 .. 2);
my ($fill) = grep { $_->{status} eq 'MISS' } @t;
my @other = map { ($_->{msec} - $fill->{msec}) * 1000 } grep { $_->{node} != $fill->{node} } @t;
my @same = map { ($_->{msec} - $fill->{msec}) * 1000 }
           grep { $_->{node} == $fill->{node} && $_ != $fill } @t;
is(scalar(@other), 200, 'answer times of the other nodes logged');
# By the client: the same, plus the time the client takes to read 300 answers at once.
my ($filler) = grep { ($_->{headers}{'x-stale-cache'} // '') eq 'MISS' } @r;
my @c_other = map { ($_->{end} - $filler->{end}) * 1000 } grep { $_->{node} != $filler->{node} } @r;
my @c_same = map { ($_->{end} - $filler->{end}) * 1000 }
             grep { $_->{node} == $filler->{node} && $_ != $filler } @r;
diag sprintf 'after the store, p50/p99 ms: in nginx: other nodes %.1f/%.1f, filling node %.1f/%.1f; '
           . 'by the client: other nodes %.1f/%.1f, filling node %.1f/%.1f; EVALs %d',
    pct(50, @other), pct(99, @other), pct(50, @same), pct(99, @same),
    pct(50, @c_other), pct(99, @c_other), pct(50, @c_same), pct(99, @c_same),
    redis_calls('eval') - $evals;
# Answering 100 waiters at once takes a loaded machine tens of ms on the filling node too (the
# floor); the lease poll may add up to its 25 ms bound and a Redis round trip.
my $bound = 50 > pct(99, @same) + 30 ? 50 : pct(99, @same) + 30;
cmp_ok(pct(99, @other), '<=', $bound, 'the other nodes answered within 50 ms of the store, or '
       . 'within 30 ms of the filling node\'s own waiters on a loaded machine (p99, in nginx)');
# The client's own delay shows on the filling node too, which waits for no poll. Seen: 49.6 ms
# idle; 65 ms with both cores busy (the node's own waiters 15 ms), hence the 100 ms room; a
# node that missed the store would wait for $cache_lock_timeout (3 s).
cmp_ok(pct(99, @c_other), '<=', 100 + pct(99, @c_same),
       'by the client, within 100 ms more than the filling node\'s own waiters (p99)');
# 1 take per node, polls (every 25 ms at most over 300 ms), the release.
cmp_ok(redis_calls('eval') - $evals, '<=', 3 * 16, 'a few lease commands per node');
nodes_clean(1, 2);

=== TEST 2: 3 nodes, a stale key, 30 concurrent requests per node: one refresh for the fleet, stale hits not slowed
--- log_level: debug
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- check
my $key = fill_and_stale('/api/stale', undef, delay => 0.5);
my @r = fleet_get('/api/stale', 90);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 90, 'every client 200');
is(statuses(@r)->{STALE}, 90, 'every client STALE') or diag explain statuses(@r);
my $slowest = (sort { $b <=> $a } map { $_->{elapsed} } @r)[0];
cmp_ok($slowest, '<', 0.4, 'no stale hit waited for the refresh (backend 0.5 s)');
wait_until(sub { redis('TTL', $key) > 100 }, 5, 'the refresh stored');
# Refreshes of other nodes would have been sent with the first: they would show by now.
is(backend_hits('/api/stale'), 2, 'the fill and one refresh for the fleet');
my @took = grep { node_log_text($_) =~ /lease of "[^"]*" for a refresh: Ok\(Taken\)/ } 0 .. 2;
my @held = grep { node_log_text($_) =~ /lease of "[^"]*" for a refresh: Ok\(Held\)/ } 0 .. 2;
is(scalar(@took), 1, 'one node took the refresh lease');
is(scalar(@held), 2, 'the two others found it held');
wait_until(sub { !defined redis('GET', lease_key('/api/stale')) }, 5, 'the lease released');
nodes_clean(1, 2);

=== TEST 3: kill -9 of the whole nginx holding the lease during a fill: another node fills within the lease period + backend time; its waiters get 200
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- check
backend_config('/api/kill', delay => 30);
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => (node_ports())[1])
    or die "connect to node 1: $!";
print $s "GET /api/kill HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
wait_backend_hits('/api/kill', 1, 5);
ok(defined redis('GET', lease_key('/api/kill')), 'node 1 holds the lease while it fills');
kill_node(1);
backend_config('/api/kill', delay => 0.3);
my @r = fleet_get('/api/kill', 40, undef, 15, [0, 2]);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 40, 'every client 200');
my $slowest = (sort { $b <=> $a } map { $_->{elapsed} } @r)[0];
diag sprintf 'slowest client: %.2f s (lease 3 s + backend 0.3 s)', $slowest;
cmp_ok($slowest, '<', 3 + 0.3 + 1.5, 'filled within the lease period + backend time');
is(backend_hits('/api/kill'), 2, 'the killed fill and one more for the fleet');
my $c = statuses(@r);
is($c->{MISS}, 1, 'one MISS') or diag explain $c;
is($c->{COLLAPSED}, 39, 'the others COLLAPSED') or diag explain $c;
nodes_clean(2);

=== TEST 4: a fill that stores nothing passes the key for the fleet: the other nodes' waiters go to the backend at once (PASS), and the lease becomes the fleet's pass mark
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- check
backend_config('/api/nocache', delay => 0.3, status => 404);
my @r = fleet_get('/api/nocache', 30);
is(scalar(grep { !$_->{error} && $_->{status} == 404 } @r), 30, 'every client got the 404');
my $c = statuses(@r);
is($c->{MISS}, 1, 'one MISS') or diag explain $c;
is($c->{PASS}, 29, 'the others PASS') or diag explain $c;
my $pttl = redis('PTTL', lease_key('/api/nocache'));
is(redis('GET', lease_key('/api/nocache')), 'pass', 'the lease is the fleet pass mark');
ok($pttl > 0 && $pttl <= 10_000, "for \$cache_pass_ttl (10 s; left $pttl ms)");
nodes_clean(1, 2);

=== TEST 5: the lease location failing fails open: each node collapses on its own, every client 200, one error line per worker
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config('set $cache_lease /brokenlease;') . broken_lease_location()
--- pre
start_nodes(2);
--- check
backend_config('/api/broken', delay => 0.3);
my @r = fleet_get('/api/broken', 40);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 40, 'every client 200');
is(backend_hits('/api/broken'), 2, 'one fill per node, as without leases');
for my $i (0, 1) {
    my $n = () = node_log_text($i) =~ /the \$cache_lease location failed/g;
    is($n, 1, "node $i: one error line");
}
nodes_clean(1);

=== TEST 6: fresh hits cost no lease command
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- check
is(http_get('/api/fresh')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
wait_until(sub { !defined redis('GET', lease_key('/api/fresh')) }, 5, 'the lease released');
my $evals = redis_calls('eval');
my @r = fleet_get('/api/fresh', 60);
is(statuses(@r)->{FRESH}, 60, 'every client FRESH') or diag explain statuses(@r);
is(redis_calls('eval'), $evals, 'no lease command for fresh hits');
nodes_clean(1, 2);

=== TEST 7: nginx -t refuses a $cache_lease that is not a URI
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config('set $cache_lease redislease;')
--- must_die
--- error_log
cache_lease

=== TEST 8: the lease's own renew/release requests are no refreshes: no "srcache stored nothing" warning; they say who they are in the access log and still find the key made of the client's User-Agent
--- log_level: info
--- http_config
    stale_cache_zone srcache_locks 1m;
    log_format ua '$request_uri $status "$http_user_agent"';
--- config eval: fleet_config('access_log logs/ua.log ua;')
--- pre
start_nodes(1);
--- check
my $r = http_get('/api/leased', { 'User-Agent' => 'client-ua/7' });
is($r->{headers}{'x-stale-cache'}, 'MISS', 'one fill, coordinated by the lease');
wait_until(sub { (Test::StaleCache::slurp(node_prefix(0) . '/logs/ua.log', 0) // '') =~ m{^/api/leased 204 "stale-cache-lease/1"$}m },
           5, 'the lease release request to be logged with its own User-Agent');
ok(!defined redis('GET', lease_key('/api/leased', 'client-ua/7')),
   'the release found the lease of the client\'s key (made of its User-Agent)');
my $log = Test::StaleCache::slurp(node_prefix(0) . '/logs/ua.log', 0);
unlike($log, qr{^/api/leased 204 "client-ua/7"$}m, 'no lease request with the client\'s User-Agent');
unlike(error_log_text(), qr{srcache stored nothing}, 'no false "stored nothing" warning');
nodes_clean(0);

=== TEST 9: Redis restarted (empty) during a fleet fill: 41 requests over 3 nodes, at most one backend request per node, every client 200
--- log_level: info
--- workers: 2
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config eval: fleet_config()
--- pre
start_nodes(3);
--- timeout: 60
--- check
backend_config('/api/restart', delay => 1);
my $port = $ENV{TEST_NGINX_REDIS_PORT};
# Redis goes 0.3 s into the 1 s fill and comes back empty 0.2 s later (the lease is gone).
my $kid = fork // die "fork: $!";
if (!$kid) {
    sleep_ms(300);
    system("redis-cli -p $port SHUTDOWN NOSAVE >/dev/null 2>&1");
    sleep_ms(200);
    exec('/usr/bin/redis-server', '--port', $port, '--bind', '127.0.0.1', '--save', '',
         '--appendonly', 'no', '--dir', "$ENV{TEST_NGINX_SERVROOT}/redis", '--protected-mode', 'no')
        or POSIX::_exit(1);
}
my @r = fleet_get('/api/restart', 41, undef, 20);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 41, 'every client 200');
my $hits = backend_hits('/api/restart');
cmp_ok($hits, '<=', 3, "backend requests: $hits (one per node at most)") or diag(explain statuses(@r));
Test::StaleCache::kill_wait($kid, 'TERM', 5);
start_redis();
nodes_clean(0 .. 2);
