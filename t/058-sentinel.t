# Redis through Sentinel (issue 20): nginx-conf/redis-sentinel.conf as shipped (its server
# block, its "upstream redis" block with the Sentinel ports substituted and the group renamed,
# since the harness has its own "upstream redis"), against real processes: one primary, one
# replica and three Sentinels (down-after 1 s) on free loopback ports. The primary is killed
# with -9 under wrk -c32: no non-2xx, srcache hits again within 5 s, no -READONLY reaches
# Redis clients after the switch; one Sentinel down changes nothing; all Sentinels down: the
# last known master is used and one warning per 10 s is logged.
use lib 't/lib';
use Test::StaleCache;
use Time::HiRes qw(time);
use File::Path ();

our $ADMIN_PORT = pick_port();
our ($P1, $P2) = (pick_port(), pick_port());
our @S = map { pick_port() } 1 .. 3;
our %PID;
# The Redis and Sentinel processes live beside the harness's servroot (which is emptied when
# the file starts, after this setup).
our $ROOT = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '-sentinel';
File::Path::remove_tree($ROOT);
File::Path::make_path("$ROOT/logs");

sub rcli { my ($port, @args) = @_; my $out = `redis-cli -p $port @args 2>&1`; chomp $out; $out }

sub start_redis_node {
    my ($name, $port, @extra) = @_;
    mkdir "$ROOT/$name";
    $PID{$name} = Test::StaleCache::spawn("$ROOT/logs/$name.log", '/usr/bin/redis-server',
        '--port', $port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--dir', "$ROOT/$name", @extra);
    wait_until(sub { rcli($port, 'PING') eq 'PONG' }, 10, "$name up");
}

sub start_sentinel {
    my ($i) = @_;
    my $file = "$ROOT/sentinel$i.conf";
    unless (-e $file) {
        open my $fh, '>', $file or die "$file: $!";
        print $fh "port $S[$i]\nbind 127.0.0.1\ndir $ROOT\n"
            . "sentinel monitor mymaster 127.0.0.1 $P1 2\n"
            . "sentinel down-after-milliseconds mymaster 1000\n"
            . "sentinel failover-timeout mymaster 2000\n"
            . "sentinel parallel-syncs mymaster 1\n";
        close $fh;
    }
    $PID{"s$i"} = Test::StaleCache::spawn("$ROOT/logs/sentinel$i.log", '/usr/bin/redis-server',
        $file, '--sentinel');
    wait_until(sub { rcli($S[$i], 'PING') eq 'PONG' }, 10, "sentinel $i up");
}

sub stop { my $name = shift; Test::StaleCache::kill_wait(delete $PID{$name}, 'TERM', 5) }

END { local $?; Test::StaleCache::kill_wait($PID{$_}, 'KILL', 5) for keys %PID }

# The shipped file's upstream and server blocks, for the ports of this run.
sub shipped {
    my $text = Test::StaleCache::slurp('nginx-conf/redis-sentinel.conf') // die $!;
    my ($up) = $text =~ /^(    upstream redis \{\n.*?^    \}\n)/ms or die 'no upstream redis';
    my %port = (26379 => $S[0], 26380 => $S[1], 26381 => $S[2]);
    $up =~ s/127\.0\.0\.1:(2638[01]|26379)/127.0.0.1:$port{$1}/g == 3 or die 'three Sentinels';
    $up =~ s/upstream redis \{/upstream redis_sentinel {/;
    my ($server) = $text =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die 'no server';
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die 'no listen';
    $server =~ s/listen 127\.0\.0\.1:8099;/listen 127.0.0.1:$ADMIN_PORT;/ or die 'no admin';
    $server =~ s{http://www;}{http://backend;}g;
    $server =~ s/stale_cache_redis_pass redis;/stale_cache_redis_pass redis_sentinel;/g;
    my @maps = $text =~ /^(    map [^\n]*\{\n.*?^    \}\n)/msg;
    s/^(\s+)8099 /${1}$ADMIN_PORT /m for @maps;
    my $http = "    stale_cache_zone srcache_locks 1m;\n"
        . join('', map { "$_\n" } $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg)
        . join('', @maps) . $up;
    return ($http, $server);
}
our ($HTTP, $SERVER) = shipped();

sub admin_metrics {
    my $req = Test::StaleCache::build_request('GET /metrics');
    (Test::StaleCache::run_jobs([{ port => $ADMIN_PORT, reqs => [$req] }], 10))[0]{body} // '';
}

sub metric_value {
    my ($text, $re) = @_;
    my ($v) = $text =~ /^\Q$re\E (\d+)$/m;
    return $v // 0;
}

# A fill through Sentinel, then a hit from Redis.
sub fill_and_hit {
    my ($path) = @_;
    my $r = wait_until(sub { my $r = http_get($path); $r->{status} == 200 && ($r->{headers}{'x-store'} // '') eq 'STORE' && $r }, 10, "$path stored");
    wait_until(sub { (http_get($path)->{headers}{'x-cache'} // '') eq 'HIT' }, 5, "$path a hit");
}

sub setup {
    start_redis_node('primary', $P1);
    start_redis_node('replica', $P2, '--replicaof', '127.0.0.1', $P1);
    start_sentinel($_) for 0 .. 2;
    wait_until(sub { rcli($S[0], 'SENTINEL', 'replicas', 'mymaster') =~ /$P2/ }, 15, 'sentinel sees the replica');
}
setup();

run_tests();

__DATA__

=== TEST 1: through Sentinel: fills and hits on the master, its metrics, promtool
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- request
GET /api/warm
--- check
fill_and_hit('/api/a');
is(::rcli($::P1, 'EXISTS', redis_key('/api/a')), 1, 'stored on the primary');
# keepalive after the sentinel line keeps its pool: hits reuse connections (the only new ones
# are the workers' ROLE checks, about one per second each).
my $conns = sub { (::rcli($::P1, 'INFO', 'stats') =~ /total_connections_received:(\d+)/)[0] };
my $c0 = $conns->();
my $t0 = Time::HiRes::time();
http_get('/api/a') for 1 .. 50;
my $opened = $conns->() - $c0;
my $secs = Time::HiRes::time() - $t0;
ok($opened <= 4 + 4 * $secs, sprintf('50 hits opened %d Redis connection(s) in %.1f s', $opened, $secs));
my $m = ::admin_metrics();
ok(::metric_value($m, 'stale_cache_redis_sentinel_lookups_total{upstream="redis_sentinel",result="ok"}') >= 1, 'lookups counted');
is(::metric_value($m, 'stale_cache_redis_sentinel_failovers_total{upstream="redis_sentinel"}'), 0, 'no failover');
my $file = "$::ROOT/metrics.txt";
open my $fh, '>', $file or die $!; print $fh $m; close $fh;
my $out = `promtool check metrics < $file 2>&1`;
is($?, 0, 'promtool check metrics: exit 0');
is($out, '', 'promtool: no problems') or diag($out);
unlike(nginx_t_output(), qr/\[warn\]/, 'nginx -t: the shipped file warns of nothing');
--- no_error_log
[warn]
--- error_log
redis master "mymaster" of upstream "redis_sentinel" is 127.0.0.1:



=== TEST 2: one Sentinel down does not matter
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- request
GET /api/warm
--- check
::stop('s0');
fill_and_hit('/api/one-down');
sleep_ms(1500);
fill_and_hit('/api/one-down2');
::start_sentinel(0);
--- no_error_log
no Sentinel of upstream



=== TEST 3: kill -9 of the primary under wrk -c32: no non-2xx, hits again within 5 s, no -READONLY
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- timeout: 60
--- request
GET /api/warm
--- check
fill_and_hit('/api/hot');
wait_until(sub { ::rcli($::P2, 'EXISTS', redis_key('/api/hot')) eq '1' }, 5, 'replicated');
my $wrk = "$::ROOT/wrk.out";
my $wpid = Test::StaleCache::spawn($wrk, '/usr/bin/wrk', '-t2', '-c32', '-d10s',
    "http://127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT}/api/hot");
sleep_ms(1500);
my $killed = time;
my $ppid = delete $::PID{primary};
kill 'KILL', $ppid;
Test::StaleCache::wait_pid($ppid, 5);
# The first srcache hit after the kill.
my $back = wait_until(sub {
    my $r = http_get('/api/hot');
    ($r->{headers}{'x-cache'} // '') eq 'HIT' && ::rcli($::P2, 'ROLE') =~ /^master/ ? time : 0 }, 15, 'a hit after the failover');
my $after = $back - $killed;
ok($after <= 5, sprintf('hits from Redis again %.1f s after the kill', $after));
Test::StaleCache::wait_pid($wpid, 30);
my $w = Test::StaleCache::slurp($wrk) // '';
like($w, qr/requests in/, 'wrk ran') or diag($w);
unlike($w, qr/Non-2xx/, 'no non-2xx answer') or diag($w);
# While the master is gone the node collapses on its own (local zone): the fill before the
# kill, then one backend request for the key (two at most: one per worker at the edges).
my $hits = backend_hits('/api/hot');
cmp_ok($hits, '<=', 3, "backend requests for the key under wrk -c32 with the kill: $hits");
# The old primary comes back; Sentinel turns it into a replica. Stores keep going to the new
# master, and the old one never refuses a write (-READONLY).
::start_redis_node('primary', $::P1);
wait_until(sub { ::rcli($::P1, 'ROLE') =~ /^slave/ }, 15, 'the old primary is a replica now');
sleep_ms(1200);
for my $i (1 .. 20) { http_get("/api/after$i") }
is(::rcli($::P2, 'EXISTS', redis_key('/api/after20')), 1, 'stored on the new master');
my ($ro) = ::rcli($::P1, 'INFO', 'errorstats') =~ /errorstat_READONLY:count=(\d+)/;
is($ro // 0, 0, 'the demoted primary answered no -READONLY');
my $m = ::admin_metrics();
ok(::metric_value($m, 'stale_cache_redis_sentinel_failovers_total{upstream="redis_sentinel"}') >= 1, 'failover counted');
--- error_log eval
qr/is 127\.0\.0\.1:$::P2 \(was 127\.0\.0\.1:$::P1\)/



=== TEST 4: all Sentinels down: the last known master is used, one warning per 10 s
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- timeout: 30
--- request
GET /api/warm
--- check
fill_and_hit('/api/all1');
::stop("s$_") for 0 .. 2;
my $t0 = time;
fill_and_hit('/api/all2');
sleep_ms(3000);
fill_and_hit('/api/all3');
my $n = error_log_count(qr/no Sentinel of upstream "redis_sentinel" named a working master/);
ok($n >= 1 && $n <= 2, "warned $n time(s) in 3 s (one per 10 s per worker)");
like(error_log_text(), qr/keeping the last known master 127\.0\.0\.1:\d+/, 'says which master it keeps');



=== TEST 5: SENTINEL FAILOVER (the old master stays up, demoted): stores follow, the old one refuses nothing after the switch
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- timeout: 60
--- request
GET /api/warm
--- check
::start_sentinel($_) for grep { !$::PID{"s$_"} } 0 .. 2;
my ($m) = ::rcli($::S[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster') =~ /(\d+)\s*$/;
my ($old, $new) = $m == $::P1 ? ($::P1, $::P2) : ($::P2, $::P1);
wait_until(sub { ::rcli($new, 'INFO', 'replication') =~ /master_link_status:up/ }, 15, 'the replica is in sync');
# Kept-alive connections to the master, in both workers.
fill_and_hit("/api/m$_") for 1 .. 4;
my $ro0 = sub { my ($n) = ::rcli($old, 'INFO', 'errorstats') =~ /errorstat_READONLY:count=(\d+)/; $n // 0 };
is(::rcli($::S[1], 'SENTINEL', 'failover', 'mymaster'), 'OK', 'failover asked');
wait_until(sub { ::rcli($new, 'ROLE') =~ /^master/ && ::rcli($old, 'ROLE') =~ /^slave/ }, 15, 'roles swapped');
# Each worker follows within its interval (1 s) or at its first -READONLY.
sleep_ms(2500);
my $before = $ro0->();
for my $i (1 .. 30) { http_get("/api/after-switch$i") }
is($ro0->() - $before, 0, 'after the switch, no write reached the demoted master');
is(::rcli($new, 'EXISTS', redis_key('/api/after-switch30')), 1, 'stored on the new master');
--- error_log eval
qr/redis master "mymaster" of upstream "redis_sentinel" is 127\.0\.0\.1:\d+ \(was/



=== TEST 6: the sentinel line after keepalive is refused (keepalive would be lost)
--- http_config
    upstream rs { keepalive 8; stale_cache_redis_sentinel mymaster 127.0.0.1:1; }
--- config
    location /t { stale_cache_redis_pass rs; stale_cache_redis_command PING; }
--- must_die
--- error_log
must come before "keepalive"



=== TEST 7: no Sentinel address, an unknown parameter: refused, the password never echoed
--- http_config
    upstream rs { stale_cache_redis_sentinel mymaster passwd=s3cret; }
--- config
    location /t { stale_cache_redis_pass rs; stale_cache_redis_command PING; }
--- must_die
--- error_log
unknown parameter "passwd="
--- no_error_log
s3cret



=== TEST 8: a -READONLY makes the worker look again at once (interval 60 s: nothing else would)
--- http_config eval: my $h = $::HTTP; $h =~ s/(stale_cache_redis_sentinel mymaster [^;]*);/$1 interval=60s;/ or die; $h
--- config eval: $::SERVER
--- timeout: 60
--- request
GET /api/warm
--- check
my ($m) = ::rcli($::S[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster') =~ /(\d+)\s*$/;
my ($old, $new) = $m == $::P1 ? ($::P1, $::P2) : ($::P2, $::P1);
wait_until(sub { ::rcli($new, 'INFO', 'replication') =~ /master_link_status:up/ }, 15, 'the replica is in sync');
fill_and_hit('/api/ro0');
my $ro = sub { my ($n) = ::rcli($old, 'INFO', 'errorstats') =~ /errorstat_READONLY:count=(\d+)/; $n // 0 };
my $ro_before = $ro->();
is(::rcli($::S[1], 'SENTINEL', 'failover', 'mymaster'), 'OK', 'failover asked');
wait_until(sub { ::rcli($new, 'ROLE') =~ /^master/ && ::rcli($old, 'ROLE') =~ /^slave/ }, 15, 'roles swapped');
# Sentinels have announced the new master; the workers learned nothing yet (interval 60 s).
wait_until(sub { ::rcli($::S[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster') =~ /\b$new\b/ }, 15, 'sentinels know');
my $i = 0;
wait_until(sub { $i++; http_get("/api/ro$i"); ::rcli($new, 'EXISTS', redis_key("/api/ro$i")) eq '1' }, 10, 'a store reaches the new master');
my $refused = $ro->() - $ro_before;
ok($refused <= 4, "-READONLY answers before the workers switched: $refused (at most a few per worker)");
diag("stores until one reached the new master: $i, -READONLY: $refused");
my $after = $ro->();
for my $j (1 .. 20) { http_get("/api/ro-after$j") }
is($ro->() - $after, 0, 'none after');



=== TEST 9: a stale key and a cold miss during the failover (kill -9 of the primary): one backend request per key on this node, 0 non-2xx
--- http_config eval: $::HTTP
--- config eval: $::SERVER
--- timeout: 90
--- request
GET /api/warm
--- check
::start_sentinel($_) for grep { !$::PID{"s$_"} } 0 .. 2;
my ($m) = ::rcli($::S[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster') =~ /(\d+)\s*$/;
my ($old, $new) = $m == $::P1 ? ($::P1, $::P2) : ($::P2, $::P1);
my $victim = $old == $::P1 ? 'primary' : 'replica';
wait_until(sub { ::rcli($new, 'INFO', 'replication') =~ /master_link_status:up/ }, 15, 'the replica is in sync');
# The stale key: stored, then in its stale window (EXPIRE 50 of 105), replicated as such.
fill_and_hit('/api/fo-stale');
my $key = redis_key('/api/fo-stale');
is(::rcli($old, 'EXPIRE', $key, 50), 1, 'EXPIRE 50: stale');
wait_until(sub { my $t = ::rcli($new, 'TTL', $key); $t > 0 && $t <= 50 }, 5, 'the stale TTL replicated');
my $hits0 = backend_hits('/api/fo-stale');
my $t0 = time;
kill 'KILL', delete $::PID{$victim};
# Waves of 8 + 8 concurrent requests for the two keys while the Sentinels switch, and 2 s
# after they named the new master (the workers follow within their 1 s interval).
my ($named, @all);
while (time - $t0 < 20 * time_scale()) {
    my $hdr = { 'X-Backend-Delay' => '0.3' };
    my @jobs = map { { port => $ENV{TEST_NGINX_SERVER_PORT}, reqs => [Test::StaleCache::build_request("GET $_", $hdr)] } }
        (('/api/fo-stale') x 8, ('/api/fo-cold') x 8);
    push @all, Test::StaleCache::run_jobs(\@jobs, 10 * time_scale());
    $named //= time if ::rcli($::S[0], 'SENTINEL', 'get-master-addr-by-name', 'mymaster') =~ /\b$new\b/;
    last if $named && time - $named > 2;
    sleep_ms(200);
}
ok($named, sprintf('the Sentinels named the new master %.1f s after the kill', ($named // 0) - $t0));
my @bad = grep { ($_->{status} // 0) != 200 } @all;
is(scalar(@bad), 0, scalar(@all) . ' requests during the switch, 0 non-2xx') or diag(explain $bad[0]);
my $n = statuses(@all);
diag('statuses during the switch: ' . join ', ', map { "$_ $n->{$_}" } sort keys %$n);
is(backend_hits('/api/fo-stale') - $hits0, 1, 'the stale key: one backend request on this node');
is(backend_hits('/api/fo-cold'), 1, 'the cold key: one backend request on this node');
# The old master comes back as a replica (for the blocks after this one).
::start_redis_node($victim, $old);
wait_until(sub { ::rcli($old, 'ROLE') =~ /^slave/ }, 15, 'the old master is a replica now');
