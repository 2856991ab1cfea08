# The background refresh reaches this nginx over the listener the client used (IPv4, IPv6,
# unix socket), or over stale_cache_refresh_address when that is set.
use lib 't/lib';
use Test::StaleCache;
run_tests();

# base_config keyed by $uri in zone "locks", memo off (so tests can age entries), with
# %o{server} (listen lines...) before the location; the other options are base_config's.
sub api_config {
    my (%o) = @_;
    my $server = delete $o{server} // '';
    return "    $server\n" . base_config(
        vars => "        set \$cache_lock locks;\n        set \$cache_ttl /redisttl;\n"
              . "        set \$cache_key \$uri;\n",
        in => 'stale_cache_memo off;', %o);
}
__DATA__
=== TEST 1: a client on an IPv6 listener: the refresh goes over [::1]
--- http_config
    stale_cache_zone locks 1m;
--- config eval
::api_config(server => 'listen [::1]:$TEST_NGINX_SERVER_PORT;')
--- request
GET /api/six
--- response_body
backend GET /api/six hit 1
--- check
use Digest::MD5 qw(md5_hex);
my $key = md5_hex('/api/six');
redis('EXPIRE', $key, 50);
my $out = `curl -s -g -i 'http://[::1]:$TEST_NGINX_SERVER_PORT/api/six'`;
like($out, qr/X-Stale-Cache: STALE/, 'IPv6 client gets the stale copy');
like($out, qr/hit 1/, 'stale body');
wait_until(sub { refreshed('/api/six', $key) }, 5, 'the refresh of /api/six to be stored');
is(backend_hits('/api/six'), 2, 'one refresh reached the backend');
cmp_ok(redis('TTL', $key), '>', 100, 'the refresh stored a fresh entry');
like(error_log_text(), qr/refresh of "\/api\/six" via \[::1\]:$TEST_NGINX_SERVER_PORT 200/,
     'refresh went over the IPv6 listener');

=== TEST 2: a client on a unix-socket listener: the refresh goes over the socket
--- http_config
    stale_cache_zone locks 1m;
--- config eval
::api_config(server => 'listen unix:$TEST_NGINX_SERVROOT/client.sock;')
--- request
GET /api/unix
--- response_body
backend GET /api/unix hit 1
--- check
use Digest::MD5 qw(md5_hex);
my $key = md5_hex('/api/unix');
redis('EXPIRE', $key, 50);
my $out = `curl -s -i --unix-socket $TEST_NGINX_SERVROOT/client.sock 'http://localhost/api/unix'`;
like($out, qr/X-Stale-Cache: STALE/, 'unix-socket client gets the stale copy');
wait_until(sub { refreshed('/api/unix', $key) }, 5, 'the refresh of /api/unix to be stored');
is(backend_hits('/api/unix'), 2, 'one refresh reached the backend');
cmp_ok(redis('TTL', $key), '>', 100, 'the refresh stored a fresh entry');
like(error_log_text(), qr/refresh of "\/api\/unix" via unix:\S*client\.sock 200/,
     'refresh went over the unix socket');

=== TEST 3: stale_cache_refresh_address sends refreshes to the configured listener
--- http_config
    stale_cache_zone locks 1m;
--- config eval
::api_config(server => 'listen unix:$TEST_NGINX_SERVROOT/refresh.sock; stale_cache_refresh_address unix:$TEST_NGINX_SERVROOT/refresh.sock;', fetch => 'srcache_fetch_skip $stale_cache_skip_fetch; srcache_fetch GET /redis $cache_key;')
--- request
GET /api/addr?x=1
--- response_body
backend GET /api/addr?x=1 hit 1
--- check
use Digest::MD5 qw(md5_hex);
my $key = md5_hex('/api/addr');
redis('EXPIRE', $key, 50);
my $r = http_get('/api/addr?x=1', { 'X-Custom' => 'abc' });
is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale copy served');
wait_until(sub { refreshed('/api/addr?x=1', $key) }, 5, 'the refresh of /api/addr to be stored');
is(backend_hits('/api/addr'), 2, 'one refresh reached the backend');
like(error_log_text(), qr/refresh of "\/api\/addr\?x=1" via unix:\S*refresh\.sock 200/,
     'refresh went to the configured address');
my @log = backend_log('/api/addr?x=1');
my $refresh = $log[-1];
is($refresh->{headers}{'x-status-seen'}, 'REFRESH', 'the refresh request has status REFRESH');
is($refresh->{headers}{'x-custom'}, 'abc', 'client headers are replayed');
my $r2 = http_get('/api/addr?x=1');
like($r2->{body}, qr/hit 2/, 'the next request gets the refreshed body');

=== TEST 4: a configuration that lets refreshes be served from the cache is told so
--- http_config
    stale_cache_zone locks 1m;
--- config eval
::api_config(fetch => 'srcache_fetch GET /redis $cache_key;')
--- request
GET /api/noskip
--- check
use Digest::MD5 qw(md5_hex);
redis('EXPIRE', md5_hex('/api/noskip'), 50);
my $r = http_get('/api/noskip');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale copy served');
wait_log('the refresh of "/api/noskip" was answered from the cache');    # it has ended
is(backend_hits('/api/noskip'), 1, 'the refresh never reached the backend');
--- error_log
the refresh of "/api/noskip" was answered from the cache, so nothing was refreshed

=== TEST 5: a TLS client without stale_cache_refresh_address: stale copy served, no refresh, clear error
--- http_config
    stale_cache_zone locks 1m;
--- config eval
# The certificate must exist before nginx -t: make it while building the configuration.
system("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
     . "-keyout $Test::StaleCache::TEST_NGINX_SERVROOT/tls.key "
     . "-out $Test::StaleCache::TEST_NGINX_SERVROOT/tls.crt 2>/dev/null") == 0
    or die "openssl failed";
$ENV{TEST_NGINX_TLS_PORT} = Test::StaleCache::pick_port();
::api_config(server => "listen 127.0.0.1:$ENV{TEST_NGINX_TLS_PORT} ssl; "
    . 'ssl_certificate $TEST_NGINX_SERVROOT/tls.crt; '
    . 'ssl_certificate_key $TEST_NGINX_SERVROOT/tls.key;')
--- request
GET /api/tls
--- response_body
backend GET /api/tls hit 1
--- check
use Digest::MD5 qw(md5_hex);
redis('EXPIRE', md5_hex('/api/tls'), 50);
my $url = "https://127.0.0.1:$ENV{TEST_NGINX_TLS_PORT}/api/tls";
for my $n (1 .. 2) {
    my $out = `curl -s -k -i '$url'`;
    like($out, qr/X-Stale-Cache: STALE/, "TLS client $n gets the stale copy");
}
# logged where the module decides not to refresh
wait_log('came over TLS, HTTP/2 or the PROXY protocol');
is(backend_hits('/api/tls'), 1, 'no refresh reached the backend');
my @lines = error_log_text() =~ /(came over TLS, HTTP\/2 or the PROXY protocol)/g;
is(scalar @lines, 1, 'one (rate-limited) error line says to set stale_cache_refresh_address');
