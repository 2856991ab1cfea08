# Every error reply counts: a Redis that answers but refuses (-OOM when full, -READONLY on a
# replica, -LOADING, -BUSY, -MASTERDOWN, -NOSCRIPT) makes a native Redis location answer 502
# in both reply modes, logged once per 10 s per location and cause; a refused store is a fill
# that did not store (its waiters pass at once, the key gets a pass mark, nothing counts as
# stored), and it never renews an old copy as fresh. Clients always get the backend's answer.
# -OOM and -READONLY come from real redis-servers (maxmemory 1mb + noeviction, REPLICAOF);
# the others from t/lib/fake_redis.py.
# These blocks run with the local zone off (the pass path without it); TEST 10 shows the
# default: a refused store's answer kept on this node and reused (LOCAL), t/048 the rest.
# TESTs 11-13, 15: with the default, a TTL lookup refused with -LOADING, -BUSY, -MASTERDOWN
# or -CLUSTERDOWN (Redis up but not serving) counts as Redis away: one backend request per
# key, the others LOCAL; TEST 14: -WRONGTYPE (a configuration mistake) still fails open.
use lib 't/lib';
use Test::StaleCache;
use IO::Socket::INET;
use Time::HiRes qw(time);

our $FAKE_PORT = $ENV{TEST_NGINX_FAKE_PORT} = pick_port();
our $MASTER_PORT = pick_port();
our ($FAKE_PID, $MASTER_PID);

our $HTTP_LOCAL = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    upstream fake {
        server 127.0.0.1:$TEST_NGINX_FAKE_PORT;
        keepalive 16;
    }
_EOC_
our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    stale_cache_local_zone off;
    upstream fake {
        server 127.0.0.1:$TEST_NGINX_FAKE_PORT;
        keepalive 16;
    }
_EOC_

# The store location as the shipped configurations now write it: one atomic command.
our $ATOMIC = 'stale_cache_redis_command SET $key $request_body EX $exptime;';

