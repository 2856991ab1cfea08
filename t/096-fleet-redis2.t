# The blocks of t/095-fleet.t with the Redis locations of nginx-conf/drop-in-redis2.conf:
# redis2-nginx-module (TTL, PERSIST, store, and the lease's EVAL) and HttpRedis (fetch),
# built from /work/shared/third-party (or TEST_NGINX_REDIS2_MODULES_DIR) into build/reference
# when missing (about 20 s, once).
use strict;
use warnings;
my $dir;
BEGIN {
    use Cwd ();
    $dir = $ENV{TEST_NGINX_REDIS2_MODULES_DIR} || Cwd::getcwd() . '/build/reference';
    my @so = map { "$dir/$_" } qw(ngx_http_redis2_module.so ngx_http_redis_module.so);
    my $script = $ENV{TEST_NGINX_REFERENCE_SCRIPT}
        || '/work/shared/third-party/build-reference-modules.sh';
    if (grep { !-f } @so) {
        if (-x $script) {
            system("$script $dir >/dev/null") == 0 or die "building redis2/HttpRedis failed\n";
        } else {
            print "1..0 # SKIP redis2/HttpRedis modules not found in $dir\n";
            exit 0;
        }
    }
    $ENV{TEST_NGINX_EXTRA_MODULES} = join ' ', grep { length } $ENV{TEST_NGINX_EXTRA_MODULES}, @so;
    $ENV{FLEET_VARIANT} = 'redis2';
}
use lib 't/lib';
use Test::StaleCache;
use Fleet;
use IO::Socket::INET;

open my $fh, '<', 't/095-fleet.t' or die "t/095-fleet.t: $!";
my $text = do { local $/; <$fh> };
$text =~ s/\A.*?^__DATA__\n//ms or die "no __DATA__ in t/095-fleet.t";
# (the field spec_string sets; the function needs Test::Base imported by the caller)
Test::StaleCache::spec()->_spec_string($text);
run_tests();
