# Redis Sentinel with credentials: a Redis whose ACL user "alice" has a password, a Sentinel
# with its own password. The balancer's lookups authenticate (sentinel_password=, user=,
# password=), the location authenticates with its own AUTH command, and no password appears
# in the error log (at debug level), even when a password is wrong.
use lib 't/lib';
use Test::StaleCache;
use File::Path ();

our $P = pick_port();
our $S = pick_port();
our %PID;
our $ROOT = ($ENV{TEST_NGINX_SERVROOT} || 't/servroot') . '-sentinel-auth';
File::Path::remove_tree($ROOT);
File::Path::make_path("$ROOT/logs", "$ROOT/redis");

sub rcli { my ($port, @args) = @_; my $out = `redis-cli -p $port @args 2>/dev/null`; chomp $out; $out }

$PID{redis} = Test::StaleCache::spawn("$ROOT/logs/redis.log", '/usr/bin/redis-server',
    '--port', $P, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', "$ROOT/redis",
    '--user', 'default', 'off', '--user', 'alice', 'on', '>alice-Secret-1', '~*', '&*', '+@all');
wait_until(sub { rcli($P, '--user', 'alice', '--pass', 'alice-Secret-1', 'PING') eq 'PONG' }, 10, 'redis up');
open my $fh, '>', "$ROOT/sentinel.conf" or die $!;
print $fh "port $S\nbind 127.0.0.1\ndir $ROOT\nrequirepass sentinel-Secret-2\n"
    . "sentinel monitor mymaster 127.0.0.1 $P 1\n"
    . "sentinel auth-user mymaster alice\nsentinel auth-pass mymaster alice-Secret-1\n";
close $fh;
$PID{sentinel} = Test::StaleCache::spawn("$ROOT/logs/sentinel.log", '/usr/bin/redis-server',
    "$ROOT/sentinel.conf", '--sentinel');
wait_until(sub { rcli($S, '-a', 'sentinel-Secret-2', 'PING') eq 'PONG' }, 10, 'sentinel up');
rcli($P, '--user', 'alice', '--pass', 'alice-Secret-1', 'SET', 'k', 'the-value');

END { local $?; Test::StaleCache::kill_wait($PID{$_}, 'KILL', 5) for keys %PID }

sub upstream {
    my ($sentinel_pw, $redis_pw) = @_;
    return <<"_EOC_";
    upstream rs {
        stale_cache_redis_sentinel mymaster 127.0.0.1:$S sentinel_password=$sentinel_pw
                                   user=alice password=$redis_pw;
        keepalive 8;
    }
_EOC_
}

our $LOCATION = <<'_EOC_';
    location = /get {
        stale_cache_redis_pass rs;
        stale_cache_redis_command AUTH alice alice-Secret-1;
        stale_cache_redis_command GET k;
        stale_cache_redis_reply value;
    }
_EOC_

run_tests();

__DATA__

=== TEST 1: the right passwords: the master is found and used
--- http_config eval: ::upstream('sentinel-Secret-2', 'alice-Secret-1')
--- config eval: $::LOCATION
--- request
GET /get
--- wait_for
(http_get('/get')->{body} // '') eq 'the-value'
--- check
is(http_get('/get')->{body}, 'the-value', 'GET through the Sentinel-found master, with AUTH');
--- error_log eval
qr/redis master "mymaster" of upstream "rs" is 127\.0\.0\.1:$::P/
--- no_error_log
Secret



=== TEST 2: a wrong Sentinel password: refused, said once per 10 s, the password never logged
--- http_config eval: ::upstream('wrong-Secret-3', 'alice-Secret-1')
--- config eval: $::LOCATION
--- request
GET /get
--- error_code: 502
--- wait_for
error_log_count(qr/AUTH refused/) >= 1
--- error_log eval
qr/no Sentinel of upstream "rs" named a working master "mymaster" \(sentinel 127\.0\.0\.1:\d+: AUTH refused: [^)]*\); no master known yet/
--- no_error_log
Secret



=== TEST 3: a wrong Redis password: ROLE is not confirmed, the password never logged
--- http_config eval: ::upstream('sentinel-Secret-2', 'wrong-Secret-4')
--- config eval: $::LOCATION
--- request
GET /get
--- error_code: 502
--- wait_for
error_log_count(qr/named by a sentinel: AUTH refused/) >= 1
--- no_error_log
Secret



=== TEST 4: a graceful shutdown while a lookup hangs (a Sentinel that accepts and never answers): the worker waits for it, no open socket left
--- http_config
    upstream rs {
        stale_cache_redis_sentinel mymaster 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=300ms;
        keepalive 8;
    }
--- config eval: $::LOCATION
--- request
GET /get
--- error_code: 502
--- check
Test::StaleCache::fake_redis_blackhole();
# Lookups now hang until their deadline. Quit while one is connected to the blackhole.
my ($master, @workers) = nginx_pids();
my $in_flight = sub {
    my $out = `ss -tnpH state established dst 127.0.0.1:$TEST_NGINX_REDIS_PORT 2>/dev/null`;
    grep { $out =~ /pid=$_,/ } @workers;
};
wait_until($in_flight, 10, 'a worker waiting for the Sentinel');
kill 'QUIT', $master;
ok(defined Test::StaleCache::wait_pid($master, 10), 'nginx exited');
unlike(error_log_text(), qr/open socket #\d+ left in connection/, 'no socket left open');
Test::StaleCache::close_blackhole();



=== TEST 5: a server line after the sentinel line is refused
--- http_config
    upstream rs { stale_cache_redis_sentinel mymaster 127.0.0.1:1; server 127.0.0.1:2; }
--- config
    location /t { stale_cache_redis_pass rs; stale_cache_redis_command PING; }
--- must_die
--- error_log
remove the "server" lines of its upstream block



=== TEST 6: a server line before the sentinel line is refused
--- http_config
    upstream rs { server 127.0.0.1:2; stale_cache_redis_sentinel mymaster 127.0.0.1:1; }
--- config
    location /t { stale_cache_redis_pass rs; stale_cache_redis_command PING; }
--- must_die
--- error_log
remove the "server" lines of its upstream block
