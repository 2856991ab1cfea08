# Self-test of the test harness (t/lib/Test/StaleCache.pm); uses only the
# stock echo / srcache / set-misc modules, never the stale cache module.
use lib 't/lib';
use Test::StaleCache;

run_tests();

__DATA__

=== TEST 1: plain echo
--- config
    location /t { echo hello; }
--- request
GET /t
--- response_body
hello
--- error_code: 200



=== TEST 2: request eval sequence, per-request expectations
--- config
    location /a { echo "a $arg_x"; }
    location /b { return 404; }
--- request eval
["GET /a?x=1", "GET /a?x=2", "GET /b"]
--- response_body eval
["a 1\n", "a 2\n", undef]
--- error_code eval
[200, 200, 404]



=== TEST 3: request body and more_headers; substituted port variable
--- config
    location /t {
        echo_read_request_body;
        echo "body=$request_body h=$http_x_foo port=$TEST_NGINX_SERVER_PORT";
    }
--- request
POST /t
hello world
--- more_headers
X-Foo: bar
--- response_body
body=hello world h=bar port=$TEST_NGINX_SERVER_PORT



=== TEST 4: 50 concurrent proxied requests with 0.2 s backend delay
--- log_level: info
--- config
    location /slow {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://backend;
    }
--- request
GET /slow
--- more_headers
X-Backend-Delay: 0.2
--- concurrency: 50
--- response_body_like: ^backend GET /slow hit \d+$
--- response_headers
Content-Type: text/plain
--- backend_hits: 50
--- check
my @r = responses();
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 50, 'got 50 responses with status 200');
my ($max) = sort { $b <=> $a } map { $_->{end} } @r;
cmp_ok($max, '<', 2, "all finished in < 2 s (slowest $max)");
cmp_ok($max, '>=', 0.2, 'backend delay applied');
my %n = map { $_->{headers}{'x-backend-hit'} => 1 } @r;
is(scalar keys %n, 50, 'every hit counted once');



=== TEST 5: redis_setup and redis_check (text, eval, binary)
--- redis_setup
SET foo bar
SETEX k 50 v
RPUSH l "a b" c
SET bin "\x00\xff\r\n"
DEL nothing
--- redis_check
GET foo => bar
TTL k => 45..50
GET k =~ /^v$/
EXISTS nothing => 0
GET nothing => (nil)
LRANGE l 0 -1 => [a b, c]
STRLEN bin => 4
--- check
is(redis('GET', 'bin'), "\x00\xff\r\n", 'binary value');
is(redis('INCR', 'cnt'), 1, 'integer reply');
ok(!eval { redis('INCR', 'foo'); 1 }, 'error reply dies');
like($@, qr/not an integer/, 'error message');



=== TEST 6: redis_setup eval is binary safe
--- redis_setup eval
[["SET", "k\0x", join('', map { chr } 0 .. 255)], ["SET", "n", 5]]
--- redis_check eval
[[["STRLEN", "k\0x"], 256], [["GET", "n"], qr/^5$/]]



=== TEST 7: backend header control: status, body, binary, large body
--- config
    location / {
        proxy_pass http://backend;
    }
--- request eval
["GET /s", "GET /b", "GET /bin", "GET /big?x=1"]
--- more_headers eval
["X-Backend-Status: 503", "X-Backend-Body: fixed text", "X-Backend-Body-Binary: 1",
 "X-Backend-Body-Size: 2097152"]
--- error_code eval
[503, 200, 200, 200]
--- response_body eval
["backend GET /s hit 1\n", "fixed text", join('', map { chr } 0 .. 255),
 backend_pattern(2097152)]
--- response_headers eval
["X-Backend-Hit: 1", "Content-Type: text/plain", "!X-Nope", "Content-Length: 2097152"]
--- backend_hits eval
{ '/s' => 1, '/b' => 1, '/big' => 1, '/big?x=1' => 1, '/big?x=2' => 0 }
--- check
my ($l) = backend_log('/big');
is($l->{path}, '/big?x=1', 'log path with query');
is($l->{headers}{'x-backend-body-size'}, '2097152', 'log headers');
is($l->{method}, 'GET', 'log method');



=== TEST 8: backend control API (per-path config), request body reaches backend
--- config
    location / {
        proxy_set_header Host example.com;
        proxy_pass http://backend;
    }
--- pre
backend_config('/cfg', status => 201, body => 'configured', header => ['Cache-Control: max-age=7']);
--- request eval
["GET /cfg", "PUT /put\npayload\x01"]
--- error_code eval
[201, 200]
--- response_body eval
["configured", "backend PUT /put hit 1\n"]
--- response_headers eval
["Cache-Control: max-age=7", "X-Backend-Hit: 1"]
--- check
my ($l) = backend_log('/put');
is($l->{body}, "payload\x01", 'request body recorded');
is($l->{headers}{host}, 'example.com', 'Host recorded');
is(backend_hits('/cfg'), 1, 'hits per path');
is(backend_hits(), 2, 'total hits');



