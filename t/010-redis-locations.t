# Native Redis locations (stale_cache_redis_*): srcache fetch/store through them,
# value/raw reply modes, binary safety, keepalive, outages and directive errors.
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

# The srcache setup users have (native replacements of HttpRedis / redis2).
our $API = <<'EOF';
    location /api {
        set $key "$uri";
        set_escape_uri $escaped_key $key;
        srcache_fetch GET /redis $key;
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Cache $srcache_fetch_status;
        add_header X-Store $srcache_store_status;
        proxy_pass http://backend;
    }
    location = /redisttl {
        internal;
        set_unescape_uri $key $arg_key;
        set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command TTL $key;
    }
    location = /redispersist {
        internal;
        set_unescape_uri $key $arg_key;
        set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command PERSIST $key;
    }
    location = /redis {
        internal;
        set_md5 $redis_key $args;
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET $redis_key;
        stale_cache_redis_reply value;
    }
    location = /redis2 {
        internal;
        set_unescape_uri $exptime $arg_exptime;
        set_unescape_uri $key $arg_key;
        set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command SET $key $request_body;
        stale_cache_redis_command EXPIRE $key $exptime;
    }
EOF

sub redis_info_field {
    my ($section, $field) = @_;
    my ($v) = redis('INFO', $section) =~ /^\Q$field\E:(\d+)/m;
    return $v;
}

run_tests();

__DATA__

=== TEST 1: srcache MISS then HIT through the native locations; key is md5, TTL 100..105
--- config eval
$::API
--- keepalive_requests eval
["GET /api", "GET /api"]
--- response_body eval
["backend GET /api hit 1\n", "backend GET /api hit 1\n"]
--- response_headers eval
["X-Cache: MISS\nX-Store: STORE", "X-Cache: HIT\nX-Store: BYPASS"]
--- backend_hits: 1
--- redis_check eval
[[["EXISTS", md5_hex("/api")], 1],
 [["TTL", md5_hex("/api")], "100..105"],
 [["DBSIZE"], 1]]
--- check
my $v = redis('GET', md5_hex('/api'));
like($v, qr{\AHTTP/1\.[01] 200 OK\r\n}, 'stored value starts with the status line');
like($v, qr{\r\n\r\nbackend GET /api hit 1\n\z}, 'stored value ends with the body');
like($v, qr{^Content-Type: text/plain\r$}mi, 'stored value has the backend headers');
--- no_error_log
[error]



=== TEST 2: binary body (bytes 0..255) round-trips byte-exact
--- log_level: info
--- config eval
$::API
--- keepalive_requests eval
["GET /api/bin", "GET /api/bin"]
--- more_headers
X-Backend-Body-Binary: 1
--- response_body eval
[join('', map { chr } 0 .. 255), join('', map { chr } 0 .. 255)]
--- response_headers eval
["X-Cache: MISS", "X-Cache: HIT"]
--- backend_hits: 1
--- check
my @r = responses();
is(length $r[1]{body}, 256, 'HIT body is 256 bytes');
is($r[1]{body}, $r[0]{body}, 'HIT body identical to MISS body');
my $v = redis('GET', md5_hex('/api/bin'));
ok(defined $v && substr($v, -256) eq join('', map { chr } 0 .. 255),
   'stored value ends with the 256 raw bytes');
--- no_error_log
[error]



