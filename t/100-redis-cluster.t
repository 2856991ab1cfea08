# Redis Cluster (issue 21): nginx-conf/redis-cluster.conf as shipped, its seed nodes
# 127.0.0.1:7000-7005 replaced by a private six-node cluster (t/lib/RedisCluster.pm: three
# primaries, a replica each, cluster-node-timeout 1 s). Requests go to the primary of their
# key's slot, -MOVED and -ASK are followed, and the map is read again when it changes.
use lib 't/lib';
use Test::StaleCache;
use RedisCluster;
use Digest::MD5 ();

our @PORTS = RedisCluster::start();
our $ADMIN_PORT = Test::StaleCache::pick_port();

sub conf_text { Test::StaleCache::slurp('nginx-conf/redis-cluster.conf') // die "redis-cluster.conf: $!" }

# The server block of the shipped file, on the harness's listener and backend.
sub cluster_server {
    my $extra = shift;
    my ($server) = conf_text() =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die 'no server';
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die 'no listen 8080';
    $server =~ s/listen 127\.0\.0\.1:8099;/listen 127.0.0.1:$::ADMIN_PORT;/ or die 'no admin listen';
    $server =~ s{http://www;}{http://backend;}g;
    $server =~ s/(stale_cache on;)/$1\n$extra/ if $extra;
    return $server;
}

# Its http-level lines: the zone, the key variables, the maps, and the cluster's upstream
# with the seeds 7000-7005 on the private cluster's ports.
sub cluster_http {
    my $text = conf_text();
    my ($ups) = $text =~ /^(    upstream redis_cluster \{\n.*?^    \}\n)/ms or die 'no upstream';
    my %port = map { (7000 + $_) => $::PORTS[$_] } 0 .. 5;
    $ups =~ s/127\.0\.0\.1:(700[0-5]);/"127.0.0.1:$port{$1};"/ge == 6 or die 'not 6 seeds';
    my @maps = $text =~ /^(    map [^\n]*\{\n.*?^    \}\n)/msg or die 'no map';
    s/^(\s+)8099 /${1}$::ADMIN_PORT /m for @maps;
    my @vars = $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg;
    my ($zone) = $text =~ /^(\s*stale_cache_zone [^\n]*)$/m;
    return join "\n", $zone, @vars, $ups, @maps, '';
}

# The Redis key of /api/... as the shipped file derives it: md5 of "User-Agent|uri", tagged.
sub ckey { my ($uri, $ua) = @_; '{' . Digest::MD5::md5_hex(($ua // '') . "|$uri") . '}' }

sub get_many {
    my ($paths, $timeout) = @_;
    return Test::StaleCache::run_jobs(
        [map { { port => $ENV{TEST_NGINX_SERVER_PORT},
                 reqs => [Test::StaleCache::build_request("GET $_", { 'X-Backend-Delay' => '0.2' })] } } @$paths],
        $timeout // 10);
}

run_tests();

__DATA__

=== TEST 1: 100 concurrent cold misses over 20 keys: 20 backend hits, 100 x 200, entries on >= 2 primaries
--- workers: 2
--- log_level: info
--- http_config eval: ::cluster_http()
--- config eval: ::cluster_server()
--- check
RedisCluster::flushall();
my @paths = map { '/api/c' . ($_ % 20) } 0 .. 99;
my @r = ::get_many(\@paths);
is(scalar(grep { !$_->{error} && $_->{status} == 200 } @r), 100, '100 x 200')
    or diag(explain [map { $_->{error} // $_->{status} } @r]);
is(scalar(backend_log()), 20, '20 backend hits (one per key)');
my $stored = 0;
for my $i (0 .. 19) {
    $stored++ if defined RedisCluster::on_key('GET', ::ckey("/api/c$i"));
}
is($stored, 20, 'all 20 entries are in the cluster, each on its slot\'s primary');
my $sizes = RedisCluster::sizes();
my $used = grep { $sizes->{$_} > 0 } keys %$sizes;
cmp_ok($used, '>=', 2, "entries on $used primaries") or diag(explain $sizes);
# And served from there: 20 FRESH, no new backend hit.
my @again = ::get_many([map { "/api/c$_" } 0 .. 19]);
is(scalar(grep { ($_->{headers}{'x-stale-cache'} // '') eq 'FRESH' && $_->{status} == 200 } @again),
   20, 'the 20 keys are FRESH hits from the cluster');
is(scalar(backend_log()), 20, 'no new backend hit');
--- no_error_log
[error]