# The documented setup (t/lib: base_config) with a 5 s pass mark and /metrics; options:
# store => 'atomic' (SET ... EX, as nginx-conf/ ships) or 'pipeline' (SET + EXPIRE, two
# commands) or a command line of its own; redis => 'fake' for the fake server.
sub config {
    my (%o) = @_;
    my $c = base_config(set => { pass_ttl => 5 }) . "    location = /metrics { stale_cache_metrics; }\n";
    my $store = $o{store} // 'atomic';
    if ($store ne 'pipeline') {
        my $line = $store eq 'atomic' ? $ATOMIC : $store;
        $c =~ s/stale_cache_redis_command SET \$key \$request_body;\s*stale_cache_redis_command EXPIRE \$key \$exptime;/$line/
            or die "no SET + EXPIRE store location\n";
    }
    if (($o{redis} // '') eq 'fake') {
        $c =~ s/stale_cache_redis_pass redis;/stale_cache_redis_pass fake;/g;
    }
    return $c;
}

sub metric_z {
    my ($name, $extra) = @_;
    return metric("$name\{zone=\"srcache_locks\"" . ($extra ? ",$extra" : '') . '}');
}

# A RESP command to a server on $port (the fake one, or the extra master).
sub resp_to { Test::StaleCache::resp_to(@_) }
sub fake { resp_to($FAKE_PORT, @_) }

sub start_fake {
    end_replica();
    unfill_redis();
    return if $FAKE_PID && kill 0, $FAKE_PID;
    $FAKE_PID = Test::StaleCache::spawn_fake_redis($FAKE_PORT);
}

# Redis full: noeviction, 2 MB of filler keys, then maxmemory 1mb. Well over the limit, so
# every write is refused whatever a connection's buffers add or free (at the limit exactly,
# a closing connection would free room for the next small write).
sub fill_redis {
    redis('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    my $v = 'f' x 65536;
    redis('SET', "filler:$_", $v) for 1 .. 32;
    redis('CONFIG', 'SET', 'maxmemory', '1mb');
    eval { redis('SET', 'probe', 'x') };
    die "redis is not full: $@\n" unless $@ =~ /OOM/;
}
sub unfill_redis { redis('CONFIG', 'SET', 'maxmemory', '0') }

# The harness's Redis as a real replica of a second redis-server ($MASTER_PORT).
sub make_replica {
    unfill_redis();
    $MASTER_PID = Test::StaleCache::spawn("$TEST_NGINX_SERVROOT/logs/redis-master.log",
        $ENV{TEST_NGINX_REDIS_SERVER} // '/usr/bin/redis-server', '--port', $MASTER_PORT,
        '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no',
        '--dir', "$TEST_NGINX_SERVROOT/redis");
    wait_until(sub { eval { resp_to($MASTER_PORT, 'PING') eq 'PONG' } }, 10, 'the master answers');
    redis('REPLICAOF', '127.0.0.1', $MASTER_PORT);
    wait_until(sub { redis('INFO', 'replication') =~ /master_link_status:up/ }, 10,
               'the replica is linked');
}
sub end_replica {
    eval { redis('REPLICAOF', 'NO', 'ONE') };
    if ($MASTER_PID) { local $?; kill 'TERM', $MASTER_PID; waitpid $MASTER_PID, 0; undef $MASTER_PID }
}

END {
    local $?;    # waitpid sets it; the file's exit status must stay the tests'
    for my $pid (grep { $_ } $FAKE_PID, $MASTER_PID) { kill 'TERM', $pid; waitpid $pid, 0 }
}

# The refusal lines of the block, for one location and cause.
sub refusals {
    my ($location, $cause) = @_;
    return error_log_count(qr/\[error\].*stale_cache: redis server \S+ refused \S+ \(command \d+ of \d+\) of location "\Q$location\E" with \Q$cause\E: /);
}

run_tests();

__DATA__

=== TEST 1: Redis full (-OOM), cold misses: 1 MISS, its waiters PASS at once (not GONE, no wait for the lock), nothing counted stored, one log line
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
fill_redis();
--- request
GET /api/cold
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- response_body_like: ^backend GET /api/cold hit \d+$
--- check
my @r = responses();
my $n = statuses(@r);
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{PASS}, 19, 'the 19 waiters passed: their fill stored nothing') or diag(explain $n);
my $slowest = (sort { $b <=> $a } map { $_->{elapsed} } @r)[0];
cmp_ok($slowest, '<', 2.5 * time_scale(),
       "nobody waited for the lock to expire (\$cache_lock_timeout 3 s): slowest $slowest s");
is(backend_hits('/api/cold'), 20, 'each went to the backend once');
is(redis('EXISTS', redis_key('/api/cold')), 0, 'nothing in Redis');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
is(metric_z('stale_cache_fills_total', 'outcome="not_stored"'), 1, 'the fill: not stored');
is(metric_z('stale_cache_pass_marks_total'), 1, 'one pass mark');
my $r = http_get('/api/cold');
is($r->{headers}{'x-stale-cache'}, 'PASS', 'within the pass mark: PASS, no lookup, no wait');
is($r->{status}, 200, 'from the backend');
is(refusals('/redis2', 'OOM'), 1, 'the 21 refused stores: one line (once per 10 s)');
like(error_log_text(), qr/refused SET \(command 1 of 1\) of location "\/redis2" with OOM: "OOM command not allowed when used memory > 'maxmemory'\."; the location answers 502/,
     'the line names the command, the location and Redis\'s text');
unfill_redis();
--- no_error_log
[alert]
[crit]



=== TEST 2: Redis full, the store as SET + EXPIRE (two commands): the location answers 502 for the pair, the fill is not stored
--- http_config eval: $::HTTP
--- config eval: ::config(store => 'pipeline')
--- pre
fill_redis();
--- request eval
["GET /api/pipe", "GET /api/pipe"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: PASS"]
--- response_body eval
["backend GET /api/pipe hit 1\n", "backend GET /api/pipe hit 2\n"]
--- backend_hits: 2
--- check
is(redis('EXISTS', redis_key('/api/pipe')), 0, 'nothing in Redis');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
is(metric_z('stale_cache_fills_total', 'outcome="not_stored"'), 1, 'not stored');
is(error_log_count(qr/refused SET \(command 1 of 2\) of location "\/redis2" with OOM: /), 1,
   'one line for both refused stores, naming the command that failed');
unfill_redis();



=== TEST 3: Redis full: a stale entry whose refresh is refused is not renewed as fresh, the refresh counts failed and backs off; its old body stays STALE
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
my $key = fill_and_stale('/api/old');
fill_redis();
my $r = http_get('/api/old');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale: served at once');
is($r->{body}, "backend GET /api/old hit 1\n", 'the old body');
wait_log(qr/refused SET .* with OOM/, 10);
wait_until(sub { metric_z('stale_cache_refreshes_total', 'outcome="failed"') == 1 }, 10,
           'the refresh ended, counted failed');
--- request
GET /api/old
--- response_headers
X-Stale-Cache: STALE
--- response_body
backend GET /api/old hit 1
--- check
is(metric_z('stale_cache_refreshes_total', 'outcome="succeeded"'), 0, 'the refused refresh did not succeed');
is(metric_z('stale_cache_refreshes_skipped_total', 'reason="backoff"'), 1,
   'the next stale hit sent no refresh: the key backs off as after a failed refresh');
is(backend_hits('/api/old'), 2, 'the fill and the refused refresh');
my $ttl = redis('TTL', redis_key('/api/old'));
cmp_ok($ttl, '<=', 50, "the old copy keeps its old life (TTL $ttl, not renewed to 105)");
cmp_ok($ttl, '>', 0, 'and is still there');
like(redis('GET', redis_key('/api/old')), qr/hit 1/, 'Redis still holds the old body');
is(metric_z('stale_cache_requests_total', 'status="fresh"'), 0, 'never FRESH');
unfill_redis();
--- error_log
the refresh of "/api/old" was not stored (its store location answered 502): the stale copy stays as it was and the key's refreshes back off



=== TEST 4: a real replica (-READONLY): the store is refused, the fill is not stored, clients get the backend's answers
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
make_replica();
--- request eval
["GET /api/ro", "GET /api/ro", "GET /api/ro"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: PASS", "X-Stale-Cache: PASS"]
--- response_body eval
["backend GET /api/ro hit 1\n", "backend GET /api/ro hit 2\n", "backend GET /api/ro hit 3\n"]
--- backend_hits: 3
--- check
is(redis('EXISTS', redis_key('/api/ro')), 0, 'nothing on the replica');
is(resp_to($::MASTER_PORT, 'EXISTS', redis_key('/api/ro')), 0, 'nothing on the master');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
is(metric_z('stale_cache_fills_total', 'outcome="not_stored"'), 1, 'not stored');
is(refusals('/redis2', 'READONLY'), 1, 'one line for the three refused stores');
like(error_log_text(), qr/refused SET \(command 1 of 1\) of location "\/redis2" with READONLY: "READONLY You can't write against a read only replica\."/,
     'Redis\'s text');
end_replica();



=== TEST 5: -LOADING from every command: the layer fails open (ERROR), clients get the backend, one line per location and cause per 10 s with the count suppressed
--- http_config eval: $::HTTP
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'LOADING Redis is loading the dataset in memory');
--- request eval
[("GET /api/load") x 5]
--- response_headers
X-Stale-Cache: ERROR
X-Cache: MISS
--- response_body_like: ^backend GET /api/load hit \d$
--- backend_hits: 5
--- check
is(fake('FAKE.CALLS', 'SET'), 5, 'srcache tried each store');
is(fake('FAKE.CALLS', 'TTL'), 5, 'each lookup was tried');
is(refusals('/redisttl', 'LOADING'), 1, 'the TTL location: one line');
is(refusals('/redis', 'LOADING'), 1, 'the fetch location (value mode): one line');
is(refusals('/redis2', 'LOADING'), 1, 'the store location: one line');
like(error_log_text(), qr/refused TTL \(command 1 of 1\) of location "\/redisttl" with LOADING: "LOADING Redis is loading the dataset in memory"/,
     'the TTL line');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
# Ten seconds on, the next refusal is logged with the count of those suppressed meanwhile.
my ($first) = error_log_text() =~ /^(\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d) \[error\].*refused SET/m;
ok($first, 'the first store line');
sleep_ms(10_200);
my $r = http_get('/api/load');
is($r->{status}, 200, 'still the backend');
wait_log(qr/refused SET .* with LOADING: .*\(4 similar suppressed\)/);
is(refusals('/redis2', 'LOADING'), 2, 'a second line after 10 s, with the count');



=== TEST 6: -BUSY (a script running) from every command: backend answers, nothing stored, one line per location
--- http_config eval: $::HTTP
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.');
--- request eval
[("GET /api/busy") x 3]
--- response_headers
X-Stale-Cache: ERROR
--- response_body_like: ^backend GET /api/busy hit \d$
--- backend_hits: 3
--- check
is(refusals('/redis2', 'BUSY'), 1, 'the store location: one line');
is(refusals('/redisttl', 'BUSY'), 1, 'the TTL location: one line');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');



=== TEST 7: -MASTERDOWN (a replica that lost its master) on the store only: MISS, then PASS; nothing stored
--- http_config eval: $::HTTP
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', 'SET', "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.");
--- request eval
["GET /api/md", "GET /api/md"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: PASS"]
--- backend_hits: 2
--- check
is(fake('FAKE.CALLS', 'SET'), 2, 'both stores were tried');
is(fake('EXISTS', redis_key('/api/md')), 0, 'nothing stored');
is(metric_z('stale_cache_fills_total', 'outcome="not_stored"'), 1, 'the fill: not stored');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'none stored');
is(refusals('/redis2', 'MASTERDOWN'), 1, 'one line');



=== TEST 8: -NOSCRIPT from a store location that runs a cached script (EVALSHA): MISS, then PASS; nothing stored
--- http_config eval: $::HTTP
--- config eval
::config(redis => 'fake', store => 'stale_cache_role store; stale_cache_redis_command EVALSHA 0123456789abcdef0123456789abcdef01234567 1 $key $request_body $exptime;')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', 'EVALSHA', 'NOSCRIPT No matching script. Please use EVAL.');
--- request eval
["GET /api/ns", "GET /api/ns"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: PASS"]
--- backend_hits: 2
--- check
is(metric_z('stale_cache_fills_total', 'outcome="not_stored"'), 1, 'the fill: not stored');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'none stored');
like(error_log_text(), qr/refused EVALSHA \(command 1 of 1\) of location "\/redis2" with NOSCRIPT: "NOSCRIPT No matching script\. Please use EVAL\."/,
     'one line naming EVALSHA and NOSCRIPT');
is(refusals('/redis2', 'NOSCRIPT'), 1, 'once');



=== TEST 9: the fake server without failures: the same configuration stores and serves (the control of TESTs 5-8)
--- http_config eval: $::HTTP
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
--- request eval
["GET /api/ok", "GET /api/ok"]
--- response_headers eval
["X-Stale-Cache: MISS", "X-Stale-Cache: FRESH"]
--- response_body
backend GET /api/ok hit 1
--- backend_hits: 1
--- check
cmp_ok(fake('TTL', redis_key('/api/ok')), '>=', 100, 'stored with its expiry (SET ... EX)');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 1, 'the fill: stored');
--- no_error_log
[error]



=== TEST 10: Redis full (-OOM), cold misses, the local zone on (the default): 1 backend request, its waiters answered with its response from this node (LOCAL), nothing counted stored, one log line
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config()
--- pre
fill_redis();
--- request
GET /api/full-local
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 100
--- response_body
backend GET /api/full-local hit 1
--- check
my @r = responses();
my $n = statuses(@r);
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{LOCAL}, 99, 'the 99 waiters: its response, kept on this node') or diag(explain $n);
is(backend_hits('/api/full-local'), 1, 'one backend request for 100 clients');
is(redis('EXISTS', redis_key('/api/full-local')), 0, 'nothing in Redis');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
my $r = http_get('/api/full-local');
is($r->{headers}{'x-stale-cache'}, 'LOCAL', 'the next request: the local copy');
is(backend_hits('/api/full-local'), 1, 'still one backend request');
is(refusals('/redis2', 'OOM'), 1, 'the refused store: one line');
unfill_redis();
--- no_error_log
[alert]
[crit]



