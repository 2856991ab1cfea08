package Test::StaleCache;
# Small Test::Nginx::Socket replacement for the stale-cache module tests.
# Parses Test::Nginx style blocks with Test::Base, runs a private nginx,
# redis-server and python backend (t/lib/backend.py).  See t/README.md.
use strict;
use warnings;
use Test::More ();
use Test::Base ();    # only the block parser; no import (no END hooks)
use IO::Socket::INET;
use IO::Select;
use IO::Poll qw(POLLIN POLLOUT POLLERR POLLHUP);
use Socket qw(PF_INET SOCK_STREAM sockaddr_in inet_aton);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use POSIX qw(WNOHANG EAGAIN EINPROGRESS EINTR EWOULDBLOCK);
use Time::HiRes qw(time sleep);
use File::Path qw(make_path remove_tree);
use File::Basename qw(dirname basename);
use File::Copy ();
use Cwd qw(abs_path);
use JSON::PP ();
use Digest::MD5 ();

my @TEST_MORE = qw(ok is isnt like unlike is_deeply cmp_ok diag note pass fail
                   plan done_testing skip explain BAIL_OUT subtest);
our @EXPORT = qw(run_tests repeat_each blocks no_shuffle no_long_string
                 redis backend_hits backend_log backend_config backend_pattern
                 responses error_log_text http_get http_request stop_redis
                 start_redis fake_redis_blackhole nginx_pids pick_port sleep_ms sleep_until
                 wait_until wait_log wait_backend_hits
                 redis_locations drop_in_config base_config redis_key redis_calls
                 error_log_count fill_and_stale concurrent_get statuses redis2_locations
                 refreshed metrics metric
                 start_nodes node_ports node_pids node_prefix kill_node node_log_text fleet_get
                 time_scale nginx_t_output);

my $ROOT     = abs_path(dirname(__FILE__) . '/../../..');
my $SERVROOT = $ENV{TEST_NGINX_SERVROOT} || "$ROOT/t/servroot";
my $NGINX    = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $MODDIR   = $ENV{TEST_NGINX_MODULES_DIR} || '/usr/lib/nginx/modules';
my $REDIS    = $ENV{TEST_NGINX_REDIS_SERVER} || '/usr/bin/redis-server';
my $PYTHON   = $ENV{TEST_NGINX_PYTHON} || (-x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3');
my $OUR_MOD  = $ENV{STALE_CACHE_MODULE} || 'build/ngx_http_stale_cache_module.so';
$OUR_MOD = "$ROOT/$OUR_MOD" unless $OUR_MOD =~ m{^/};
my @STOCK_MODS = qw(ndk_http_module.so ngx_http_set_misc_module.so ngx_http_echo_module.so
                    ngx_http_srcache_filter_module.so);
# more load_module lines, e.g. a sanitizer or a module under test next to ours
my @EXTRA_MODS = map { m{^/} ? $_ : "$ROOT/$_" } split ' ', $ENV{TEST_NGINX_EXTRA_MODULES} // '';
# Ports come from here; the default stays below the ephemeral range (32768-60999), so
# outgoing connections never take them.
my ($PORT_LO, $PORT_HI) = port_range($ENV{TEST_NGINX_PORT_RANGE} // '20000-32000');
# TEST_NGINX_VALGRIND=1: every nginx of the run (the block's and the fleet nodes) runs under
# valgrind's memcheck; the file fails "valgrind: 0 errors" when any process had an error.
my $VALGRIND = $ENV{TEST_NGINX_VALGRIND} ? 1 : 0;
my $NOFILE = 8192;    # worker_rlimit_nofile
# Factor of every deadline the harness owns (nginx start and stop, wait_until and its
# wrappers, --- wait_for, client timeouts): ~10 under valgrind, where nginx is that much slower.
my $TIME_SCALE = time_scale_of($ENV{TEST_NGINX_TIME_SCALE} // ($VALGRIND ? 10 : 1));
$ENV{TEST_NGINX_TIME_SCALE} = $TIME_SCALE;

my $PARENT = $$;
my (%PORT, %USED_PORT, $SPEC, $REPEAT, $STARTED, $MOD_COPY);
my ($NGINX_PID, $REDIS_PID, $BACKEND_PID, $BLACKHOLE_PID);
my @NODES;    # extra nginx instances of the block: { pid, port, prefix, log_offset }
my (%VG_OWNER, $VG_CHECKED);    # valgrind mode: master pid => block name; check done
my ($CUR_NAME, $LOG_OFFSET, @RESPONSES, $TIMEOUT) = ('', 0);
our ($TEST_NGINX_SERVER_PORT, $TEST_NGINX_REDIS_PORT, $TEST_NGINX_BACKEND_PORT,
     $TEST_NGINX_SERVROOT, $TEST_NGINX_HTML_DIR);

# ---------------------------------------------------------------- import ---
sub import {
    my $caller = caller;
    setup_env();
    no strict 'refs';
    *{"${caller}::$_"} = \&{"Test::StaleCache::$_"} for @EXPORT;
    *{"${caller}::$_"} = \&{"Test::More::$_"} for @TEST_MORE;
    for my $v (qw(SERVER_PORT REDIS_PORT BACKEND_PORT SERVROOT HTML_DIR)) {
        *{"${caller}::TEST_NGINX_$v"} = \${"Test::StaleCache::TEST_NGINX_$v"};
        *{"main::TEST_NGINX_$v"}      = \${"Test::StaleCache::TEST_NGINX_$v"};
    }
    strict->import;
    warnings->import;
}

sub setup_env {
    return if $PORT{nginx};
    $PORT{$_} = pick_port() for qw(nginx redis backend);
    $TEST_NGINX_SERVER_PORT  = $ENV{TEST_NGINX_SERVER_PORT}  = $PORT{nginx};
    $TEST_NGINX_REDIS_PORT   = $ENV{TEST_NGINX_REDIS_PORT}   = $PORT{redis};
    $TEST_NGINX_BACKEND_PORT = $ENV{TEST_NGINX_BACKEND_PORT} = $PORT{backend};
    $TEST_NGINX_SERVROOT     = $ENV{TEST_NGINX_SERVROOT}     = $SERVROOT;
    $TEST_NGINX_HTML_DIR     = $ENV{TEST_NGINX_HTML_DIR}     = "$SERVROOT/html";
    $SIG{PIPE} = 'IGNORE';
    $SIG{$_} = sub { exit 130 } for qw(INT TERM HUP);    # END cleans up
    raise_nofile($NOFILE);
}

sub time_scale_of {
    my $v = shift;
    die "TEST_NGINX_TIME_SCALE: \"$v\" is not a number >= 1\n"
        unless $v =~ /^\s*(\d+(?:\.\d*)?|\.\d+)\s*$/ && $1 >= 1;
    return $1 + 0;
}

# The factor of the harness's deadlines (TEST_NGINX_TIME_SCALE; 10 under valgrind, else 1), for
# a test's own wall-clock bounds: cmp_ok($took, '<=', 1.5 * time_scale()).
sub time_scale { $TIME_SCALE }

sub port_range {
    my $spec = shift;
    my ($lo, $hi) = $spec =~ /^\s*(\d+)\s*-\s*(\d+)\s*$/
        or die "TEST_NGINX_PORT_RANGE: \"$spec\" is not LOW-HIGH (e.g. 20000-32000)\n";
    die "TEST_NGINX_PORT_RANGE: \"$spec\" must be within 1024-65535, LOW < HIGH\n"
        unless $lo >= 1024 && $hi <= 65535 && $lo < $hi;
    return ($lo, $hi);
}

# A free port of TEST_NGINX_PORT_RANGE that this process has not handed out yet.
sub pick_port {
    for (1 .. 500) {
        my $p = $PORT_LO + int(rand($PORT_HI - $PORT_LO + 1));
        next if $USED_PORT{$p};
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p,
                                      Listen => 1, ReuseAddr => 1) or next;
        close $s;
        $USED_PORT{$p} = 1;
        return $p;
    }
    die "cannot find a free port in $PORT_LO-$PORT_HI (TEST_NGINX_PORT_RANGE)\n";
}

sub raise_nofile {
    my $want = shift;
    my $cur = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 0;
    return if $cur >= $want;
    system("prlimit --pid $$ --nofile=$want: >/dev/null 2>&1") if -x '/usr/bin/prlimit';
    $cur = POSIX::sysconf(POSIX::_SC_OPEN_MAX()) || 0;
    Test::More::diag("RLIMIT_NOFILE is $cur; high --- concurrency may fail (ulimit -n $want)")
        if $cur < $want;
}

# ------------------------------------------------------- spec / block API ---
{
    package Test::StaleCache::Spec;
    our @ISA = ('Test::Base');
    package Test::StaleCache::Spec::Filter;
    our @ISA = ('Test::Base::Filter');
    # `--- x eval`: evaluate in package main (exported helpers and
    # $TEST_NGINX_* visible) and die instead of silently returning $@
    sub eval {
        my ($self, $code) = @_;
        my @r = Test::StaleCache::eval_in_main($code, 'eval section');
        die "eval section failed: $@" if $@;
        return @r;
    }
}

sub eval_in_main {
    my ($code, $where) = @_;
    $where =~ s/["\n]/ /g;
    return eval "package main; use strict; use warnings;\n#line 1 \"$where\"\n$code";
}

sub spec { $SPEC ||= Test::StaleCache::Spec->new }
sub blocks { my @b = @{ spec()->block_list }; wantarray ? @b : scalar @b }
sub repeat_each { $REPEAT = shift if @_; $REPEAT || 1 }
sub no_shuffle { }
sub no_long_string { }

sub run_tests {
    my $tb = Test::More->builder;
    start_services();
    for my $rep (1 .. repeat_each()) {
        for my $blk (blocks()) {
            $CUR_NAME = $blk->name . ($rep > 1 ? " (repeat $rep)" : '');
            my $ok = eval { run_block($blk); 1 };
            my $err = $@;
            eval { stop_nginx() };
            unless ($ok) {
                Test::More::fail("$CUR_NAME - harness error");
                Test::More::diag($err);
            }
        }
    }
    valgrind_check();
    $tb->done_testing unless $tb->has_plan;
}

# ------------------------------------------------------------- processes ---
sub spawn {
    my ($out, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    return $pid if $pid;
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE ALRM CHLD);
    open STDIN, '<', '/dev/null';
    open STDOUT, '>>', $out or POSIX::_exit(126);
    open STDERR, '>&', \*STDOUT;
    exec { $cmd[0] } @cmd or print STDERR "exec $cmd[0] failed: $!\n";
    POSIX::_exit(127);
}

sub proc_dead {
    my $pid = shift;
    return 1 unless kill 0, $pid;
    open my $fh, '<', "/proc/$pid/stat" or return 1;
    my $st = <$fh> // '';
    return $st =~ /\)\s+Z/;    # zombie
}

sub wait_pid {    # returns exit status, or undef if still running after $timeout
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        return 0 if $r < 0;    # not our child / already reaped
        return undef if time > $deadline;
        sleep 0.01;
    }
}

sub kill_wait {
    my ($pid, $sig, $timeout) = @_;
    return unless $pid;
    kill $sig, $pid;
    return if defined wait_pid($pid, $timeout);
    kill 'KILL', $pid;
    wait_pid($pid, 5);
}

sub children_of {
    my $ppid = shift;
    my @kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $s = <$fh> // next;
        my ($state, $pp) = $s =~ /\)\s+(\S)\s+(\d+)/ or next;
        push @kids, ($stat =~ m{/proc/(\d+)/})[0] if $pp == $ppid && $state ne 'Z';
    }
    @kids = sort { $a <=> $b } @kids;
    return @kids;
}

