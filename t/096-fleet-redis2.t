# The blocks of t/095-fleet.t with the Redis locations of nginx-conf/drop-in-redis2.conf:
# redis2-nginx-module (TTL, PERSIST, store, and the lease's EVAL) and HttpRedis (fetch),
# built once (see t/lib/RefModules.pm).
use strict;
use warnings;
BEGIN {
    use lib 't/lib';
    require RefModules;
    RefModules::load_or_skip_all();
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
