# redis2 and HttpRedis (the Redis locations lua-resty-cache's own configuration uses) as
# dynamic modules for the nginx under test, built once into build/reference-modules/<version>/
# by the shared build-reference-modules.sh (about 20 s): for the packaged nginx, or for the
# configured source tree in TEST_NGINX_SOURCE_DIR. Tests that run the redis2 variant of a
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

# The version of the nginx under test (TEST_NGINX_BINARY), e.g. "1.28.3".
sub nginx_version {
    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    my ($v) = (`"$bin" -v 2>&1` // '') =~ m{nginx/(\S+)};
    return $v // 'unknown';
}

# The two .so paths, built first if missing; dies saying what to set when it cannot. One
# folder per nginx version: modules built for one nginx do not load into another.
sub ensure {
    my $dir = "$ROOT/build/reference-modules/" . nginx_version();
    my @so = map { "$dir/$_" } qw(ngx_http_redis2_module.so ngx_http_redis_module.so);
    return @so unless grep { !-f } @so;
    my $script = script()
        or die "redis2/HttpRedis are needed but build-reference-modules.sh was not found "
             . "(set TEST_NGINX_REFERENCE_BUILD to its path)\n";
    my @src = $ENV{TEST_NGINX_SOURCE_DIR} ? ($ENV{TEST_NGINX_SOURCE_DIR}) : ();
    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    die "redis2/HttpRedis are needed for $bin, which is not the packaged nginx: set "
      . "TEST_NGINX_SOURCE_DIR to its configured source tree (make test NGINX_SOURCE_DIR=... "
      . "sets it)\n"
        if !@src && (abs_path($bin) // '') ne (abs_path('/usr/sbin/nginx') // '/usr/sbin/nginx');
    system('bash', $script, $dir, @src) == 0 or die "building redis2/HttpRedis failed\n";
    return @so;
}

1;