sub nginx_pids { $NGINX_PID ? ($NGINX_PID, children_of($NGINX_PID)) : () }

sub start_services {
    return if $STARTED++;
    check_valgrind() if $VALGRIND;
    remove_tree($SERVROOT);
    make_path(map "$SERVROOT/$_", qw(conf logs html redis),
              map "temp/$_", qw(client_body proxy fastcgi uwsgi scgi));
    # nginx loads a snapshot of the module: a rebuild that rewrites the .so
    # in place must not crash (SIGBUS) the running workers
    if ($ENV{TEST_NGINX_NO_STALE_CACHE}) {
    } elsif (-f $OUR_MOD) {
        make_path("$SERVROOT/modules");
        $MOD_COPY = "$SERVROOT/modules/" . basename($OUR_MOD);
        File::Copy::copy($OUR_MOD, $MOD_COPY) or die "copy $OUR_MOD: $!\n";
    } else {
        Test::More::diag("$OUR_MOD not found: not loading the stale cache module");
    }
    check_modules();
    start_redis();
    $BACKEND_PID = spawn("$SERVROOT/logs/backend.log", $PYTHON,
                         "$ROOT/t/lib/backend.py", '--port', $PORT{backend});
    my $deadline = time + 10;
    until (eval { backend_call('GET', '/__backend/hits')->{status} == 200 }) {
        die "backend did not start (see $SERVROOT/logs/backend.log)\n"
            if time > $deadline || proc_dead($BACKEND_PID);
        sleep 0.05;
    }
}

# Missing module files would otherwise show up as a dlopen() error in every block.
sub check_modules {
    my @missing = grep { !-f } map({ "$MODDIR/$_" } @STOCK_MODS), @EXTRA_MODS;
    return unless @missing;
    die "module file(s) not found: @missing\n"
      . "(stock modules come from TEST_NGINX_MODULES_DIR, default /usr/lib/nginx/modules;"
      . " extra ones from TEST_NGINX_EXTRA_MODULES)\n";
}

# nginx -t output when a module was built for another nginx: a sentence saying which module,
# which versions and what to set, or undef.
sub module_mismatch {
    my $out = shift;
    my $v = sub { my $n = shift; sprintf '%d.%d.%d', int($n / 1000000), int($n / 1000) % 1000, $n % 1000 };
    my $bin = ((`$NGINX -v 2>&1` // '') =~ m{nginx/(\S+)})[0] // 'unknown';
    my $hint = "Stock modules come from TEST_NGINX_MODULES_DIR ($MODDIR), ours from "
             . "STALE_CACHE_MODULE ($OUR_MOD, built against NGINX_SOURCE_DIR); extra ones from "
             . "TEST_NGINX_EXTRA_MODULES. All must be built for the nginx in TEST_NGINX_BINARY.";
    if ($out =~ /module "([^"]+)" version (\d+) instead of (\d+)/) {
        return sprintf "%s was built for nginx %s, but TEST_NGINX_BINARY (%s) is nginx %s. %s",
                       $1, $v->($2), $NGINX, $v->($3), $hint;
    }
    if ($out =~ /module "([^"]+)" is not binary compatible/) {
        return "$1 is not binary compatible with TEST_NGINX_BINARY ($NGINX, nginx $bin): "
             . "it was built with other configure flags. $hint";
    }
    return undef;
}

sub start_redis {
    close_blackhole();
    return if $REDIS_PID && !proc_dead($REDIS_PID);
    $REDIS_PID = spawn("$SERVROOT/logs/redis.log", $REDIS, '--port', $PORT{redis},
                       '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                       '--daemonize', 'no', '--dir', "$SERVROOT/redis",
                       '--protected-mode', 'no');
    my $deadline = time + 5;
    until ((eval { redis('PING') } // '') eq 'PONG') {
        die "redis-server did not start (see $SERVROOT/logs/redis.log)\n"
            if time > $deadline || proc_dead($REDIS_PID);
        sleep 0.02;
    }
}

sub stop_redis { kill_wait($REDIS_PID, 'TERM', 5); undef $REDIS_PID }

# a TCP listener on the redis port that accepts and never answers
sub fake_redis_blackhole {
    stop_redis();
    close_blackhole();
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $PORT{redis},
                                  Listen => 1024, ReuseAddr => 1, Timeout => 1)
        or die "blackhole listen on $PORT{redis}: $!\n";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP ALRM);
        alarm 900;
        my @held;
        while (getppid() == $PARENT) { my $c = $l->accept; push @held, $c if $c }
        POSIX::_exit(0);
    }
    close $l;
    $BLACKHOLE_PID = $pid;
}

sub close_blackhole { kill_wait($BLACKHOLE_PID, 'TERM', 5); undef $BLACKHOLE_PID }

# The command that runs nginx from $prefix: nginx itself, or nginx under valgrind in
# TEST_NGINX_VALGRIND mode (nginx -t never runs under valgrind).
sub nginx_cmd {
    my $prefix = shift;
    my @nginx = ($NGINX, '-p', "$prefix/", '-c', 'conf/nginx.conf');
    return @nginx unless $VALGRIND;
    return (valgrind_cmd(), @nginx);
}

