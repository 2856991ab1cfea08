# redis2 and HttpRedis (the Redis locations lua-resty-cache's own configuration uses) as
# dynamic modules for the nginx under test, built once into build/reference-modules by the
# shared build-reference-modules.sh (about 20 s). Tests that run the redis2 variant of a
# configuration load them.
package RefModules;
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $ROOT = abs_path(dirname(__FILE__) . '/../..');

# The build script: TEST_NGINX_REFERENCE_BUILD, else the shared third-party folder next to
# the checkout, else the workplace's.
sub script {
    my @candidates = grep { defined } $ENV{TEST_NGINX_REFERENCE_BUILD},
        ($ENV{TEST_NGINX_THIRD_PARTY} ? "$ENV{TEST_NGINX_THIRD_PARTY}/build-reference-modules.sh" : undef),
        "$ROOT/../shared/third-party/build-reference-modules.sh",
        '/work/shared/third-party/build-reference-modules.sh';
    my ($found) = grep { -f } @candidates;
    return $found;
}

# The two .so paths, built first if missing; dies saying what to set when it cannot.
sub ensure {
    my $dir = "$ROOT/build/reference-modules";
    my @so = map { "$dir/$_" } qw(ngx_http_redis2_module.so ngx_http_redis_module.so);
    return @so unless grep { !-f } @so;
    my $script = script()
        or die "redis2/HttpRedis are needed but build-reference-modules.sh was not found "
             . "(set TEST_NGINX_REFERENCE_BUILD to its path)\n";
    my @src = $ENV{TEST_NGINX_SOURCE_DIR} ? ($ENV{TEST_NGINX_SOURCE_DIR}) : ();
    system('bash', $script, $dir, @src) == 0 or die "building redis2/HttpRedis failed\n";
    return @so;
}

1;
