# The two files of the README's quick start, nginx-conf/conf.d/stale-cache.conf and
# nginx-conf/sites/stale-cache-example.conf, as they are shipped (only the addresses of Redis
# and the application and the two listen ports substituted), included in http {} the way
# Debian's nginx.conf includes conf.d/*.conf and sites-enabled/*: a miss, then FRESH with
# X-Stale-Cache and Cache-Status, then STALE and the refresh, and the metrics listener.
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

our $SITE_PORT  = pick_port();
our $ADMIN_PORT = pick_port();

sub shipped {
    my $file = shift;
    return Test::StaleCache::slurp("nginx-conf/$file") // die "nginx-conf/$file: $!";
}

# Both files in http {}, as shipped but for the addresses.
sub dropin {
    my $conf = shipped('conf.d/stale-cache.conf');
    my $site = shipped('sites/stale-cache-example.conf');
    $conf =~ s/server 127\.0\.0\.1:6379;/server 127.0.0.1:\$TEST_NGINX_REDIS_PORT;/ or die "no Redis address";
    $site =~ s/server 127\.0\.0\.1:8081;/server 127.0.0.1:\$TEST_NGINX_BACKEND_PORT;/ or die "no app address";
    $site =~ s/listen 8080;/listen $::SITE_PORT;/ or die "no listen 8080";
    $site =~ s/listen 127\.0\.0\.1:9145;/listen 127.0.0.1:$::ADMIN_PORT;/ or die "no metrics listener";
    return "$conf\n$site";
}

# One GET of the site's port (Host: localhost, as the harness's client sends it).
sub site_get {
    my ($path, $port) = @_;
    return (concurrent_get($path, 1, {}, 10, $port // $::SITE_PORT))[0];
}

run_tests();

__DATA__

=== TEST 1: conf.d + site: MISS, then FRESH with X-Stale-Cache and Cache-Status; metrics on their own listener
--- http_config eval: ::dropin()
--- check
for my $f ('conf.d/stale-cache.conf', 'sites/stale-cache-example.conf') {
    unlike(::shipped($f), qr/^\s*load_module/m, "$f has no load_module line");
}
my $r = ::site_get('/api/x');
is($r->{status}, 200, 'first: 200');
is($r->{headers}{'x-stale-cache'}, 'MISS', 'first: X-Stale-Cache: MISS');
like($r->{headers}{'cache-status'}, qr/^stale-cache; fwd=miss; fwd-status=200/, 'first: Cache-Status miss');
is($r->{body}, "backend GET /api/x hit 1\n", 'first: the backend answered');
# The key is "$host$request_uri".
my $key = md5_hex('localhost/api/x');
wait_until(sub { redis('EXISTS', $key) }, 3, 'stored under md5("localhost/api/x")');
my $ttl = redis('TTL', $key);
ok($ttl >= 100 && $ttl <= 105, "stored for 105 s (TTL $ttl)");
$r = ::site_get('/api/x');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'second: X-Stale-Cache: FRESH');
like($r->{headers}{'cache-status'}, qr/^stale-cache; hit; ttl=\d+/, 'second: Cache-Status hit');
is($r->{body}, "backend GET /api/x hit 1\n", 'second: the stored body');
is(backend_hits('/api/x'), 1, 'the backend saw one request');
$r = ::site_get('/api/x?b=1');
is($r->{headers}{'x-stale-cache'}, 'MISS', 'query arguments are part of the key');
my $m = ::site_get('/metrics', $::ADMIN_PORT);
is($m->{status}, 200, 'metrics listener: 200');
like($m->{body}, qr/^stale_cache_requests_total\{zone="srcache_locks",status="fresh"\} 1$/m,
     'metrics listener: the fresh hit counted');
$m = ::site_get('/metrics');
is($m->{status}, 404, 'the public server has no /metrics');
unlike($m->{body}, qr/stale_cache_/, 'and shows no counters');
unlike(Test::StaleCache::slurp("$ENV{TEST_NGINX_SERVROOT}/logs/nginx-t.out") // '',
       qr/\[(warn|notice)\]/, 'nginx -t: no warning or notice');
--- no_error_log eval
[qr/\[(warn|crit)\]/, qr/\[error\](?!.*open\(\) "[^"]*\/html\/metrics" failed)/]



=== TEST 2: conf.d + site: a stale entry is served at once and refreshed in the background
--- http_config eval: ::dropin()
--- check
my $key = md5_hex('localhost/api/s');
is(::site_get('/api/s')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
wait_until(sub { redis('EXISTS', $key) }, 3, 'stored');
is(redis('EXPIRE', $key, 50), 1, 'EXPIRE 50: in the stale window');
my $r = ::site_get('/api/s');
is($r->{headers}{'x-stale-cache'}, 'STALE', 'X-Stale-Cache: STALE');
like($r->{headers}{'cache-status'}, qr/^stale-cache; hit.*detail=stale/, 'Cache-Status: stale hit');
is($r->{body}, "backend GET /api/s hit 1\n", 'the stale copy');
wait_until(sub { redis('TTL', $key) > 100 }, 5, 'the refresh stored a new copy');
is(backend_hits('/api/s'), 2, 'one refresh reached the backend');
$r = ::site_get('/api/s');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'then FRESH');
is($r->{body}, "backend GET /api/s hit 2\n", 'with the refreshed body');
# The EXPIRE above makes the entry stale right after its store, which is what the "already
# stale" warning reports (the test's doing here): every other warning still fails the block.
is(scalar(grep { /\[warn\]/ && !/is already stale/ } split /\n/, error_log_text()), 0,
   'no other warning');
--- no_error_log eval
[qr/\[(error|crit)\]/]