=== TEST 11: -LOADING (a restart loading its data) from every command, the local zone on (the default): Redis is away, one backend request for 20 concurrent clients, the others answered from this node (LOCAL)
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'LOADING Redis is loading the dataset in memory');
--- request
GET /api/load-local
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- response_body
backend GET /api/load-local hit 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{LOCAL}, 19, 'the 19 others: its response, kept on this node') or diag(explain $n);
is(backend_hits('/api/load-local'), 1, 'one backend request for 20 clients');
my $r = http_get('/api/load-local');
is($r->{headers}{'x-stale-cache'}, 'LOCAL', 'the next request: the local copy');
is(backend_hits('/api/load-local'), 1, 'still one backend request');
is(refusals('/redisttl', 'LOADING'), 1, 'the TTL location: one line');
is(metric_z('stale_cache_fills_total', 'outcome="stored"'), 0, 'no fill counted stored');
--- no_error_log
[alert]
[crit]



=== TEST 12: -BUSY (a script running) from every command, the default: one backend request for 20 concurrent clients (LOCAL)
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.');
--- request
GET /api/busy-local
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- response_body
backend GET /api/busy-local hit 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{LOCAL}, 19, 'the others: LOCAL') or diag(explain $n);
is(backend_hits('/api/busy-local'), 1, 'one backend request for 20 clients');
is(refusals('/redisttl', 'BUSY'), 1, 'the TTL location: one line');
--- no_error_log
[alert]
[crit]



