# Redis failing under the native locations: a Redis that trickles its reply ends at the one
# deadline (connect + read timeout), not per read; a Redis outage under load logs about one
# line per second per worker, because $stale_cache_redis_down makes srcache skip its fetch
# and store subrequests while the Redis locations are in backoff.
use lib 't/lib';
use Test::StaleCache;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);

our $TRICKLE_PID;
our $TRICKLE_PORT;

# A server on a free port that reads a request, then sends $reply one byte every $every_ms
# (a fresh copy per connection), for trickling-reply tests.
sub trickle_server {
    my ($reply, $every_ms) = @_;
    stop_trickle();
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $TRICKLE_PORT,
                                  Listen => 128, ReuseAddr => 1)
        or die "trickle listen on $TRICKLE_PORT: $!\n";
    my $parent = $$;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP ALRM);
        $SIG{CHLD} = 'IGNORE';
        alarm 120;
        while (getppid() == $parent) {
            my $c = $l->accept or next;
            next if fork;    # one process per connection, so several trickle at once
            close $l;
            my $buf;
            sysread $c, $buf, 65536;
            for my $byte (split //, $reply) {
                last unless syswrite $c, $byte;
                select undef, undef, undef, $every_ms / 1000;
            }
            POSIX::_exit(0);
        }
        POSIX::_exit(0);
    }
    close $l;
    $TRICKLE_PID = $pid;
    return $TRICKLE_PORT;
}

sub stop_trickle {
    return unless $TRICKLE_PID;
    kill 'TERM', $TRICKLE_PID;
    waitpid $TRICKLE_PID, 0;
    undef $TRICKLE_PID;
}
END { stop_trickle() }

$TRICKLE_PORT = $ENV{TEST_NGINX_TRICKLE_PORT} = pick_port();
run_tests();

__DATA__

=== TEST 1: value mode, the value trickles in (1 byte / 100 ms): cut off at the deadline
--- pre
trickle_server("\$40\r\n" . ('v' x 40) . "\r\n", 100);
--- config
location = /get {
    stale_cache_redis_pass 127.0.0.1:$TEST_NGINX_TRICKLE_PORT;
    stale_cache_redis_connect_timeout 100ms;
    stale_cache_redis_read_timeout 1s;
    stale_cache_redis_command GET k;
}
--- request
GET /get
--- ignore_response
--- timeout: 10
--- check
my ($r) = responses();
# The head arrives after 0.5 s, then nginx would wait up to 1 s per byte of the value: 4.7 s
# in all. The deadline is 100 ms + 1 s after the start.
cmp_ok($r->{elapsed}, '>=', 0.9, "not ended before the read timeout ($r->{elapsed} s)");
cmp_ok($r->{elapsed}, '<', 2.5, "ended at the deadline, not per read ($r->{elapsed} s)");
isnt($r->{body}, 'v' x 40, 'the value was cut off, not completed');
stop_trickle();
--- error_log
sent no complete reply within 1100 ms