=== TEST 3: 2 MiB body round-trips byte-exact
--- log_level: info
--- config eval
# nginx core checks a subrequest's Content-Length (set by srcache_store) against
# client_max_body_size (1m by default) before any content handler runs, so the
# store location needs a larger limit, as with redis2/memc.
(my $c = $::API) =~ s/(location = \/redis2 \{\n)/$1        client_max_body_size 8m;\n/ or die;
$c
--- keepalive_requests eval
["GET /api/big", "GET /api/big"]
--- more_headers
X-Backend-Body-Size: 2097152
--- response_headers eval
["X-Cache: MISS", "X-Cache: HIT"]
--- backend_hits: 1
--- timeout: 10
--- check
my @r = responses();
my $want = backend_pattern(2097152);
for my $i (0, 1) {
    is(length $r[$i]{body}, 2097152, "response $i length");
    is(md5_hex($r[$i]{body}), md5_hex($want), "response $i md5");
}
cmp_ok(redis('STRLEN', md5_hex('/api/big')), '>', 2097152, 'whole response stored in redis');
--- no_error_log
[error]



=== TEST 4: TTL and PERSIST locations answer redis2-style RESP integers
--- config eval
$::API . <<'EOF';
    location = /t/ttl {
        set_unescape_uri $key $arg_key;
        set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command TTL $key;
    }
    location = /t/persist {
        set_unescape_uri $key $arg_key;
        set_md5 $key;
        stale_cache_redis_pass redis;
        stale_cache_redis_command PERSIST $key;
    }
    location = /t/internal {
        echo_location /redisttl key=$arg_key;
        echo_location /redispersist key=$arg_key;
        echo_location /redisttl key=$arg_key;
    }
EOF
--- redis_setup eval
[["SETEX", md5_hex("/a b"), 100, "v"], ["SETEX", md5_hex("/c"), 50, "w"]]
--- request eval
["GET /t/ttl?key=%2Fa%20b", "GET /t/persist?key=%2Fa%20b", "GET /t/ttl?key=%2Fa%20b",
 "GET /t/persist?key=%2Fa%20b", "GET /t/ttl?key=%2Fmissing", "GET /t/persist?key=%2Fmissing",
 "GET /t/internal?key=%2Fc"]
--- response_body_like eval
[qr/\A:(9[0-9]|100)\r\n\z/, qr/\A:1\r\n\z/, qr/\A:-1\r\n\z/,
 qr/\A:0\r\n\z/, qr/\A:-2\r\n\z/, qr/\A:0\r\n\z/,
 qr/\A:(4[0-9]|50)\r\n:1\r\n:-1\r\n\z/]
--- redis_check eval
[[["TTL", md5_hex("/a b")], -1], [["TTL", md5_hex("/c")], -1], [["GET", md5_hex("/c")], "w"]]
--- no_error_log
[error]



=== TEST 5: value mode: GET of a missing key is 404 with an empty body
--- config
    location = /get {
        set_unescape_uri $k $arg_k;
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET $k;
        stale_cache_redis_reply value;
    }
    location = /get-default {
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET $arg_k;
    }
--- redis_setup
SET present "hello\r\nworld"
--- request eval
["GET /get?k=missing", "GET /get-default?k=missing", "GET /get?k=present",
 "GET /get-default?k=present"]
--- error_code eval
[404, 404, 200, 200]
--- response_body eval
["", "", "hello\r\nworld", "hello\r\nworld"]
--- no_error_log
[error]



=== TEST 6: redis stopped: MISS, backend answers, one error line naming the server (backoff)
--- log_level: info
--- config eval
$::API
--- pre
our @WORKERS = nginx_pids();
stop_redis();
--- request eval
["GET /api", "GET /api", "GET /api"]
--- response_body eval
["backend GET /api hit 1\n", "backend GET /api hit 2\n", "backend GET /api hit 3\n"]
--- response_headers
X-Cache: MISS
--- backend_hits: 3
--- check
my $re = qr{\[info\].*connect\(\) failed \(111: Connection refused\) while connecting to upstream.*upstream: "redis://127\.0\.0\.1:$TEST_NGINX_REDIS_PORT"};
my $n = error_log_count($re);
is($n, 1, 'exactly one connect() failed line (at info) for fetch + store of 3 requests')
    or diag(join "\n", grep { /connect\(\) failed/ } split /\n/, error_log_text());
$re = qr{\[error\].*stale_cache: redis server 127\.0\.0\.1:$TEST_NGINX_REDIS_PORT failed .* answer 502 for 1000 ms};
is(error_log_count($re), 1, 'one error line: the server failed, its locations back off');
is_deeply([nginx_pids()], \@main::WORKERS, 'same master and worker (no crash)');
--- no_error_log eval
[qr/\[(alert|crit|emerg)\]/, qr/exited on signal/]



=== TEST 7: redis accepts but never answers: bounded wait, then MISS with backend body
--- log_level: info
--- config eval
$::API
--- pre
fake_redis_blackhole();
--- request
GET /api
--- response_body
backend GET /api hit 1
--- response_headers
X-Cache: MISS
--- backend_hits: 1
--- timeout: 5
--- check
my ($r) = responses();
cmp_ok($r->{elapsed}, '<', 1.5, "answered well under 2 s ($r->{elapsed} s)");
cmp_ok($r->{elapsed}, '>=', 0.45, 'the fetch waited for the 500ms read timeout');
--- wait_for
# the store after the response: it fails at once (the fetch's timeout marked the server down)
error_log_text() =~ /srcache_store subrequest failed/
--- error_log eval
[qr{upstream timed out \(110: Connection timed out\) while reading response header from upstream.*upstream: "redis://127\.0\.0\.1:\d+"}]



=== TEST 8: keepalive pool: 30 requests through the native locations use few connections
--- log_level: info
--- config eval
$::API
--- pre
our $CONN_BEFORE = redis_info_field('stats', 'total_connections_received');
--- keepalive_requests eval
[map { ("GET /api/k$_", "GET /api/k$_") } 1 .. 15]
--- response_headers eval
[map { ("X-Cache: MISS", "X-Cache: HIT") } 1 .. 15]
--- response_body eval
[map { ("backend GET /api/k$_ hit 1\n") x 2 } 1 .. 15]
--- backend_hits: 15
--- check
# this INFO call is itself one new connection
my $after = redis_info_field('stats', 'total_connections_received');
my $nginx = $after - $main::CONN_BEFORE - 1;
cmp_ok($nginx, '>=', 1, "nginx connected to redis ($nginx connections)");
cmp_ok($nginx, '<=', 3, "30 requests (45 redis round trips) used $nginx connections");
my @clients = grep { /\S/ } split /\n/, redis('CLIENT', 'LIST');
cmp_ok(scalar @clients, '>=', 2, 'idle keepalive connection(s) still open: ' . scalar @clients);
--- no_error_log
[error]



=== TEST 9: unknown reply mode fails nginx -t naming the directive
--- config
    location = /r {
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET k;
        stale_cache_redis_reply foo;
    }
--- must_die
--- error_log
"stale_cache_redis_reply": unknown reply mode "foo", expected "value" or "raw"



=== TEST 10: bad address fails nginx -t naming the directive
--- config
    location = /r {
        stale_cache_redis_pass 127.0.0.1:99999;
        stale_cache_redis_command GET k;
    }
--- must_die
--- error_log
"stale_cache_redis_pass": invalid port in "127.0.0.1:99999"



=== TEST 11: timeout that is not a time fails nginx -t
--- config
    location = /r {
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET k;
        stale_cache_redis_read_timeout abc;
    }
--- must_die
--- error_log
"stale_cache_redis_read_timeout" directive invalid value



=== TEST 12: command without pass fails nginx -t
--- config
    location = /r {
        stale_cache_redis_command GET k;
    }
--- must_die
--- error_log
"stale_cache_redis_command" needs "stale_cache_redis_pass"



=== TEST 13: pass without command fails nginx -t
--- config
    location = /r {
        stale_cache_redis_pass redis;
    }
--- must_die
--- error_log
"stale_cache_redis_pass" needs



=== TEST 14: value mode with an error reply: 502, no backoff, one error line per 10 s naming the command
--- log_level: info
--- config
    location = /incr {
        stale_cache_redis_pass redis;
        stale_cache_redis_command INCR $arg_k;
        stale_cache_redis_reply value;
    }
--- redis_setup
SET str abc
SET num 5
--- request eval
["GET /incr?k=str", "GET /incr?k=str", "GET /incr?k=num"]
--- error_code eval
[502, 502, 200]
--- response_body eval
[undef, undef, "6"]
--- redis_check
GET num => 6
GET str => abc
--- check
my $n = error_log_count(qr{\[error\].*stale_cache: redis server 127\.0\.0\.1:$TEST_NGINX_REDIS_PORT refused INCR \(command 1 of 1\) of location "/incr" with ERR: "ERR value is not an integer or out of range"; the location answers 502});
is($n, 1, 'one error line for both failing requests (once per 10 s per location and cause)');



=== TEST 15: raw pipelined commands return the concatenated replies; 502 when one is an error
--- config
    location = /pipe {
        stale_cache_redis_pass redis;
        stale_cache_redis_command SET k v;
        stale_cache_redis_command GET k;
    }
    location = /pipe3 {
        stale_cache_redis_pass redis;
        stale_cache_redis_command DEL nokey;
        stale_cache_redis_command GET nokey;
        stale_cache_redis_command INCR k;
        stale_cache_redis_reply raw;
    }
--- request eval
["GET /pipe", "GET /pipe3"]
--- response_body eval
["+OK\r\n\$1\r\nv\r\n", ":0\r\n\$-1\r\n-ERR value is not an integer or out of range\r\n"]
--- error_code eval
[200, 502]
--- redis_check
GET k => v
--- error_log eval
[qr{\[error\].*stale_cache: redis server 127\.0\.0\.1:\d+ refused INCR \(command 3 of 3\) of location "/pipe3" with ERR: "ERR value is not an integer or out of range"}]



=== TEST 16: keys/values with spaces, CR/LF and NUL via variables are stored byte-exact
--- config
    location = /pipe {
        set_unescape_uri $k $arg_k;
        set_unescape_uri $v $arg_v;
        stale_cache_redis_pass redis;
        stale_cache_redis_command SET $k $v;
        stale_cache_redis_command GET $k;
    }
    location = /get {
        set_unescape_uri $k $arg_k;
        stale_cache_redis_pass redis;
        stale_cache_redis_command GET $k;
    }
--- request eval
["GET /pipe?k=a%20b%0D%0Ac%00d&v=x%00y%0D%0Az%20%24%2A1",
 "GET /get?k=a%20b%0D%0Ac%00d"]
--- response_body eval
["+OK\r\n\$10\r\nx\0y\r\nz \$*1\r\n", "x\0y\r\nz \$*1"]
--- redis_check eval
[[["GET", "a b\r\nc\0d"], "x\0y\r\nz \$*1"], [["STRLEN", "a b\r\nc\0d"], 10], [["DBSIZE"], 1]]
--- no_error_log
[error]



=== TEST 17: stale_cache_redis_variable with an unknown transformation fails nginx -t
--- http_config
    stale_cache_redis_variable $rk $arg_key unescape sha1;
--- config
    location = /r { return 200; }
--- must_die
--- error_log
"stale_cache_redis_variable": unknown transformation "sha1", expected "escape", "unescape", "md5" or "tag"



=== TEST 18: stale_cache_redis_variable needs a $name, and one no other directive sets
--- http_config
    stale_cache_redis_variable rk $arg_key md5;
--- config
    location = /r { return 200; }
--- must_die
--- error_log
"stale_cache_redis_variable": invalid variable name "rk" (expected $name)



=== TEST 19: stale_cache_redis_variable on a variable that "set" also sets fails nginx -t
--- http_config
    stale_cache_redis_variable $rk $arg_key md5;
--- config
    location = /r { set $rk x; return 200; }
--- must_die
--- error_log
the duplicate "rk" variable



=== TEST 20: stale_cache_redis_watch with a bad address fails nginx -t naming the directive
--- config
    location = /r { stale_cache_redis_watch 127.0.0.1:99999; return 200; }
--- must_die
--- error_log
"stale_cache_redis_watch": invalid port in "127.0.0.1:99999"



=== TEST 21: a derived key in the native locations: md5 of the unescaped ?key=, like set-misc
--- http_config
    stale_cache_redis_variable $rk $arg_key unescape md5;
--- config
    location = /set { stale_cache_redis_pass redis; stale_cache_redis_command SET $rk $arg_v; }
    location = /get { stale_cache_redis_pass redis; stale_cache_redis_command GET $rk; }
--- request eval
["GET /set?key=a%7Cb+c%2F&v=one", "GET /get?key=a%7Cb+c%2F"]
--- response_body eval
["+OK\r\n", "one"]
--- redis_check eval
[[['GET', Digest::MD5::md5_hex('a|b c/')], 'one']]



=== TEST 22: $stale_cache_redis_down follows the watched group's backoff only
--- http_config
    upstream other { server 127.0.0.1:1; }
    stale_cache_redis_backoff 30s;   # outlasts the block on a loaded machine
--- config
    location = /get { stale_cache_redis_pass redis; stale_cache_redis_command GET k; }
    location = /down { stale_cache_redis_watch redis; return 200 "down=$stale_cache_redis_down\n"; }
    location = /other { stale_cache_redis_watch other; return 200 "down=$stale_cache_redis_down\n"; }
    location = /any { return 200 "down=$stale_cache_redis_down\n"; }
--- pre
stop_redis();
--- request eval
["GET /down", "GET /get", "GET /down", "GET /other", "GET /any"]
--- error_code eval
[200, 502, 200, 200, 200]
--- response_body eval
["down=\n", undef, "down=1\n", "down=\n", "down=1\n"]