=== TEST 13: -MASTERDOWN (a replica without its master, replica-serve-stale-data no) from every command, the default: one backend request for 20 concurrent clients (LOCAL)
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.");
--- request
GET /api/md-local
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- response_body
backend GET /api/md-local hit 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{LOCAL}, 19, 'the others: LOCAL') or diag(explain $n);
is(backend_hits('/api/md-local'), 1, 'one backend request for 20 clients');
is(refusals('/redisttl', 'MASTERDOWN'), 1, 'the TTL location: one line');
--- no_error_log
[alert]
[crit]



=== TEST 14: -WRONGTYPE from every command (a configuration mistake, not Redis away), the default: the layer still fails open (ERROR), every request to the backend, nothing kept on the node
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'WRONGTYPE Operation against a key holding the wrong kind of value');
--- request eval
[("GET /api/wrongtype") x 3]
--- response_headers
X-Stale-Cache: ERROR
--- response_body_like: ^backend GET /api/wrongtype hit \d$
--- backend_hits: 3
--- check
is(refusals('/redisttl', 'WRONGTYPE'), 1, 'the TTL location: one line');



=== TEST 15: -CLUSTERDOWN (a cluster during a failover, after the cluster locations' retries) from every command, the default: one backend request for 20 concurrent clients (LOCAL)
--- http_config eval: $::HTTP_LOCAL
--- config eval: ::config(redis => 'fake')
--- pre
start_fake();
fake('FAKE.RESET');
fake('FAKE.FAIL', '*', 'CLUSTERDOWN The cluster is down');
--- request
GET /api/cd-local
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- response_body
backend GET /api/cd-local hit 1
--- check
my $n = statuses(responses());
is($n->{MISS}, 1, 'one filler') or diag(explain $n);
is($n->{LOCAL}, 19, 'the others: LOCAL') or diag(explain $n);
is(backend_hits('/api/cd-local'), 1, 'one backend request for 20 clients');
is(refusals('/redisttl', 'CLUSTERDOWN'), 1, 'the TTL location: one line');
--- no_error_log
[alert]
[crit]



=== TEST 16: nginx -t warns of a store location that runs SET and then a separate EXPIRE (a refused SET lets the EXPIRE renew the old body), naming it; not of a location srcache does not store through, nor of one SET ... EX
--- http_config eval: $::HTTP
--- config eval
::config(store => 'pipeline') . <<'_EOC_'
    location = /notstore { internal; stale_cache_role off; stale_cache_redis_pass redis;
        stale_cache_redis_command SET k v; stale_cache_redis_command EXPIRE k 10; }
    location = /atomic { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command SET k v EX 10; }
_EOC_
--- request
GET /api/warned
--- response_body
backend GET /api/warned hit 1
--- check
my $t = nginx_t_output();
like($t, qr/test is successful/, 'nginx -t passes: a warning, not an error');
my @warn = grep { /\[warn\]/ } split /\n/, $t;
is(scalar(grep { /stale_cache: location "\/redis2" stores srcache's entries with SET and then a separate EXPIRE: when Redis refuses the SET \(e\.g\. -OOM when it is full\), the EXPIRE still renews the old body, which is then served as fresh again; store with one command: "stale_cache_redis_command SET key body EX ttl;"/ } @warn),
   1, 'one warning naming /redis2, the risk and the fix') or diag($t);
is(scalar @warn, 1, 'nothing of /notstore (not a store location) or /atomic (SET ... EX)') or diag($t);



=== TEST 17: nginx -t: the store location as nginx-conf/ ships it (one SET ... EX) is not warned of
--- http_config eval: $::HTTP
--- config eval: ::config(store => 'atomic')
--- request
GET /api/quiet
--- response_body
backend GET /api/quiet hit 1
--- check
like(nginx_t_output(), qr/test is successful/, 'nginx -t ran');
unlike(nginx_t_output(), qr/\[warn\]/, 'no warning');