=== TEST 2: raw mode, the reply trickles in after its head: cut off at the deadline
--- pre
# Raw mode answers once every reply's first line is in (its status says whether a command
# failed); the bulk payload after the head streams, and the deadline cuts it.
trickle_server("\$40\r\n" . ('1' x 40) . "\r\n", 100);
--- config
location = /ttl {
    stale_cache_redis_pass 127.0.0.1:$TEST_NGINX_TRICKLE_PORT;
    stale_cache_redis_connect_timeout 100ms;
    stale_cache_redis_read_timeout 1s;
    stale_cache_redis_command GET k;
    stale_cache_redis_reply raw;
}
--- request
GET /ttl
--- ignore_response
--- timeout: 10
--- check
my ($r) = responses();
# Per read, the 47 bytes would take 4.7 s; the deadline is 100 ms + 1 s after the start.
cmp_ok($r->{elapsed}, '>=', 0.9, "not ended before the read timeout ($r->{elapsed} s)");
cmp_ok($r->{elapsed}, '<', 2.5, "ended at the deadline, not per read ($r->{elapsed} s)");
unlike($r->{body} // '', qr/\r\n\z/, 'the reply was cut off, not completed');
stop_trickle();
--- error_log
sent no complete reply within 1100 ms

=== TEST 3: raw mode, a one-line reply trickles in: nginx's header timeout (read timeout in all) ends it with 504
--- pre
trickle_server(":" . ('1' x 40) . "\r\n", 100);
--- config
location = /ttl {
    stale_cache_redis_pass 127.0.0.1:$TEST_NGINX_TRICKLE_PORT;
    stale_cache_redis_connect_timeout 100ms;
    stale_cache_redis_read_timeout 1s;
    stale_cache_redis_command TTL k;
}
--- request
GET /ttl
--- error_code: 504
--- timeout: 10
--- check
my ($r) = responses();
# Per read, the 43 bytes would take 4.3 s; nginx waits read_timeout in all for a header.
cmp_ok($r->{elapsed}, '>=', 0.9, "not ended before the read timeout ($r->{elapsed} s)");
cmp_ok($r->{elapsed}, '<', 2.5, "ended at the read timeout, not per read ($r->{elapsed} s)");
unlike($r->{body} // '', qr/:1111/, 'no part of the reply was passed on');
stop_trickle();
--- error_log
upstream timed out

=== TEST 4: Redis stopped for 2 s under load, stock configuration, local zone off: all 200, about one line per second per worker
--- workers: 2
--- log_level: notice
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_local_zone off;
    stale_cache_redis_variable $escaped_key $cache_key escape;
    stale_cache_redis_variable $redis_key $arg_key unescape md5;
    stale_cache_redis_variable $redis_fetch_key $args md5;
--- config
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_persist /redispersist;
        set $cache_key "$http_user_agent|$uri";
        stale_cache on;
        srcache_fetch_skip $stale_cache_redis_down;
        srcache_store_skip $stale_cache_redis_down;
        if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /redis $cache_key;}
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Store $srcache_store_status;
        add_header X-Redis-Down $stale_cache_redis_down;
        proxy_pass http://backend;
    }
    location = /redisttl { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command TTL $redis_key; }
    location = /redispersist { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command PERSIST $redis_key; }
    location = /redis { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command GET $redis_fetch_key; }
    location = /redis2 { internal; client_max_body_size 16m; stale_cache_redis_pass redis;
        stale_cache_redis_command SET $redis_key $request_body;
        stale_cache_redis_command EXPIRE $redis_key $arg_exptime; }
--- request
GET /api/fill
--- wait_for
redis('TTL', redis_key('/api/fill')) > 100
--- check
stop_redis();
my $from = time;
my (%status, $down_seen, $n);
while (time < $from + 2) {
    my $r = http_get('/api/o' . ($n++ % 4));
    $status{$r->{status} // 'none'}++;
    $down_seen++ if ($r->{headers}{'x-redis-down'} // '') eq '1';
}
my $outage = time - $from;
my @lines = grep { /\[(warn|error|crit|alert|emerg)\]/ } split /\n/, error_log_text();
diag(scalar(@lines) . " error lines for $n requests in $outage s of outage");
is_deeply(\%status, { 200 => $n }, "every request during the outage answered 200 ($n)");
ok($down_seen, "\$stale_cache_redis_down was 1 during the outage ($down_seen responses)");
# 2 workers, at most 2 lines per second each, plus the lines of the requests in flight when
# Redis went away.
cmp_ok(scalar(@lines), '<=', 2 * 2 * 2 + 2, 'error lines during the outage')
    or diag(join "\n", @lines[0 .. ($#lines < 20 ? $#lines : 20)]);
start_redis();
# Recovery: once the backoff has run out, a request stores again.
wait_until(sub { (http_get('/api/after')->{headers}{'x-store'} // '') eq 'STORE' }, 5,
           'a store after Redis came back');
