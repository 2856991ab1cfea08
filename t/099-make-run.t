# `make run` (nginx-conf/run.sh) on free ports: the commands its banner prints show what it
# says they show (MISS, FRESH, STALE, refreshed; 20 clients collapsed into one backend
# request; /metrics; PURGE on the admin listener only; a reload), and Ctrl-C stops it cleanly:
# exit status 0 (so make prints no "Error 130") and no process left.
use lib 't/lib';
use Test::StaleCache;
use Cwd qw(abs_path);
use POSIX qw(WNOHANG);

for my $tool (qw(curl python3 redis-cli)) {
    Test::More::plan(skip_all => "$tool not found") if system("command -v $tool >/dev/null 2>&1");
}
my $module = abs_path($ENV{STALE_CACHE_MODULE} || 'build/ngx_http_stale_cache_module.so');
Test::More::plan(skip_all => 'the module is not built (make module)') unless $module && -f $module;

my %port = map { $_ => pick_port() } qw(NGINX_PORT ADMIN_PORT BACKEND_PORT REDIS_PORT);
my $dir = abs_path('t') . '/servroot-run';
my %env = (
    %port,
    RUN_DIR            => $dir,
    STALE_CACHE_MODULE => $module,
    NGINX_BINARY       => $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx',
    ($ENV{TEST_NGINX_REDIS_SERVER} ? (REDIS_SERVER => $ENV{TEST_NGINX_REDIS_SERVER}) : ()),
    ($ENV{TEST_NGINX_MODULES_DIR} ? (NGINX_MODULES_DIR => $ENV{TEST_NGINX_MODULES_DIR}) : ()),
);
my $out = abs_path('t') . '/servroot-run.out';
unlink $out;

# run.sh in a process group of its own, as a terminal runs `make run`: Ctrl-C signals the group.
my $pid = fork // die "fork: $!";
if (!$pid) {
    setpgrp(0, 0);
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE CHLD);
    @ENV{ keys %env } = values %env;
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', $out or POSIX::_exit(126);
    open STDERR, '>&', \*STDOUT;
    exec 'nginx-conf/run.sh' or POSIX::_exit(127);
}
my $banner = wait_until(sub {
    my $t = Test::StaleCache::slurp($out) // '';
    $t =~ /Ctrl-C stops/ && $t
}, 30, 'the banner');
diag(Test::StaleCache::slurp($out) // '') unless $banner;

my @cmds = ($banner // '') =~ /^  \$ (.*)$/mg;
is(scalar @cmds, 9, 'nine commands in the banner') or diag($banner);
# A banner command run by bash as a person would paste it: its output.
my $run = sub {
    my $c = shift;
    open my $fh, '-|', 'bash', '-c', "$c 2>&1" or die "bash: $!";
    local $/;
    my $o = <$fh> // '';
    close $fh;
    $o =~ s/\r//g;
    return $o;
};
sub header_of { my ($text, $name) = @_; $text =~ /^\Q$name\E: (.*)$/mi ? $1 : '' }

# 1. A key's life.
my $o = $run->($cmds[0]);
is(header_of($o, 'X-Stale-Cache'), 'MISS', 'first request: MISS') or diag($o);
like($o, qr/^backend GET \/api\/hello hit 1$/m, 'from the backend');
like(header_of($o, 'Cache-Status'), qr/^stale-cache; fwd=miss/, 'Cache-Status: fwd=miss');
$o = $run->($cmds[1]);
is(header_of($o, 'X-Stale-Cache'), 'FRESH', 'second: FRESH') or diag($o);
like($o, qr/hit 1$/m, 'the stored body');
like($cmds[2], qr/^sleep \d+; /, 'the third waits for the fresh period to end');
$o = $run->($cmds[2]);
is(header_of($o, 'X-Stale-Cache'), 'STALE', 'after the sleep: STALE') or diag($o);
like($o, qr/hit 1$/m, 'still the stored body');
like(header_of($o, 'Cache-Status'), qr/detail=stale/, 'Cache-Status says stale');
# The refresh runs in the background: a person typing the next line sees it done.
my $refreshed = wait_until(sub { my $r = $run->($cmds[3]); $r =~ /hit 2$/m && $r }, 5,
    'the refreshed response');
is(header_of($refreshed, 'X-Stale-Cache'), 'FRESH', 'refreshed: FRESH, hit 2');

# 2. Collapsing.
$o = $run->($cmds[4]);
my %n = map { $_->[1] => $_->[0] } map { [ /^\s*(\d+) X-Stale-Cache: (\S+)$/ ] } grep { /X-Stale-Cache/ } split /\n/, $o;
is($n{MISS}, 1, 'one MISS among the 20') or diag($o);
cmp_ok($n{COLLAPSED} // 0, '>=', 15, 'the others collapsed into its fill (most of them)');
is(($n{MISS} // 0) + ($n{COLLAPSED} // 0) + ($n{FRESH} // 0), 20, '20 answers, all cached or collapsed');
like($o, qr/^backend hits: 1$/m, 'the backend asked once');

# 3. Metrics.
$o = $run->($cmds[5]);
like($o, qr/^stale_cache_requests_total\{zone="srcache_locks",status="stale"\} 1$/m,
     '/metrics on the admin listener counts the STALE') or diag($o);
like($o, qr/^stale_cache_refreshes_total\{zone="srcache_locks",outcome="succeeded"\} 1$/m,
     'and the refresh');
unlike($o, qr/ 0$/m, 'zero samples left out');

# 4. PURGE.
like($run->($cmds[6]), qr{^HTTP/1.1 200 }, 'PURGE on the admin listener: 200');
like($run->($cmds[7]), qr{^HTTP/1.1 403 }, 'PURGE on the main listener: 403');
is(header_of($run->($cmds[0]), 'X-Stale-Cache'), 'MISS', 'after the purge: MISS');

# 5. Reload.
like($cmds[8], qr/ -s reload$/, 'the reload line');
is(system('bash', '-c', "$cmds[8] >/dev/null 2>&1"), 0, 'reload: exit 0');
ok(wait_until(sub { header_of($run->($cmds[1]), 'X-Stale-Cache') eq 'FRESH' }, 5,
    'answers after the reload'), 'FRESH after the reload');

# Ctrl-C: SIGINT to the whole group.
my $master = (Test::StaleCache::slurp("$dir/logs/nginx.pid") // '') =~ /(\d+)/ ? $1 : 0;
ok($master, 'nginx is running');
my @procs = ($pid, Test::StaleCache::children_of($pid), $master,
             $master ? Test::StaleCache::children_of($master) : ());
cmp_ok(scalar @procs, '>=', 5, 'run.sh, redis, the backend, nginx and its workers: ' . scalar @procs);
kill 'INT', -$pid;
my $status = Test::StaleCache::wait_pid($pid, 20);
is($status, 0, 'Ctrl-C: run.sh exits 0');
like(Test::StaleCache::slurp($out) // '', qr/^stopped\.$/m, 'and says stopped');
my @left = grep { !Test::StaleCache::proc_dead($_) } @procs;
is("@left", '', 'no process left');
for my $name (sort keys %port) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port{$name});
    ok(!$s, "nothing listens on $name");
}
kill 'KILL', @left if @left;
done_testing();