=== TEST 9: keepalive_requests: one connection, second request not delayed
--- config
    location /slow { echo_sleep 0.3; echo slow; }
    location /fast { echo "fast $connection_requests"; }
--- keepalive_requests eval
["GET /slow", "GET /fast", "GET /fast"]
--- response_body eval
["slow\n", "fast 2\n", "fast 3\n"]
--- check
my @r = responses();
cmp_ok($r[0]{elapsed}, '>=', 0.29, 'first request delayed');
cmp_ok($r[1]{elapsed}, '<', 0.2, 'second request on same connection is fast');
cmp_ok($r[2]{start}, '>=', $r[1]{end} - 0.001, 'sequential on the connection');



=== TEST 10: must_die with a bad directive argument
--- config
    location /t { keepalive_timeout abc; }
--- must_die
--- error_log
"keepalive_timeout" directive invalid value



=== TEST 11: must_die with an unknown directive, regex error_log
--- config
    location /t {
        no_such_directive_here on;
    }
--- must_die
--- error_log eval
qr/unknown directive "no_such_directive_here"/



=== TEST 12: error_log / no_error_log on a running server
--- log_level: info
--- config
    location /t {
        return 200 "ok\n";
    }
    location /missing { root html; }
--- request eval
["GET /t", "GET /missing/file"]
--- error_code eval
[200, 404]
--- error_log
open()
No such file or directory
--- no_error_log
[crit]
[warn]



=== TEST 13: error_log eval with regexes and strings
--- log_level: info
--- config
    location /missing { root html; }
--- request
GET /missing/file
--- error_code: 404
--- error_log eval
[qr{/missing/file" failed}, "No such file"]
--- no_error_log eval
qr/\[(crit|warn)\]/



=== TEST 14: timeout is reported, stop_redis / start_redis / blackhole
--- config
    location /t { echo_sleep 2; echo late; }
--- timeout: 0.5
--- request
GET /t
--- ignore_response
--- check
my @r = responses();
like($r[0]{error}, qr/timeout after 0.5s/, 'client timeout reported');
stop_redis();
ok(!eval { redis('PING'); 1 }, 'redis down');
start_redis();
is(redis('PING'), 'PONG', 'redis back');
fake_redis_blackhole();
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$TEST_NGINX_REDIS_PORT", Timeout => 1);
ok($s, 'blackhole accepts');
print $s "PING\r\n";
my $sel = IO::Select->new($s);
ok(!$sel->can_read(0.3), 'blackhole never answers');
my @p = nginx_pids();
is(scalar @p, 2, 'master + 1 worker');
my $r = http_get('/t', { 'X-A' => 1 });
ok(!$r->{error} || $r->{error} =~ /timeout/, 'http_get works');



=== TEST 15: redis is restored after a blackhole block; workers: 2
--- workers: 2
--- redis_setup
SET a 1
--- redis_check
GET a => 1
--- check
is(scalar(my @p = nginx_pids()), 3, 'master + 2 workers');
my $r = http_get('/nothing');
is($r->{status}, 404, 'http_get status');



=== TEST 16: user_files, html dir and response_headers_like
--- user_files
>>> index.html
<p>static</p>
--- config
    location / { }
--- request
GET /index.html
--- response_body
<p>static</p>
--- response_headers_like
Content-Type: ^text/html
Last-Modified: GMT$



=== TEST 17: wait_for / wait_until: polls for a condition, names it at the deadline
--- pre
# something that happens a while after the requests: a child sets a Redis key
my $pid = fork // die "fork: $!";
if (!$pid) { Time::HiRes::sleep(0.3); redis('SET', 'late', 'yes'); POSIX::_exit(0) }
$main::child = $pid;
--- wait_for
redis('GET', 'late')
--- check
is(redis('GET', 'late'), 'yes', 'wait_for returned once the key was there');
waitpid($main::child, 0);
my $t0 = Time::HiRes::time();
is(wait_until(sub { 42 }, 1, 'an immediate value'), 42, 'wait_until returns the value');
cmp_ok(Time::HiRes::time() - $t0, '<', 0.5, 'without sleeping first');
my @failed;
{
    no warnings 'redefine';
    local *Test::More::fail = sub { push @failed, $_[0]; 0 };
    $t0 = Time::HiRes::time();
    ok(!wait_until(sub { 0 }, 0.2, 'the impossible'), 'false at the deadline');
    ok(!wait_log(qr/no such line/, 0.1), 'wait_log false at the deadline');
}
cmp_ok(Time::HiRes::time() - $t0, '>=', 0.3, 'it waited for both deadlines');
like($failed[0] // '', qr/waited 0\.2s for the impossible/, 'the failure names what it waited for');
like($failed[1] // '', qr/waited 0\.1s for an error\.log line matching .*no such line/,
     'wait_log names the pattern');
