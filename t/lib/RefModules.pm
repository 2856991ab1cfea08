# redis2 and HttpRedis (the Redis locations lua-resty-cache's own configuration uses) as
# dynamic modules for the nginx under test, built once into build/reference-modules/<version>/
# by build-reference-modules.sh (about 20 s), a script kept outside the repository: for the
# packaged nginx, or for the configured source tree in TEST_NGINX_SOURCE_DIR. Blocks with
# `--- redis2` load them (the harness skips such a block when they cannot be had); a file
# whose every block needs them calls load_or_skip_all() in a BEGIN block.
package RefModules;
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $ROOT = abs_path(dirname(__FILE__) . '/../..');

# The build script: TEST_NGINX_REFERENCE_BUILD when set, else build-reference-modules.sh in the
# shared/third-party/ folder next to the checkout (../shared/third-party/ from its root).
sub script {
    return $ENV{TEST_NGINX_REFERENCE_BUILD} if $ENV{TEST_NGINX_REFERENCE_BUILD};
    my $shared = abs_path("$ROOT/..") // "$ROOT/..";
    return "$shared/shared/third-party/build-reference-modules.sh";
}

# The version of the nginx under test (TEST_NGINX_BINARY), e.g. "1.28.3".
sub nginx_version {
    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    my ($v) = (`"$bin" -v 2>&1` // '') =~ m{nginx/(\S+)};
    return $v // 'unknown';
}

# Where the two .so files are (or go), one folder per nginx version: modules built for one
# nginx do not load into another.
sub so_paths {
    my $dir = "$ROOT/build/reference-modules/" . nginx_version();
    return map { "$dir/$_" } qw(ngx_http_redis2_module.so ngx_http_redis_module.so);
}

# Why the modules cannot be had, saying what to set; undef when they are built or can be.
sub unavailable {
    return undef unless grep { !-f } so_paths();
    my $script = script();
    return undef if -f $script;
    return $ENV{TEST_NGINX_REFERENCE_BUILD}
        ? "redis2/HttpRedis are not built and TEST_NGINX_REFERENCE_BUILD ($script) is no file: "
        . "set it to the path of build-reference-modules.sh"
        : "redis2/HttpRedis are not built and there is no $script (a shared/third-party/ folder "
        . "next to the checkout): set TEST_NGINX_REFERENCE_BUILD to the path of "
        . "build-reference-modules.sh";
}

# The two .so paths, built first if missing; dies saying what to set when it cannot.
sub ensure {
    my @so = so_paths();
    return @so unless grep { !-f } @so;
    if (my $why = unavailable()) { die "$why\n" }
    my $script = script();
    my @src = $ENV{TEST_NGINX_SOURCE_DIR} ? ($ENV{TEST_NGINX_SOURCE_DIR}) : ();
    my $bin = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    die "redis2/HttpRedis are needed for $bin, which is not the packaged nginx: set "
      . "TEST_NGINX_SOURCE_DIR to its configured source tree (make test NGINX_SOURCE_DIR=... "
      . "sets it)\n"
        if !@src && (abs_path($bin) // '') ne (abs_path('/usr/sbin/nginx') // '/usr/sbin/nginx');
    system('bash', $script, dirname($so[0]), @src) == 0 or die "building redis2/HttpRedis failed\n";
    return @so;
}

# For a file whose every block needs the modules (call it in a BEGIN block, before the
# harness is loaded): adds them to TEST_NGINX_EXTRA_MODULES, or skips the whole file saying
# why when the build script is missing.
sub load_or_skip_all {
    if (my $why = unavailable()) {
        require Test::More;
        Test::More::plan(skip_all => $why);
    }
    $ENV{TEST_NGINX_EXTRA_MODULES} = join ' ', grep { length }
        $ENV{TEST_NGINX_EXTRA_MODULES}, ensure();
}

1;
