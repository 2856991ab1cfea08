# stale_cache_http with Vary on Redis Cluster: nginx-conf/http-cache.conf's server block, its
# Redis upstream made a cluster (t/lib/RedisCluster.pm: three primaries, a replica each) and
# its key variables tagged (`tag`: "{md5}"). Every key the mode adds next to an entry (its
# windows, the vary record, the variants, the variant set) keeps the entry's hash tag, so the
# lookup, store and purge scripts, which touch several of them, run on the entry's node.
use lib 't/lib';
use Test::StaleCache;
use RedisCluster;
use Digest::MD5 ();

our @PORTS = RedisCluster::start();

sub text { Test::StaleCache::slurp('nginx-conf/http-cache.conf') // die "http-cache.conf: $!" }

sub server {
    my ($server) = text() =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die 'no server';
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die 'no listen 8080';
    $server =~ s{http://www;}{http://backend;}g or die 'no proxy_pass';
    $server =~ s/(\n\s*stale_cache on;)/$1\n            stale_cache_purge PURGE;/ or die 'no stale_cache on';
    # (The harness has an upstream "redis" of its own.)
    $server =~ s/stale_cache_redis_pass redis;/stale_cache_redis_pass redis_cluster;/g == 5
        or die 'expected 5 Redis locations';
    return $server;
}

sub http {
    my @vars = text() =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg;
    my $n = grep { s/ md5;$/ md5 tag;/ } @vars;
    die "expected 5 md5 variables, got $n" unless $n == 5;
    my $servers = join '', map { "        server 127.0.0.1:$_;\n" } @::PORTS;
    return "    stale_cache_zone srcache_locks 1m;\n" . join("\n", @vars) . "\n"
         . "    upstream redis_cluster {\n        stale_cache_redis_cluster;\n$servers        keepalive 16;\n    }\n";
}

sub tagged { '{' . Digest::MD5::md5_hex('http://localhost' . shift) . '}' }
sub hdr { my ($r, $h) = @_; $r->{headers}{lc $h} }
sub get_al { my ($p, $al) = @_; http_get($p, { 'Accept-Language' => $al }) }
# Every key of the entry's slot that starts with its tag, on the tag's node.
sub keys_of {
    my $tag = shift;
    my $keys = RedisCluster::on_key('KEYS', "$tag*");
    my @k = sort @{ ref $keys ? $keys : [] };
    return @k;    # (a count in scalar context)
}

run_tests();

__DATA__

=== TEST 1: variants on the cluster: stored beside the URL's record on its node, served per Accept-Language, purged together
--- http_config eval: ::http()
--- config eval: ::server()
--- check
RedisCluster::flushall();
my $p = '/cv';
my $tag = ::tagged($p);
backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
is(::hdr(::get_al($p, 'en'), 'x-stale-cache'), 'MISS', 'en: MISS');
wait_until(sub { defined RedisCluster::on_key('GET', "$tag:w") }, 5, 'stored');
is(RedisCluster::on_key('GET', "$tag:w"), 'v=accept-language', 'the vary record, on the tag\'s node');
is(::hdr(::get_al($p, 'fr'), 'x-stale-cache'), 'MISS', 'fr: MISS');
wait_until(sub { RedisCluster::on_key('SCARD', "$tag:vs") == 4 }, 5, 'two variants listed');
my $r = ::get_al($p, 'en');
is(::hdr($r, 'x-stale-cache'), 'FRESH', 'en: FRESH');
is($r->{body}, "backend GET $p hit 1\n", 'en: its variant');
is(::get_al($p, 'fr')->{body}, "backend GET $p hit 2\n", 'fr: its variant');
my @keys = ::keys_of($tag);
is(scalar @keys, 6, "record, set, two variants and their windows, all on the tag's node: @keys");
is(http_request('PURGE', $p)->{status}, 200, 'PURGE: 200');
is(scalar(my @left = ::keys_of($tag)), 0, 'every key of the URL gone');
is(::hdr(::get_al($p, 'en'), 'x-stale-cache'), 'MISS', 'en afterwards: MISS');
# An unsafe request invalidates its URL, and its Location's on another node.
my $q = '/cv-target';
backend_config($q, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
::get_al($q, 'de');
wait_until(sub { ::keys_of($tag) >= 3 && ::keys_of(::tagged($q)) >= 3 }, 5, 'both stored');
backend_config('/cv-act', header => ["Location: $q"]);
is(http_request('POST', $p, {}, 'x')->{status}, 200, 'POST: 200');
wait_until(sub { !::keys_of($tag) }, 5, 'the POST invalidated every variant of its URL');
is(http_request('POST', '/cv-act', {}, 'x')->{status}, 200, 'POST with a Location: 200');
wait_until(sub { !::keys_of(::tagged($q)) }, 5, 'the Location\'s variants invalidated on their node');
--- no_error_log
[error]
[alert]
[crit]
