# Redis Cluster: a node answering -TRYAGAIN (a multi-key command while its slot migrates) or
# -CLUSTERDOWN is asked again, after a pause of 10, 20, then 40 ms that a timer on the request
# makes (Redis itself is never asked to wait: no WAIT is sent); after 3 refused retries the
# request fails open like any Redis error (the backend answers). t/lib/fake_redis.py plays a
# one-node cluster (CLUSTER SLOTS: every slot on itself) that refuses GET as told.
use lib 't/lib';
use Test::StaleCache;

our $FAKE_PORT = $ENV{TEST_NGINX_FAKE_PORT} = pick_port();
our $FAKE_PID;

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    stale_cache_local_zone off;
    upstream fake_cluster {
        server 127.0.0.1:$TEST_NGINX_FAKE_PORT;
        stale_cache_redis_cluster;
        keepalive 16;
    }
_EOC_

# The documented setup with every Redis location on the fake cluster.
sub config {
    my $c = base_config();
    $c =~ s/stale_cache_redis_pass redis;/stale_cache_redis_pass fake_cluster;/g or die "no redis pass\n";
    return $c;
}

sub fake { Test::StaleCache::resp_to($FAKE_PORT, @_) }

sub start_fake {
    return if $FAKE_PID && kill 0, $FAKE_PID;
    $FAKE_PID = Test::StaleCache::spawn_fake_redis($FAKE_PORT);
    fake('FAKE.RESET');
}

END {
    local $?;    # waitpid sets it; the file's exit status must stay the tests'
    if ($FAKE_PID) { kill 'TERM', $FAKE_PID; waitpid $FAKE_PID, 0 }
}

run_tests();

__DATA__

=== TEST 1: -TRYAGAIN twice, then the value: asked again after 10 and 20 ms (a timer, no WAIT), and the entry is served from Redis
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
start_fake();
--- request
GET /api/ta
--- response_body
backend GET /api/ta hit 1
--- check
wait_until(sub { fake('EXISTS', redis_key('/api/ta')) }, 5, 'stored in the fake cluster');
my $gets = fake('FAKE.CALLS', 'GET');
fake('FAKE.FAIL', 'GET', 'TRYAGAIN Multiple keys request during rehashing of slot', 2);
my $r = http_get('/api/ta');
is($r->{status}, 200, 'status 200');
is($r->{body}, "backend GET /api/ta hit 1\n", 'the stored body');
is($r->{headers}{'x-cache'}, 'HIT', 'served from Redis (srcache HIT)');
is(backend_hits('/api/ta'), 1, 'no second backend request');
is(fake('FAKE.CALLS', 'GET') - $gets, 3, 'GET sent 3 times: refused twice, then answered');
is(fake('FAKE.CALLS', 'WAIT'), 0, 'Redis was never asked to wait');
my @gaps = split / /, fake('FAKE.GAPS', 'GET');
my @last = @gaps[-2, -1];
cmp_ok($last[0], '>=', 9, "the first retry came after a pause ($last[0] ms)");
cmp_ok($last[1], '>=', 19, "the second after a longer one ($last[1] ms)");
--- no_error_log
[alert]
[crit]



=== TEST 2: -TRYAGAIN on every try: 3 retries, then the request fails open (the backend answers)
--- http_config eval: $::HTTP
--- config eval: ::config()
--- pre
start_fake();
fake('FAKE.RESET');
--- request
GET /api/tb
--- response_body
backend GET /api/tb hit 1
--- check
wait_until(sub { fake('EXISTS', redis_key('/api/tb')) }, 5, 'stored in the fake cluster');
my $gets = fake('FAKE.CALLS', 'GET');
fake('FAKE.FAIL', 'GET', 'TRYAGAIN Multiple keys request during rehashing of slot');
my $r = http_get('/api/tb');
is($r->{status}, 200, 'status 200');
is($r->{body}, "backend GET /api/tb hit 2\n", 'the backend answered (fail open)');
isnt($r->{headers}{'x-cache'}, 'HIT', 'not a hit');
is(fake('FAKE.CALLS', 'GET') - $gets, 4, 'GET sent 4 times: the first try and 3 retries');
is(fake('FAKE.CALLS', 'WAIT'), 0, 'Redis was never asked to wait');
--- no_error_log
[alert]
[crit]
