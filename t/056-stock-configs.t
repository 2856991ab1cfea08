# The configurations shipped in nginx-conf/, run as they are (their server block, with the
# harness's backend and Redis): responses with Set-Cookie are not stored (issue 13), backend
# connections are kept alive (issue 12), and a POST in $cache_methods that srcache does not
# cache is reported. drop-in-redis2.conf needs redis2/HttpRedis, built once into
# build/reference-modules (about 20 s).
BEGIN {
    use lib 't/lib';
    require RefModules;
    $ENV{TEST_NGINX_EXTRA_MODULES} = join ' ', grep { length }
        $ENV{TEST_NGINX_EXTRA_MODULES}, RefModules::ensure();
}
use lib 't/lib';
use Test::StaleCache;

our $HTTP = "    stale_cache_zone srcache_locks 1m;\n";

# The server block of nginx-conf/$file without its listen line, proxying to the harness's
# backend; $extra goes into /api after its "set"s.
sub stock {
    my ($file, $extra) = @_;
    my $text = Test::StaleCache::slurp("nginx-conf/$file") // die "nginx-conf/$file: $!";
    my ($server) = $text =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die "no server in $file";
    $server =~ s/^\s*listen [^\n]*\n//m;
    $server =~ s{http://www;}{http://backend;}g;
    $server =~ s/(stale_cache on;)/$1\n$extra/ if $extra;
    return $server;
}

# The http-level lines of nginx-conf/$file the server needs (the module's key variables).
sub stock_http {
    my ($file) = @_;
    my $text = Test::StaleCache::slurp("nginx-conf/$file") // die "nginx-conf/$file: $!";
    return $::HTTP . join '', map { "$_\n" } $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg;
}

sub check_set_cookie {
    is(backend_hits('/api/sc'), 2, 'both requests went to the backend');
    is(redis('EXISTS', redis_key('/api/sc')), 0, 'nothing stored for the Set-Cookie response');
    like(redis('GET', redis_key('/api/plain')) // '', qr/hit 1\n\z/, 'a plain response is stored');
    # Its fetch and store locations have roles (native GET/SET, or stale_cache_role).
    unlike(Test::StaleCache::slurp("$ENV{TEST_NGINX_SERVROOT}/logs/nginx-t.out") // '',
           qr/no location has a role/, 'nginx -t: no legacy notice');
}

sub check_keepalive {
    my @log = backend_log();
    is(scalar @log, 100, '100 backend requests');
    my %conns = map { $_->{conn} => 1 } @log;
    my $n = keys %conns;
    ok($n <= 2, "100 requests used $n backend connection(s)");
    ok(!grep({ ($_->{headers}{connection} // '') =~ /close/i } @log), 'no Connection: close');
}

run_tests();

__DATA__

=== TEST 1: stock-debian.conf: a response with Set-Cookie is not stored
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- pre
backend_config('/api/sc', header => ['Set-Cookie: session=alice']);
--- request eval
["GET /api/sc", "GET /api/sc", "GET /api/plain"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS", "X-Store: STORE"]
--- check
check_set_cookie();



=== TEST 2: drop-in-redis2.conf: same
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- pre
backend_config('/api/sc', header => ['Set-Cookie: session=alice']);
--- request eval
["GET /api/sc", "GET /api/sc", "GET /api/plain"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS", "X-Store: STORE"]
--- check
check_set_cookie();



=== TEST 3: stock-debian.conf: 100 requests reuse kept-alive backend connections
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf')
--- request eval
[map { "GET /api/ka$_" } 1 .. 100]
--- check
check_keepalive();



=== TEST 4: drop-in-redis2.conf: same
--- http_config eval: ::stock_http('drop-in-redis2.conf')
--- config eval: ::stock('drop-in-redis2.conf')
--- request eval
[map { "GET /api/ka$_" } 1 .. 100]
--- check
check_keepalive();



=== TEST 5: POST in $cache_methods without srcache_methods: collapsed but not cached, reported once
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf', 'set $cache_methods "GET POST";')
--- request eval
["POST /api/p\nx", "POST /api/p\nx"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: BYPASS", "X-Store: BYPASS"]
--- check
is(error_log_count(qr/\$cache_methods lists POST but srcache did not store the POST response of "\/api\/p": srcache caches GET and HEAD only unless "srcache_methods" lists POST too/), 1, 'reported once');



=== TEST 6: with srcache_methods GET HEAD POST the POST is cached, nothing reported
--- http_config eval: ::stock_http('stock-debian.conf')
--- config eval: ::stock('stock-debian.conf', 'set $cache_methods "GET POST"; srcache_methods GET HEAD POST;')
--- request eval
["POST /api/p\nx", "POST /api/p\nx"]
--- response_headers eval
["X-Stale-Cache: MISS\nX-Store: STORE", "X-Stale-Cache: FRESH\nX-Cache: HIT"]
--- no_error_log
srcache did not store



=== TEST 7: stock-debian.conf with the hot tier: while Redis is down, hot keys are served from the zone within their fresh period
--- http_config eval: ::stock_http('stock-debian.conf') . "    stale_cache_hot_zone hot 4m;\n"
--- config eval: ::stock('stock-debian.conf', 'stale_cache_hot on; stale_cache_hot_max_age 60s;')
--- request
GET /api/warm
--- check
is(http_get('/api/h')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
my $hot = wait_until(sub { my $r = http_get('/api/h'); $r->{headers}{'x-stale-cache'} eq 'HOT' && $r },
    3, 'the key served from the hot zone');
stop_redis();
# Another key's lookup fails: this worker's Redis backoff starts ($stale_cache_redis_down).
my $other = http_get('/api/other');
is($other->{status}, 200, 'another key passes through to the backend');
my $r = http_get('/api/h');
is($r->{headers}{'x-stale-cache'}, 'HOT', 'Redis down: the hot key is still served from the zone');
is($r->{body}, "backend GET /api/h hit 1\n", 'with its cached body');
is(backend_hits('/api/h'), 1, 'the backend saw the key once');
# (The outage's start and /api/other's failed lookup are logged; nothing for the hot key.)
is(error_log_count(qr/\[error\].*GET \/api\/h /), 0, 'no error line for the hot key');
start_redis();
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]