# ------------------------------------------------------------- valgrind ---
# valgrind follows the workers without --trace-children: nginx forks them, it never execs
# (except for a binary upgrade, which no test does). One log per process, named by its pid.
#
# valgrind keeps a few descriptors above the client's limit and lets the client set
# RLIMIT_NOFILE to exactly that limit only: nginx's worker_rlimit_nofile would fail
# ([alert] setrlimit ... Operation not permitted) unless valgrind starts with the soft limit
# at worker_rlimit_nofile and a hard limit above it (prlimit runs it so, in the same process).
sub valgrind_cmd {
    my $bin = $ENV{TEST_NGINX_VALGRIND_BINARY} || 'valgrind';
    my $supp = "$ROOT/t/valgrind.supp";
    return ('prlimit', "--nofile=$NOFILE:", $bin, '--tool=memcheck',
            "--log-file=$SERVROOT/logs/valgrind.%p.log", '--num-callers=30', '--keep-debuginfo=yes',
            ($ENV{TEST_NGINX_VALGRIND_LEAKS}
             ? ('--leak-check=full', '--show-leak-kinds=definite', '--errors-for-leak-kinds=definite')
             : '--leak-check=no'),
            (-f $supp ? "--suppressions=$supp" : ()),
            split(' ', $ENV{TEST_NGINX_VALGRIND_OPTS} // ''));
}

# Stops the run at once when valgrind mode cannot work.
sub check_valgrind {
    my $bin = $ENV{TEST_NGINX_VALGRIND_BINARY} || 'valgrind';
    my $v = `$bin --version 2>/dev/null` // '';
    Test::More::BAIL_OUT("TEST_NGINX_VALGRIND=1 but \"$bin\" does not run (apt-get install valgrind,"
                         . " or set TEST_NGINX_VALGRIND_BINARY)") unless $v =~ /valgrind/;
    my $hard = `prlimit --pid $$ --nofile --raw --noheadings -o HARD 2>/dev/null` // '';
    Test::More::BAIL_OUT("TEST_NGINX_VALGRIND=1 needs prlimit (util-linux)") unless $hard =~ /\S/;
    Test::More::diag("RLIMIT_NOFILE hard limit $hard is below $NOFILE + valgrind's reserve:"
                     . " nginx will log [alert] setrlimit failed (ulimit -Hn 9000)")
        if $hard =~ /^\s*(\d+)/ && $1 < $NOFILE + 64;
}

# Error records of a valgrind log: the blocks of lines between "==pid== " blank lines whose
# first line is an error (what ERROR SUMMARY counts) rather than valgrind's own notes.
my $VG_ERROR = qr/^(?:Invalid[ ](?:read|write|free)|Mismatched[ ]free|Conditional[ ]jump
                   |Syscall[ ]param|Source[ ]and[ ]destination[ ]overlap|Argument[ ].*[ ]fishy
                   |Use[ ]of[ ]uninitialised|Uninitialised|.*[ ]are[ ]definitely[ ]lost)/x;

sub valgrind_records {
    my $text = shift;
    my (@records, @cur);
    for my $line (split /\n/, $text) {
        my ($body) = $line =~ /^==\d+==\s?(.*)$/ or next;
        if ($body =~ /\S/) { push @cur, $body; next }
        push @records, [@cur] if @cur && $cur[0] =~ $VG_ERROR;
        @cur = ();
    }
    push @records, [@cur] if @cur && $cur[0] =~ $VG_ERROR;
    return @records;
}

# After the file's last block (nginx and any nodes stopped): one test over every valgrind log
# of the run. It fails on a non-zero ERROR SUMMARY or on any error record (a worker killed
# with -9 writes no summary, its records count all the same) and shows the first records.
sub valgrind_check {
    return if !$VALGRIND || $VG_CHECKED++;
    my @logs = sort glob "$SERVROOT/logs/valgrind.*.log";
    my ($errors, $unfinished, $suppressed, @shown) = (0, 0, 0);
    my $n_records = 0;
    for my $log (@logs) {
        my $text = slurp($log) // next;
        my ($pid) = $log =~ /valgrind\.(\d+)\.log$/;
        my ($ppid) = $text =~ /Parent PID: (\d+)/;
        my $owner = $VG_OWNER{$pid} // ($ppid && $VG_OWNER{$ppid}) // '?';
        my $role = $VG_OWNER{$pid} ? 'master' : 'worker';
        my @rec = valgrind_records($text);
        $n_records += @rec;
        if ($text =~ /ERROR SUMMARY: (\d+) errors/) {
            $errors += $1;
        } else {
            $unfinished++;
        }
        $suppressed += $1 if $text =~ /ERROR SUMMARY: \d+ errors from \d+ contexts \(suppressed: (\d+)/;
        for my $r (@rec) {
            push @shown, "--- " . basename($log) . " ($role of $owner)\n" . join("\n", @$r)
                if @shown < 5;
        }
    }
    my $ok = Test::More::ok(@logs && !$errors && !$n_records, 'valgrind: 0 errors');
    Test::More::diag("no valgrind log in $SERVROOT/logs") unless @logs;
    Test::More::diag("$errors errors in ERROR SUMMARY lines, $n_records error records in "
                     . scalar(@logs) . " logs ($SERVROOT/logs/valgrind.*.log); first ones:\n"
                     . join("\n", @shown)) unless $ok || !@logs;
    Test::More::note(scalar(@logs) . " valgrind logs, $unfinished without ERROR SUMMARY"
                     . " (processes killed with -9), $suppressed errors suppressed (t/valgrind.supp)");
}

sub start_nginx {
    my $workers = shift;
    unlink "$SERVROOT/logs/nginx.pid";
    $NGINX_PID = spawn("$SERVROOT/logs/nginx.stderr", nginx_cmd($SERVROOT));
    $VG_OWNER{$NGINX_PID} = $CUR_NAME;
    my $deadline = time + 10 * $TIME_SCALE;
    while (time < $deadline) {
        if (defined wait_pid($NGINX_PID, 0)) {
            undef $NGINX_PID;
            return 0;
        }
        my $pid = slurp("$SERVROOT/logs/nginx.pid") // '';
        # pid file is written after the listening sockets are open
        return 1 if $pid =~ /^(\d+)/ && $1 == $NGINX_PID
                    && children_of($NGINX_PID) >= $workers;
        sleep 0.01;
    }
    return 0;
}

sub stop_nginx {
    stop_nodes();
    return unless $NGINX_PID;
    my @workers = children_of($NGINX_PID);
    kill_wait($NGINX_PID, 'TERM', 10 * $TIME_SCALE);
    undef $NGINX_PID;
    my $deadline = time + 5 * $TIME_SCALE;
    sleep 0.01 while time < $deadline && grep { !proc_dead($_) } @workers;
    kill 'KILL', grep { !proc_dead($_) } @workers;
}

# ------------------------------------------------------------------ fleet ---
# More nginx instances for the block ("nodes"), as a fleet shares one Redis and one backend:
# node 0 is the block's nginx; nodes 1..N-1 run the same nginx.conf from their own prefix
# (servroot/node<i>: logs, pid, temp files), on their own port, with their own master,
# workers and shared memory zones. They are stopped with the block's nginx.
sub start_nodes {
    my $n = shift;
    my $conf = slurp("$SERVROOT/conf/nginx.conf") // die "no nginx.conf\n";
    for my $i (scalar(@NODES) + 1 .. $n - 1) {
        my $prefix = "$SERVROOT/node$i";
        remove_tree($prefix);
        make_path(map "$prefix/$_", qw(conf logs),
                  map "temp/$_", qw(client_body proxy fastcgi uwsgi scgi));
        symlink("$SERVROOT/html", "$prefix/html") or die "symlink html: $!\n";    # one html/
        my $port = pick_port();
        (my $c = $conf) =~ s/listen 127\.0\.0\.1:$PORT{nginx} /listen 127.0.0.1:$port /
            or die "no listen line of port $PORT{nginx} in nginx.conf\n";
        open my $fh, '>', "$prefix/conf/nginx.conf" or die "$prefix/conf/nginx.conf: $!\n";
        print $fh $c;
        close $fh;
        my $pid = spawn("$prefix/logs/nginx.stderr", nginx_cmd($prefix));
        $VG_OWNER{$pid} = "$CUR_NAME (node $i)";
        my $node = { pid => $pid, port => $port, prefix => $prefix, log_offset => 0 };
        push @NODES, $node;
        my $deadline = time + 10 * $TIME_SCALE;
        until ((slurp("$prefix/logs/nginx.pid") // '') =~ /^$pid\b/ && children_of($pid) >= 1) {
            die "node $i did not start (see $prefix/logs/)\n"
                if time > $deadline || defined wait_pid($pid, 0);
            sleep 0.01;
        }
    }
    return node_ports();
}

# Ports of node 0 (the block's nginx) and the started nodes.
sub node_ports { ($PORT{nginx}, map { $_->{port} } @NODES) }

# (master, workers...) of node $i (0: the block's nginx).
sub node_pids {
    my $i = shift;
    return nginx_pids() if !$i;
    my $node = $NODES[$i - 1] or return ();
    return () if !$node->{pid} || proc_dead($node->{pid});
    return ($node->{pid}, children_of($node->{pid}));
}

# The prefix directory of node $i (0: the block's nginx): conf/, logs/.
sub node_prefix { my $i = shift; $i ? $NODES[$i - 1]{prefix} : $SERVROOT }

# kill -9 of a whole node (master and workers at once), as a machine or container dying.
sub kill_node {
    my $i = shift;
    my $node = $NODES[$i - 1] or die "no node $i\n";
    my @pids = node_pids($i);
    kill 'KILL', @pids;
    wait_pid($node->{pid}, 5 * $TIME_SCALE);
    my $deadline = time + 5 * $TIME_SCALE;
    sleep 0.01 while time < $deadline && grep { !proc_dead($_) } @pids;
    $node->{pid} = undef;
}

sub node_log_text {
    my $i = shift;
    return error_log_text() if !$i;
    slurp("$NODES[$i - 1]{prefix}/logs/error.log", 0) // '';
}

# GET $path $n times at once, round-robin over the nodes (connection j to node j % nodes);
# each response also has `node`.
sub fleet_get {
    my ($path, $n, $headers, $timeout, $only) = @_;    # $only: [node indexes] to use
    my @all = node_ports();
    my @ports = $only ? @all[@$only] : @all;
    my $req = build_request("GET $path", $headers);
    my @index = $only ? @$only : 0 .. $#all;
    my @jobs = map { { port => $ports[$_ % @ports], reqs => [$req], node => $index[$_ % @ports] } }
               0 .. $n - 1;
    my @r = run_jobs(\@jobs, ($timeout // 10) * $TIME_SCALE);
    $r[$_]{node} = $jobs[$_]{node} for 0 .. $#r;
    return @r;
}

sub stop_nodes {
    for my $node (@NODES) {
        next unless $node->{pid};
        my @workers = children_of($node->{pid});
        kill_wait($node->{pid}, 'TERM', 10 * $TIME_SCALE);
        my $deadline = time + 5 * $TIME_SCALE;
        sleep 0.01 while time < $deadline && grep { !proc_dead($_) } @workers;
        kill 'KILL', grep { !proc_dead($_) } @workers;
    }
    @NODES = ();
}

sub cleanup {
    return unless $$ == $PARENT;
    local ($?, $@);
    eval { stop_nginx() };
    eval { close_blackhole() };
    eval { stop_redis() };
    eval { kill_wait($BACKEND_PID, 'TERM', 5) };
    undef $BACKEND_PID;
    # a file that died before the end of run_tests, or that only used start_nodes
    valgrind_check() if $STARTED;
}

END { cleanup() }

sub slurp {
    my ($file, $offset) = @_;
    open my $fh, '<:raw', $file or return undef;
    seek $fh, $offset, 0 if $offset;
    local $/;
    return scalar <$fh>;
}

# ----------------------------------------------------------------- redis ---
sub sock_read_until {    # read into $$buf until $cond->() is true
    my ($s, $buf, $cond, $deadline) = @_;
    my $sel = IO::Select->new($s);
    until ($cond->()) {
        my $left = $deadline - time;
        die "redis: timeout\n" if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($s, $$buf, 65536, length $$buf);
        die "redis: connection closed\n" unless $n;
    }
}

sub resp_parse {
    my ($s, $buf, $deadline) = @_;
    sock_read_until($s, $buf, sub { index($$buf, "\r\n") >= 0 }, $deadline);
    $$buf =~ s/\A(.)(.*?)\r\n//s;
    my ($type, $v) = ($1, $2);
    return $v if $type eq '+';
    return $v + 0 if $type eq ':';
    die "redis error: $v\n" if $type eq '-';
    if ($type eq '$') {
        return undef if $v < 0;
        sock_read_until($s, $buf, sub { length($$buf) >= $v + 2 }, $deadline);
        my $str = substr($$buf, 0, $v);
        substr($$buf, 0, $v + 2, '');
        return $str;
    }
    if ($type eq '*') {
        return undef if $v < 0;
        return [map { resp_parse($s, $buf, $deadline) } 1 .. $v];
    }
    die "redis: bad reply type '$type'\n";
}

sub redis { resp_to($PORT{redis}, @_) }

# One command to the RESP server on 127.0.0.1:$port (the harness's Redis, a fake one, a
# cluster node); its reply (dies on an error reply).
sub resp_to {
    my ($port, @args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Timeout => 3) or die "redis $port: cannot connect: $!\n";
    for (@args) { $_ //= ''; utf8::downgrade($_, 1) or utf8::encode($_) }
    my $req = '*' . @args . "\r\n" . join '', map { '$' . length($_) . "\r\n$_\r\n" } @args;
    while (length $req) {
        my $n = syswrite($s, $req) // die "redis: write: $!\n";
        substr($req, 0, $n, '');
    }
    my $buf = '';
    return resp_parse($s, \$buf, time + 5);
}

sub split_cmd {    # `SET "a b" 'c' d\x00` -> list (double quotes: \n \r \t \xHH)
    my $line = shift;
    my @a;
    while ($line =~ /\G\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+))/gc) {
        if (defined $1) {
            (my $v = $1) =~ s/\\(x[0-9a-fA-F]{2}|.)/unescape_one($1)/ge;
            push @a, $v;
        } else {
            push @a, $2 // $3;
        }
    }
    return @a;
}

sub unescape_one {
    my $c = shift;
    return chr hex substr($c, 1) if $c =~ /^x/;
    return { n => "\n", r => "\r", t => "\t", 0 => "\0" }->{$c} // $c;
}

sub fmt_reply {
    my $r = shift;
    return '(nil)' unless defined $r;
    return '[' . join(', ', map { fmt_reply($_) } @$r) . ']' if ref $r eq 'ARRAY';
    return $r;
}

# --------------------------------------------------------------- backend ---
sub uri_escape { my $s = shift; $s =~ s/([^A-Za-z0-9\-_.~\/])/sprintf '%%%02X', ord $1/ge; $s }

sub backend_call {
    my ($method, $target) = @_;
    my $raw = "$method $target HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            . "Content-Length: 0\r\n\r\n";
    my ($r) = run_jobs([{ port => $PORT{backend}, reqs => [{ raw => $raw }] }], 10);
    die "backend $method $target: $r->{error}\n" if $r->{error};
    return $r;
}

sub backend_hits {
    my $path = shift;
    my $r = backend_call('GET', '/__backend/hits' . (defined $path ? '?path=' . uri_escape($path) : ''));
    return $r->{body} + 0;
}

sub backend_log {
    my $path = shift;
    my $r = backend_call('GET', '/__backend/log' . (defined $path ? '?path=' . uri_escape($path) : ''));
    return map { JSON::PP->new->decode($_) } grep { /\S/ } split /\n/, $r->{body};
}

# backend_config('/x', delay => 1, status => 500, body => '...', header => ['A: b'])
sub backend_config {
    my ($path, %o) = @_;
    my @q = ('path=' . uri_escape($path));
    for my $k (sort keys %o) {
        push @q, map { "$k=" . uri_escape($_) } ref $o{$k} ? @{ $o{$k} } : $o{$k};
    }
    backend_call('POST', '/__backend/config?' . join '&', @q);
    return;
}

sub backend_pattern {    # the deterministic body of X-Backend-Body-Size
    my $n = shift;
    my $p = join('', 'A' .. 'Z', 'a' .. 'z', 0 .. 9) . "-\n";
    return substr($p x (int($n / 64) + 1), 0, $n);
}

# ------------------------------------------------------------ HTTP client ---
sub parse_response {    # undef while incomplete
    my ($bref, $eof, $head) = @_;
    my $he = index($$bref, "\r\n\r\n");
    return undef if $he < 0;
    my ($sl, @lines) = split /\r\n/, substr($$bref, 0, $he);
    my ($status) = $sl =~ m{^HTTP/\d\.\d\s+(\d{3})}
        or return { error => "bad status line: $sl" };
    my (%h, @hl);
    for (@lines) {
        my ($n, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        push @hl, [$n, $v];
        $n = lc $n;
        $h{$n} = exists $h{$n} ? "$h{$n}, $v" : $v;
    }
    my $pos = $he + 4;
    my $body = '';
    if ($head || $status =~ /^(?:1..|204|304)$/) {
    } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        while (1) {
            my $e = index($$bref, "\r\n", $pos);
            return undef if $e < 0;
            my ($size) = substr($$bref, $pos, $e - $pos) =~ /^\s*([0-9a-fA-F]+)/
                or return { error => 'bad chunk size' };
            $size = hex $size;
            $pos = $e + 2;
            if ($size == 0) {    # skip trailers
                while (1) {
                    my $e2 = index($$bref, "\r\n", $pos);
                    return undef if $e2 < 0;
                    my $empty = $e2 == $pos;
                    $pos = $e2 + 2;
                    last if $empty;
                }
                last;
            }
            return undef if length($$bref) < $pos + $size + 2;
            $body .= substr($$bref, $pos, $size);
            $pos += $size + 2;
        }
    } elsif (defined $h{'content-length'}) {
        return undef if length($$bref) < $pos + $h{'content-length'};
        $body = substr($$bref, $pos, $h{'content-length'});
    } else {
        return undef unless $eof;
        $body = substr($$bref, $pos);
    }
    return { status => $status + 0, headers => \%h, header_list => \@hl, body => $body };
}

# Runs connections concurrently.  $jobs: [{port, reqs => [{raw, head}], ...}];
# the requests of one job are sent in sequence on one (keep-alive) connection.
# Returns all responses, in job order; each gets elapsed/start/end times.
sub run_jobs {
    my ($jobs, $timeout, $t0) = @_;
    $t0 //= time;
    my $poll = IO::Poll->new;
    my %conn;
    my $finish = sub {
        my ($c, $r) = @_;
        my $now = time;
        @$r{qw(elapsed start end index)} = ($now - $c->{t}, $c->{t} - $t0, $now - $t0,
                                          scalar @{ $c->{job}{resps} });
        push @{ $c->{job}{resps} }, $r;
        my $reqs = $c->{job}{reqs};
        if (!$r->{error} && ++$c->{i} < @$reqs
            && ($r->{headers}{connection} // '') !~ /close/i) {
            $c->{wbuf} = $reqs->[ $c->{i} ]{raw};
            $c->{rbuf} = '';
            $c->{t} = time;
            $poll->mask($c->{s}, POLLOUT);
            return;
        }
        $poll->remove($c->{s});
        close $c->{s};
        delete $conn{ $c->{id} };
        while (@{ $c->{job}{resps} } < @$reqs) {
            push @{ $c->{job}{resps} }, { error => 'not sent: connection closed', index =>
                                          scalar @{ $c->{job}{resps} } };
        }
    };
    my $id = 0;
    for my $job (@$jobs) {
        $job->{resps} = [];
        my $c = { id => $id++, job => $job, i => 0, wbuf => $job->{reqs}[0]{raw},
                  rbuf => '', t => time };
        $conn{ $c->{id} } = $c;
        socket($c->{s}, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
        fcntl($c->{s}, F_SETFL, fcntl($c->{s}, F_GETFL, 0) | O_NONBLOCK);
        if (!connect($c->{s}, sockaddr_in($job->{port}, inet_aton('127.0.0.1')))
            && $! != EINPROGRESS) {
            $finish->($c, { error => "connect failed: $!" });
            next;
        }
        $poll->mask($c->{s}, POLLOUT);
    }
    while (%conn) {
        my $now = time;
        my $next = $now + 1;
        for my $c (values %conn) {
            my $dl = $c->{t} + $timeout;
            if ($now >= $dl) {
                $finish->($c, { error => sprintf('timeout after %gs (received %d bytes)',
                                                 $timeout, length $c->{rbuf}) });
            } elsif ($dl < $next) {
                $next = $dl;
            }
        }
        last unless %conn;
        $poll->poll($next - $now);
        for my $c (values %conn) {
            my $ev = $poll->events($c->{s}) or next;
            my $req = $c->{job}{reqs}[ $c->{i} ];
            if (length $c->{wbuf}) {
                my $n = syswrite($c->{s}, $c->{wbuf});
                if (defined $n) {
                    substr($c->{wbuf}, 0, $n, '');
                    $poll->mask($c->{s}, POLLIN) unless length $c->{wbuf};
                } elsif ($! != EAGAIN && $! != EINTR && $! != EWOULDBLOCK) {
                    $finish->($c, { error => "write failed: $!" });
                }
                next;
            }
            my $n = sysread($c->{s}, my $chunk, 262144);
            next if !defined $n && ($! == EAGAIN || $! == EINTR || $! == EWOULDBLOCK);
            my $err = defined $n ? '' : "$!";
            $c->{rbuf} .= $chunk if $n;
            my $eof = !$n;
            my $r = parse_response(\$c->{rbuf}, $eof, $req->{head});
            if ($r) {
                $finish->($c, $r);
            } elsif ($eof) {
                $finish->($c, { error => sprintf('connection closed %s after %d bytes%s',
                                   'before a complete response', length $c->{rbuf},
                                   $err ? " ($err)" : '') , partial => $c->{rbuf} });
            }
        }
    }
    return map { @{ $_->{resps} } } @$jobs;
}

sub build_request {    # Test::Nginx style "GET /t" [+ "\nbody"] -> raw request
    my ($spec, $more, $keepalive) = @_;
    my ($first, $body) = split /\n/, $spec, 2;
    $first =~ s/^\s+|\s+$//g;
    my ($method, $uri, $proto) = split ' ', $first;
    die "bad request line '$first'\n" unless defined $uri;
    $proto //= 'HTTP/1.1';
    $body =~ s/\n\z// if defined $body;
    my @h;
    if (ref $more eq 'HASH') {
        @h = map { [$_, $more->{$_}] } sort keys %$more;
    } else {
        @h = map { /^([^:]+):\s?(.*)$/ ? [$1, $2] : () } grep { /\S/ } split /\n/, $more // '';
    }
    my %has = map { lc $_->[0] => 1 } @h;
    unshift @h, ['Host', 'localhost'] unless $has{host};
    push @h, ['Connection', $keepalive ? 'keep-alive' : 'close'] unless $has{connection};
    push @h, ['Content-Length', length($body // '')]
        if (defined $body && length $body || $method =~ /^(POST|PUT|PATCH)$/)
           && !$has{'content-length'} && !$has{'transfer-encoding'};
    my $raw = "$method $uri $proto\r\n" . join('', map { "$_->[0]: $_->[1]\r\n" } @h)
            . "\r\n" . ($body // '');
    utf8::downgrade($raw, 1) or utf8::encode($raw);
    return { raw => $raw, head => $method eq 'HEAD' };
}

sub http_request {
    my ($method, $path, $headers, $body) = @_;
    my $req = build_request("$method $path" . (defined $body ? "\n$body\n" : ''), $headers);
    return (run_jobs([{ port => $PORT{nginx}, reqs => [$req] }], $TIMEOUT || 10 * $TIME_SCALE))[0];
}

sub http_get { http_request('GET', @_[0, 1]) }

# Sends `GET $path` $n times at once, each on its own connection, with %$headers, to nginx's
# port or $port; returns the responses (each with start, end and elapsed, in seconds from the
# first send).
sub concurrent_get {
    my ($path, $n, $headers, $timeout, $port) = @_;
    my $req = build_request("GET $path", $headers);
    return run_jobs([map { { port => $port // $PORT{nginx}, reqs => [$req] } } 1 .. $n],
                    ($timeout // 10) * $TIME_SCALE);
}

# The Redis key srcache uses for a request under the documented configuration:
# md5("$http_user_agent|$uri"); the harness's client sends no User-Agent unless asked to.
sub redis_key { my ($uri, $ua) = @_; Digest::MD5::md5_hex(($ua // '') . "|$uri") }

# How many times Redis has run $cmd (INFO commandstats; CONFIG RESETSTAT clears it).
sub redis_calls {
    my $cmd = shift;
    my ($n) = redis('INFO', 'commandstats') =~ /^cmdstat_\Q$cmd\E:calls=(\d+)/m;
    return $n // 0;
}

# Lines of this block's error log matching $re.
sub error_log_count { my $re = shift; scalar grep { /$re/ } split /\n/, error_log_text() }

# The `set $cache_*` lines of lua-resty-cache's documented /api location, in order.
my @DOCUMENTED_SETS = (
    [lock => 'srcache_locks'], [ttl => '/redisttl'], [persist => '/redispersist'],
    [key => '"$http_user_agent|$uri"'], [stale => 100], [lock_exptime => 30],
    [backend_lock_timeout => 0.01], [lock_timeout => 3], [lock_timeout_wait => 0.06],
    [skip_fetch => '"X-Skip-Fetch"'],
);

# lua-resty-cache's documented /api location with the two-line change, proxying to the
# harness's backend, then the Redis locations: the one setup of the blocks. For observation
# it adds X-Cache, X-Store and X-Stale-Cache (the status header, on every answer) to the
# response and X-Status-Seen ($stale_cache_status) to the backend request. Options:
#   set     => { ttl => '/x', stale => 'abc', pass_ttl => 3, ... }: $cache_<name> values; a
#              documented one is replaced where it stands (undef drops it), others are added
#              after them
#   vars    => the `set` lines instead of the documented ones (text)
#   in      => more lines inside /api after the sets (text or arrayref); they may override them
#   fetch   => the srcache_fetch line(s) instead of the documented `if` line
#   ttl_cmd => the command of the native /redisttl location instead of `TTL $key`
#   after   => text after the locations (more locations)
#   variant => 'redis2': the locations of redis2/HttpRedis (the block needs `--- redis2`);
#              'redis2-legacy': the same without stale_cache_role (a config from before roles)
sub base_config {
    my (%o) = @_;
    my %set = %{ $o{set} // {} };
    my %documented = map { $_->[0] => 1 } @DOCUMENTED_SETS;
    my $sets = $o{vars} // join '',
        (map { my ($n, $v) = @$_; $v = $set{$n} if exists $set{$n};
               defined $v ? "        set \$cache_$n $v;\n" : '' } @DOCUMENTED_SETS),
        (map { "        set \$cache_$_ $set{$_};\n" } grep { !$documented{$_} } sort keys %set);
    my $in = ref $o{in} ? join("\n        ", @{ $o{in} }) : $o{in} // '';
    my $fetch = $o{fetch} // 'if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /redis $cache_key;}';
    my $variant = $o{variant} // '';
    my $locations = $variant eq 'redis2' ? redis2_locations()
                  : $variant eq 'redis2-legacy' ? redis2_locations('legacy')
                  : redis_locations();
    if (defined $o{ttl_cmd}) {
        $locations =~ s/stale_cache_redis_command TTL \$key;/$o{ttl_cmd}/ or die "no native TTL command\n";
    }
    return <<"_EOC_" . $locations . ($o{after} // '');
    location /api {
$sets        $in
        set_escape_uri \$escaped_key \$cache_key;
        stale_cache on;
        $fetch
        srcache_store PUT /redis2 key=\$escaped_key&exptime=105;
        add_header X-Cache \$srcache_fetch_status;
        add_header X-Store \$srcache_store_status;
        add_header X-Stale-Cache \$stale_cache_status always;
        proxy_set_header X-Status-Seen \$stale_cache_status;
        proxy_pass http://backend;
    }
_EOC_
}

# base_config with $extra inside /api (after the documented sets, so it can override them)
# and the Redis locations of $variant; needs `stale_cache_zone srcache_locks` in
# `--- http_config`.
sub drop_in_config {
    my ($extra, $variant) = @_;
    return base_config(in => $extra, variant => $variant);
}

# Fills $uri through a drop_in_config location (MISS, stored with TTL 105), then puts it in
# the stale window (EXPIRE 50). Afterwards the backend answers $uri as %cfg says (delay...).
sub fill_and_stale {
    my ($uri, $headers, %cfg) = @_;
    my $path = $uri =~ s/\?.*//r;
    my $r = http_get($uri, $headers);
    Test::More::is($r->{status}, 200, "fill $uri: status 200");
    Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', "fill $uri: MISS");
    Test::More::is($r->{body}, "backend GET $uri hit 1\n", "fill $uri: body of hit 1");
    my $key = redis_key($path, $headers && $headers->{'User-Agent'});
    my $ttl = redis('TTL', $key);
    Test::More::ok($ttl >= 100 && $ttl <= 105, "fill $uri: stored with TTL ~105 (got $ttl)");
    Test::More::is(redis('EXPIRE', $key, 50), 1, "fill $uri: EXPIRE 50 (stale window)");
    backend_config($path, %cfg) if %cfg;
    return $key;
}

# The documented internal Redis locations, written with the module's native directives:
# TTL and PERSIST and EXPIRE (raw replies), GET for srcache_fetch, SET + EXPIRE for
# srcache_store. Keys are md5 of the cache key, as in lua-resty-cache's configuration.
sub redis_locations {
    return <<'_EOC_';
    location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
    location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis; stale_cache_redis_command PERSIST $key; }
    location = /redisexpire { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis; stale_cache_redis_command EXPIRE $key $arg_ttl; }
    location = /redis { internal; set_md5 $redis_key $args;
        stale_cache_redis_pass redis; stale_cache_redis_command GET $redis_key; }
    location = /redis2 { internal; set_unescape_uri $exptime $arg_exptime;
        set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis;
        client_max_body_size 16m;
        stale_cache_redis_command SET $key $request_body;
        stale_cache_redis_command EXPIRE $key $exptime; }
_EOC_
}
# The same locations as lua-resty-cache's own configuration writes them, with redis2
# (redis2_query/redis2_pass) and HttpRedis (redis_pass), as in nginx-conf/drop-in-redis2.conf,
# with stale_cache_role on the fetch and store locations (without, given 'legacy': a
# configuration written before roles); a block using them says `--- redis2` so the harness
# loads those modules.
sub redis2_locations {
    my ($legacy) = @_;
    my $text = <<'_EOC_';
    location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query ttl $key; redis2_pass redis; }
    location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query persist $key; redis2_pass redis; }
    location = /redisexpire { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        redis2_query expire $key $arg_ttl; redis2_pass redis; }
    location = /redis { internal; stale_cache_role fetch; set_md5 $redis_key $args;
        redis_pass redis; }
    location = /redis2 { internal; stale_cache_role store;
        set_unescape_uri $exptime $arg_exptime; set_unescape_uri $key $arg_key; set_md5 $key;
        client_max_body_size 16m;
        redis2_query set $key $echo_request_body; redis2_query expire $key $exptime;
        redis2_pass redis; }
_EOC_
    $text =~ s/ stale_cache_role \w+;//g if $legacy;
    return $text;
}

# redis2 and HttpRedis for the nginx under test (see t/lib/RefModules.pm).
sub reference_modules { require RefModules; RefModules::ensure() }

# Responses counted by their X-Stale-Cache header ($stale_cache_status, see base_config),
# errors by their error.
sub statuses {
    my %n;
    $n{ $_->{headers}{'x-stale-cache'} // ($_->{error} ? "error: $_->{error}" : '(none)') }++ for @_;
    return \%n;
}

# True once the refresh of $uri has ended (its line is logged at the end) and Redis holds a
# copy of $key with its full expiry again (TTL over the 50 s fill_and_stale leaves).
sub refreshed {
    my ($uri, $key) = @_;
    return error_log_text() =~ /stale_cache: refresh of "\Q$uri\E" via / && redis('TTL', $key) > 50;
}

# GET $path (default /metrics, stale_cache_metrics): ({ 'name{labels}' => value }, the
# response, [lines that are neither a sample, a comment nor empty]).
sub metrics {
    my $r = http_get(shift // '/metrics');
    my (%m, @bad);
    for (split /\n/, $r->{body} // '') {
        next if /^#/ || !/\S/;
        if (/^(\S+) (\S+)$/) { $m{$1} = $2 } else { push @bad, $_ }
    }
    return (\%m, $r, \@bad);
}

# The value of one sample of /metrics, e.g. 'stale_cache_hot_evictions_total{zone="hot"}'
# (0 when absent).
sub metric { (metrics())[0]{ $_[0] } // 0 }

sub responses { @RESPONSES }

# A fixed sleep, for when the passing time is itself what a block tests (an entry ageing, a
# timeout elapsing). Anything else waits for its condition with wait_until.
sub sleep_ms { sleep($_[0] / 1000) }
sub sleep_until { my $t = shift; my $left = $t - time; sleep($left) if $left > 0 }

# Polls $cond (every 20 ms) until it returns true and returns its value. At the deadline
# ($timeout seconds, default 5, times TEST_NGINX_TIME_SCALE) it fails a test naming $what and
# returns false, so the block's own checks still run and show the state it stopped in.
sub wait_until {
    my ($cond, $timeout, $what) = @_;
    $timeout = ($timeout // 5) * $TIME_SCALE;
    $what //= 'a condition';
    my $t0 = time;
    my $deadline = $t0 + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        last if time >= $deadline;
        sleep 0.02;
    }
    my $name = $CUR_NAME ? "$CUR_NAME - " : '';
    my $scaled = $TIME_SCALE == 1 ? '' : " (x$TIME_SCALE, TEST_NGINX_TIME_SCALE)";
    Test::More::fail("${name}waited ${timeout}s$scaled for $what");
    return 0;
}

# Waits until this block's error log has a line matching $re.
sub wait_log {
    my ($re, $timeout) = @_;
    $re = qr/\Q$re\E/ unless ref $re;
    return wait_until(sub { error_log_text() =~ $re }, $timeout, "an error.log line matching $re");
}

# Waits until the backend has had at least $n hits of $path (see backend_hits).
sub wait_backend_hits {
    my ($path, $n, $timeout) = @_;
    return wait_until(sub { backend_hits($path) >= $n }, $timeout,
                      "$n backend hit(s) of " . ($path // 'any path'));
}

sub error_log_text { slurp("$SERVROOT/logs/error.log", $LOG_OFFSET) // '' }

# ------------------------------------------------------------ the block ---
sub subst {
    my $v = shift;
    return [map { subst($_) } @$v] if ref $v eq 'ARRAY';
    return { map { $_ => subst($v->{$_}) } keys %$v } if ref $v eq 'HASH';
    return $v if ref $v || !defined $v;
    $v =~ s/\$(TEST_NGINX_[A-Z0-9_]+)/exists $ENV{$1} ? $ENV{$1} : "\$$1"/ge;
    return $v;
}

sub idx { my ($v, $i) = @_; ref $v eq 'ARRAY' ? $v->[$i] : $v }
sub lines_of {
    my $v = shift;
    return () unless defined $v;
    return @$v if ref $v eq 'ARRAY';
    return ($v) if ref $v;
    return grep { /\S/ } split /\n/, $v;
}
sub seconds { my $v = shift // return; $v =~ /^\s*([\d.]+)\s*(ms)?/ ? ($2 ? $1 / 1000 : $1) : $v }

sub esc {
    my ($s, $max) = @_;
    $max //= 300;
    my $more = length($s) > $max ? '...(' . length($s) . ' bytes)' : '';
    $s = substr($s, 0, $max);
    $s =~ s/([^\x20-\x7e])/$1 eq "\n" ? '\n' : sprintf '\\x%02x', ord $1/ge;
    return "'$s'$more";
}

sub printable { my $s = shift; $s =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge; $s }

sub body_diff {
    my ($got, $exp) = @_;
    return '' if $got eq $exp;
    my $i = 0;
    $i++ while $i < length($got) && $i < length($exp) && substr($got, $i, 1) eq substr($exp, $i, 1);
    my $from = $i > 40 ? $i - 40 : 0;
    return sprintf("body differs: got %d bytes, expected %d, first difference at offset %d\n"
                   . "     got: %s\nexpected: %s", length $got, length $exp, $i,
                   esc(substr($got, $from, 200)), esc(substr($exp, $from, 200)));
}

sub as_regex {
    my $v = shift;
    return $v if ref $v eq 'Regexp';
    chomp $v;
    return qr/$v/s;
}

# checks of one response: list of [label, ok, diagnostic]
sub response_checks {
    my ($b, $r, $i) = @_;
    return (['request completed', 0, $r->{error}]) if $r->{error};
    my @c;
    my $code = idx($b->{error_code}, $i) // 200;
    $code =~ s/\s+//g;
    push @c, ['status code ok', $r->{status} == $code,
              "got status $r->{status}, expected $code; body: " . esc($r->{body}, 200)];
    if (defined(my $exp = idx($b->{response_body}, $i))) {
        my $d = body_diff($r->{body}, $exp);
        push @c, ['response_body - response is expected', !$d, $d];
    }
    if (defined(my $re = idx($b->{response_body_like}, $i))) {
        $re = as_regex($re);
        push @c, ['response_body_like - response is expected', scalar($r->{body} =~ $re),
                  "body " . esc($r->{body}) . " does not match $re"];
    }
    for my $line (lines_of(idx($b->{response_headers}, $i))) {
        if ($line =~ /^\s*!\s*([^:\s]+)\s*$/) {
            my $v = $r->{headers}{ lc $1 };
            push @c, ["header $1 absent", !defined $v, "header $1 present: '" . ($v // '') . "'"];
        } elsif ($line =~ /^\s*([^:\s]+)\s*:\s?(.*?)\s*$/) {
            my ($n, $e) = ($1, $2);
            my $v = $r->{headers}{ lc $n };
            push @c, ["header $n ok", defined $v && $v eq $e,
                      "header $n: got " . (defined $v ? "'$v'" : 'none') . ", expected '$e'"];
        }
    }
    for my $line (lines_of(idx($b->{response_headers_like}, $i))) {
        my ($n, $e) = $line =~ /^\s*([^:\s]+)\s*:\s?(.*?)\s*$/ or next;
        my $v = $r->{headers}{ lc $n };
        push @c, ["header $n like", defined $v && $v =~ /$e/,
                  "header $n: got " . (defined $v ? "'$v'" : 'none') . ", expected =~ /$e/"];
    }
    return @c;
}

sub write_conf {
    my $b = shift;
    my @mods = ((map { "$MODDIR/$_" } @STOCK_MODS), @EXTRA_MODS);
    push @mods, reference_modules() if defined $b->{redis2};
    push @mods, $MOD_COPY if $MOD_COPY;
    my $workers = $b->{workers} || 1;
    my $level = $b->{log_level} || 'debug';
    my $user = $> == 0 ? "user root;\n" : '';
    my $conf = ($MOD_COPY ? "# $MOD_COPY is a copy of $OUR_MOD\n" : '')
             . join('', map { "load_module $_;\n" } @mods) . <<"EOF";
${user}daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $NOFILE;
error_log logs/error.log $level;
pid logs/nginx.pid;
@{[ $b->{main_config} // '' ]}
events {
    worker_connections 4096;
}

http {
    access_log logs/access.log;
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;

    upstream backend {
        server 127.0.0.1:$PORT{backend};
        keepalive 32;
    }
    upstream redis {
        server 127.0.0.1:$PORT{redis};
        keepalive 16;
    }

@{[ $b->{http_config} // '' ]}
    server {
        listen 127.0.0.1:$PORT{nginx} backlog=4096;
        server_name localhost;
        root html;

@{[ $b->{config} // '' ]}
    }
}
EOF
    open my $fh, '>', "$SERVROOT/conf/nginx.conf" or die "nginx.conf: $!\n";
    print $fh $conf;
    close $fh;
}

# What the block's `nginx -t` printed (warnings included).
sub nginx_t_output { slurp("$SERVROOT/logs/nginx-t.out") // '' }

# Starts t/lib/fake_redis.py on $port (its log in the servroot); its pid, once it answers.
sub spawn_fake_redis {
    my ($port) = @_;
    my $pid = spawn("$SERVROOT/logs/fake_redis.log", $PYTHON, "$ROOT/t/lib/fake_redis.py",
                    '--port', $port);
    wait_until(sub { eval { resp_to($port, 'PING') eq 'PONG' } }, 10, 'the fake redis answers');
    return $pid;
}

# Starts t/lib/slow_proxy.py on $port, forwarding to $to what clients send $delay seconds
# late (its log in the servroot); its pid, once it accepts. @flags: '--connect-late'.
sub spawn_slow_proxy {
    my ($port, $to, $delay, @flags) = @_;
    my $pid = spawn("$SERVROOT/logs/slow_proxy.log", $PYTHON, "$ROOT/t/lib/slow_proxy.py",
                    '--port', $port, '--to', $to, '--delay', $delay, @flags);
    wait_until(sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") }, 10,
               'the slow proxy accepts');
    return $pid;
}

sub nginx_test {    # nginx -t: (ok, output)
    my $out = "$SERVROOT/logs/nginx-t.out";
    unlink $out;
    my $pid = spawn($out, $NGINX, '-p', "$SERVROOT/", '-c', 'conf/nginx.conf', '-t');
    my $st = wait_pid($pid, 30);
    if (!defined $st) { kill_wait($pid, 'KILL', 5); $st = -1 }
    return ($st == 0, slurp($out) // '');
}

sub write_user_files {
    my $text = shift // return;
    my (undef, @parts) = split /^>>> (\S+)[ \t]*\n/m, $text;
    while (my ($f, $content) = splice @parts, 0, 2) {
        my $path = "$SERVROOT/html/$f";
        make_path(dirname($path));
        open my $fh, '>:raw', $path or die "$path: $!\n";
        print $fh $content;
        close $fh;
    }
}

sub log_checks {
    my ($name, $b, $log, $implicit) = @_;
    for my $p (lines_of($b->{error_log})) {
        my $hit = ref $p ? $log =~ $p : index($log, $p) >= 0;
        Test::More::ok($hit, "$name - pattern \"$p\" should match a line in error.log");
    }
    for my $p (lines_of($b->{no_error_log})) {
        my ($line) = grep { ref $p ? $_ =~ $p : index($_, $p) >= 0 } split /\n/, $log;
        Test::More::ok(!defined $line, "$name - pattern \"$p\" should not match any line in error.log")
            or Test::More::diag("matched: $line");
    }
    return unless $implicit;
    my $expected = join ' ', map { "$_" } lines_of($b->{error_log});
    my @bad = grep {
        (/\[alert\]/ && $expected !~ /alert/) || (/\[emerg\]/ && $expected !~ /emerg/)
        || (/exited on signal/ && $expected !~ /signal/)
    } split /\n/, $log;
    Test::More::ok(!@bad, "$name - no alert/emerg/crash in error.log")
        or Test::More::diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
}

sub run_code {
    my ($name, $what, $code) = @_;
    return unless defined $code && $code =~ /\S/;
    my $ok = eval_in_main("$code\n;1", "$name --- $what");
    Test::More::ok(0, "$name - --- $what code died") or Test::More::diag($@) unless $ok;
}

sub run_block {
    my $blk = shift;
    my $name = $CUR_NAME;
    $blk->run_filters unless $blk->is_filtered;
    my %b;
    for my $sec (@{ $blk->_section_order }) {
        my $v = $blk->$sec;
        $b{$sec} = $sec =~ /^(check|pre|wait_for)$/ ? $v : subst($v);
    }
    $TIMEOUT = (seconds($b{timeout}) || 10) * $TIME_SCALE;
    if (defined $b{redis2} and my $why = do { require RefModules; RefModules::unavailable() }) {
        Test::More->builder->skip("$name: $why");
        return;
    }

    start_redis();    # restores redis if a previous block stopped it
    redis('FLUSHALL');
    backend_call('POST', '/__backend/reset');
    @RESPONSES = ();
    write_user_files($b{user_files});
    write_conf(\%b);

    my ($t_ok, $t_out) = nginx_test();
    # No block can pass with modules built for another nginx (a must_die block would pass
    # for the wrong reason): stop the whole run with the reason.
    if (!$t_ok and my $why = module_mismatch($t_out)) {
        Test::More::BAIL_OUT($why);
    }
    if (exists $b{must_die}) {
        Test::More::ok(!$t_ok, "$name - nginx -t should fail") or Test::More::diag($t_out);
        log_checks($name, \%b, $t_out, 0);
        # (a check of a must_die block reads nginx -t's output: logs/nginx-t.out)
        run_code($name, 'check', $b{check});
        return;
    }
    unless ($t_ok) {
        Test::More::fail("$name - nginx -t");
        Test::More::diag($t_out);
        return;
    }
    $LOG_OFFSET = -s "$SERVROOT/logs/error.log" // 0;
    unless (start_nginx($b{workers} || 1)) {
        Test::More::fail("$name - nginx started");
        my @err = grep { /\[(emerg|alert|crit|error)\]/ } split /\n/, error_log_text();
        Test::More::diag(join "\n", grep { defined } (split /\n/, slurp("$SERVROOT/logs/nginx.stderr") // '')[-10 .. -1],
                                     @err[($#err > 9 ? $#err - 9 : 0) .. $#err]);
        return;
    }

    if (defined $b{redis_setup}) {
        my @cmds = ref $b{redis_setup} ? @{ $b{redis_setup} }
                 : map { [split_cmd($_)] } lines_of($b{redis_setup});
        for my $cmd (@cmds) {
            my $ok = eval { redis(@$cmd); 1 };
            Test::More::ok(0, "$name - redis_setup " . printable("@$cmd")) or Test::More::diag($@)
                unless $ok;
        }
    }
    run_code($name, 'pre', $b{pre});

    run_requests($name, \%b);

    sleep(seconds($b{wait})) if $b{wait};
    if (defined(my $cond = $b{wait_for})) {
        (my $what = $cond) =~ s/\s+/ /g;
        $what =~ s/^ | $//g;
        my $code = eval_in_main("sub {\n$cond\n}", "$name --- wait_for");
        if ($code) {
            wait_until($code, seconds($b{wait_timeout}) || 5, "--- wait_for: $what");
        } else {
            Test::More::ok(0, "$name - --- wait_for code does not compile") or Test::More::diag($@);
        }
    }

    if (defined(my $h = $b{backend_hits})) {
        if (ref $h eq 'HASH') {
            Test::More::is(backend_hits($_), $h->{$_}, "$name - backend hits for $_")
                for sort keys %$h;
        } else {
            Test::More::is(backend_hits(), $h, "$name - backend hits");
        }
    }
    for my $line (lines_of($b{redis_check})) {
        my ($cmd, $op, $exp) = ref $line eq 'ARRAY' ? (@$line[0], '=>', $line->[1])
                             : $line =~ /^\s*(.*?)\s+(=>|=~)\s?(.*?)\s*$/;
        die "bad redis_check line '$line'\n" unless defined $op;
        my @args = ref $cmd ? @$cmd : split_cmd($cmd);
        my $got = eval { fmt_reply(redis(@args)) } // "(error) $@";
        chomp $got;
        my $label = "$name - redis_check " . printable("@args");
        if (ref $exp eq 'Regexp') {
            Test::More::like($got, $exp, $label);
        } elsif ($op eq '=~') {
            my ($re, $fl) = $exp =~ m{^/(.*)/(\w*)$} or die "bad regex in redis_check '$exp'\n";
            Test::More::like($got, qr/(?$fl)$re/, $label);
        } elsif (my ($lo, $hi) = $exp =~ /^(-?\d+)\.\.(-?\d+)$/) {
            Test::More::ok($got =~ /^-?\d+$/ && $got >= $lo && $got <= $hi, "$label in $exp")
                or Test::More::diag("got $got");
        } else {
            ($exp) = split_cmd($exp) if $exp =~ /^["']/;
            Test::More::is($got, $exp, $label);
        }
    }
    run_code($name, 'check', $b{check});

    stop_nginx();
    log_checks($name, \%b, error_log_text(), 1);
}

sub run_requests {
    my ($name, $b) = @_;
    my $keep = $b->{keepalive_requests};
    my $reqs = $keep // $b->{request} // $b->{raw_request};
    return unless defined $reqs;
    $reqs = [$reqs] unless ref $reqs eq 'ARRAY';
    my @r = map {
        my $more = idx($b->{more_headers}, $_);
        defined $b->{raw_request} && !$keep ? { raw => $reqs->[$_], head => $reqs->[$_] =~ /^HEAD / }
                                           : build_request($reqs->[$_], $more, $keep)
    } 0 .. $#$reqs;
    my $t0 = time;
    my $conc = $b->{concurrency};
    my $R = @r;
    if ($keep) {
        @RESPONSES = run_jobs([{ port => $PORT{nginx}, reqs => \@r }], $TIMEOUT, $t0);
    } elsif ($conc) {
        @RESPONSES = run_jobs([map { { port => $PORT{nginx}, reqs => [ $r[$_ % $R] ] } }
                               0 .. $conc - 1], $TIMEOUT, $t0);
    } else {
        @RESPONSES = map { run_jobs([{ port => $PORT{nginx}, reqs => [$_] }], $TIMEOUT, $t0) } @r;
    }
    return if exists $b->{ignore_response};
    if ($conc) {    # aggregate per check over all responses
        my (%fail, @order, %seen);
        for my $i (0 .. $#RESPONSES) {
            for my $c (response_checks($b, $RESPONSES[$i], $i % $R)) {
                push @order, $c->[0] unless $seen{ $c->[0] }++;
                push @{ $fail{ $c->[0] } }, "response #$i: $c->[2]" unless $c->[1];
            }
        }
        for my $label (@order) {
            my $f = $fail{$label} || [];
            Test::More::ok(!@$f, "$name - $label (all $conc responses)")
                or Test::More::diag(scalar(@$f) . " failed; first ones:\n"
                                    . join "\n", @$f[0 .. ($#$f > 4 ? 4 : $#$f)]);
        }
        return;
    }
    for my $i (0 .. $#RESPONSES) {
        my $prefix = $R > 1 ? "$name - req $i" : $name;
        for my $c (response_checks($b, $RESPONSES[$i], $i)) {
            Test::More::ok($c->[1], "$prefix - $c->[0]") or Test::More::diag($c->[2]);
        }
    }
}

1;
