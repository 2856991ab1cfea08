# The Debian package (scripts/build-deb.sh, `make deb`) of the module under test: dpkg -i,
# nginx loads it through /etc/nginx/modules-enabled alone and serves a request, then dpkg -r
# and dpkg -P leave nothing behind. Then the README's quick start, its lines read from
# README.md and run as written (with a private copy of /etc/nginx, private ports and paths):
# apt install of the package, the two files of nginx-conf/, nginx -t, the reload, and the
# curls answer MISS, then FRESH.
#
# Standalone, not Test::StaleCache: the harness writes its own load_module lines, and a
# configuration that includes modules-enabled must not load the module a second time.
# It changes the machine, so it runs only as root, one at a time on a machine (a lock file),
# never over an install it did not make, and it purges the package again on every exit path.
use strict;
use warnings;
use Test::More;
use Cwd qw(abs_path);
use Fcntl qw(:flock);
use File::Path qw(rmtree mkpath);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

my $PKG       = 'libnginx-mod-http-stale-cache';
my $SO        = '/usr/lib/nginx/modules/ngx_http_stale_cache_module.so';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-stale-cache.conf';
my $ENABLED   = '/etc/nginx/modules-enabled/60-mod-http-stale-cache.conf';
my $DOC       = "/usr/share/doc/$PKG";
my $NGINX     = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $LOCK      = (-d '/run/lock' ? '/run/lock' : '/tmp') . "/$PKG-test.lock";

my $root   = abs_path('.');
my $module = $ENV{STALE_CACHE_MODULE} || 'build/ngx_http_stale_cache_module.so';
$module = "$root/$module" unless $module =~ m{^/};

plan skip_all => 'TEST_NGINX_NO_PACKAGE is set' if $ENV{TEST_NGINX_NO_PACKAGE};
plan skip_all => 'TEST_NGINX_NO_STALE_CACHE is set' if $ENV{TEST_NGINX_NO_STALE_CACHE};
# The package is for the packaged nginx: it depends on its ABI, and the modules-enabled it is
# tested through loads the packaged srcache/set-misc/echo/ndk, which load into no other nginx.
plan skip_all => "TEST_NGINX_BINARY=$NGINX is not the packaged nginx (/usr/sbin/nginx)"
    if (abs_path($NGINX) // '') ne (abs_path('/usr/sbin/nginx') // '/usr/sbin/nginx');
plan skip_all => 'installs a package with dpkg: run as root' if $> != 0;
plan skip_all => "no module at $module" unless -f $module;

# dpkg runs ldconfig and start-stop-daemon from sbin; a user's PATH may lack it.
$ENV{PATH} = "$ENV{PATH}:/usr/local/sbin:/usr/sbin:/sbin";
$ENV{DEBIAN_FRONTEND} = 'noninteractive';

my $dir = ($ENV{TEST_NGINX_SERVROOT} || "$root/t/servroot") . '-package';
$dir = "$root/$dir" unless $dir =~ m{^/};
rmtree($dir);
mkpath(["$dir/conf", "$dir/logs", "$dir/html", "$dir/tmp"]);

my ($nginx_pid, $dpkg_touched, $child, @background);

# Stops this file without aborting the rest of the suite (BAIL_OUT would).
sub give_up { fail($_[0]); done_testing(); exit 1 }

sub slurp { open(my $f, '<', $_[0]) or return ''; local $/; my $s = <$f>; $s }

# Runs a command, its output (stdout and stderr) kept in commands.log; returns (exit code, output).
sub run {
    my @cmd = @_;
    my $out = "$dir/cmd.out";
    my $pid = $child = fork() // die "fork: $!";
    if (!$pid) {
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>', $out) or POSIX::_exit(127);
        open(STDERR, '>&', \*STDOUT);
        exec(@cmd) or POSIX::_exit(127);
    }
    waitpid($pid, 0);
    undef $child;
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    my $text = slurp($out);
    if (open(my $log, '>>', "$dir/commands.log")) { print $log "\$ @cmd  => $rc\n$text\n" }
    return ($rc, $text);
}

# dpkg refuses to run while apt or another dpkg holds its lock (exit 2): wait for it.
sub dpkg {
    my ($rc, $out);
    for (1 .. 120) {
        ($rc, $out) = run('dpkg', @_);
        last unless $rc == 2 && $out =~ /lock/i;
        sleep 1;
    }
    return ($rc, $out);
}

sub status {
    my ($rc, $out) = run('dpkg-query', '-W', '-f=${db:Status-Status}', $PKG);
    return $rc == 0 ? $out : 'unknown';
}

# A loopback port nothing listens on (below the ephemeral range).
sub free_port {
    for (1 .. 50) {
        my $p = 20000 + int(rand(12000));
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p, Listen => 1,
                                      ReuseAddr => 1) or next;
        close($s);
        return $p;
    }
    return undef;
}

# Polls $cond every 50 ms until it is true or $seconds have passed; returns its last value.
sub wait_for {
    my ($seconds, $cond) = @_;
    my $deadline = time + $seconds;
    my $v;
    until ($v = $cond->()) { last if time > $deadline; sleep 0.05 }
    return $v;
}

# Starts @cmd in the background, output to $log; its pid is stopped by cleanup.
sub background {
    my ($log, @cmd) = @_;
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        setpgrp(0, 0);
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>>', $log) or POSIX::_exit(127);
        open(STDERR, '>&', \*STDOUT);
        exec(@cmd) or POSIX::_exit(127);
    }
    push @background, $pid;
    return $pid;
}

sub stop_background {
    for my $pid (@background) {
        kill 'TERM', $pid;
        my $deadline = time + 5;
        while (waitpid($pid, WNOHANG) == 0) {
            if (time > $deadline) { kill 'KILL', $pid; waitpid($pid, 0); last }
            sleep 0.05;
        }
    }
    @background = ();
}

sub stop_nginx {
    return unless $nginx_pid;
    kill 'TERM', $nginx_pid;
    my $deadline = time + 10;
    while (waitpid($nginx_pid, WNOHANG) == 0) {
        if (time > $deadline) { kill 'KILL', $nginx_pid; waitpid($nginx_pid, 0); last }
        sleep 0.05;
    }
    undef $nginx_pid;
}

# Leaves the machine as it was: our nginx stopped, the package purged (also after a failure).
sub cleanup {
    stop_nginx();
    stop_background();
    if ($dpkg_touched && status() ne 'unknown' && status() ne 'not-installed') {
        my ($rc, $out) = dpkg('--purge', $PKG);
        diag("cleanup: dpkg --purge $PKG failed ($rc): $out") if $rc;
    }
    $dpkg_touched = 0;
}
END { my $rc = $?; cleanup(); $? = $rc }
# A signal lets the running command (say dpkg -i) finish first: cleaning up under it would
# find nothing to purge yet, or dpkg's lock held.
$SIG{$_} = sub { waitpid($child, 0) if $child; undef $child; exit 130 } for qw(INT TERM HUP);

# One run of this file per machine at a time (several worktrees may share one machine).
open(my $lock, '>', $LOCK) or give_up("open $LOCK: $!");
my $waited = 0;
until (flock($lock, LOCK_EX | LOCK_NB)) {
    give_up("$LOCK still held after 300 s") if $waited++ > 600;
    sleep 0.5;
}

# Never take over, and so remove, an install or a copied module this file did not make.
if (status() ne 'unknown' && status() ne 'not-installed') {
    plan skip_all => "$PKG is already on this machine (" . status() . '); left alone';
}
for my $f ($SO, $AVAILABLE, $ENABLED, "$ENABLED.removed") {
    plan skip_all => "$f exists outside the package; left alone" if -e $f || -l $f;
}

# --- build -------------------------------------------------------------------------------

my ($rc, $out) = run("$root/scripts/build-deb.sh", $module, $dir);
is($rc, 0, 'scripts/build-deb.sh') or diag($out);
my ($deb) = glob("$dir/${PKG}_*.deb");
$deb && -f $deb or give_up('the .deb is built');

my ($version) = slurp("$root/Cargo.toml") =~ /^\[package\].*?^version\s*=\s*"([^"]+)"/ms;
my (undef, $nginx_owner) = run('dpkg-query', '-S', $NGINX);
$nginx_owner =~ s/:.*//s;
my (undef, $provides) = run('dpkg-query', '-W', '-f=${Provides}', $nginx_owner);
my ($abi) = $provides =~ /(nginx-abi-[^\s,]+)/;
my (undef, $fields) = run('dpkg-deb', '-f', $deb, 'Version', 'Depends');
like($fields, qr/^Version: \Q$version\E$/m, "version $version, from Cargo.toml");
like($fields, qr/^Depends:.*\b\Q$abi\E\b/m, "depends on $abi (Provides of $nginx_owner)") if $abi;
ok($abi, "$nginx_owner provides an nginx ABI") unless $abi;
like($fields, qr/^Depends:.*\blibnginx-mod-http-srcache-filter\b/m, 'depends on srcache');
(undef, $fields) = run('dpkg-deb', '-f', $deb, 'Maintainer');
my ($maintainer) = slurp("$root/packaging/debian/control") =~ /^Maintainer: (.+)$/m;
is($fields, "$maintainer\n", "Maintainer: $maintainer");
unlike($maintainer // '', qr/\.(example|invalid|test|localhost)>|noreply|seed/i, 'a real Maintainer address');
(undef, $out) = run('dpkg-deb', '-c', $deb);
for my $f (glob("$root/nginx-conf/*.conf $root/nginx-conf/*/*.conf")) {
    (my $rel = $f) =~ s{^\Q$root\E/nginx-conf/}{};
    like($out, qr{ \./usr/share/doc/$PKG/examples/\Q$rel\E\n}, "ships nginx-conf/$rel as an example");
}
SKIP: {
    skip('lintian is not installed', 1) unless grep { -x "$_/lintian" } split /:/, $ENV{PATH};
    # lintian says it would rather not run as root, on stderr: not a finding.
    (undef, $out) = run('lintian', '--pedantic', '-I', $deb);
    $out =~ s/^running with root privileges is not recommended!\n?//m;
    is($out, '', 'lintian --pedantic -I: nothing to report');
}

# --- install -----------------------------------------------------------------------------

$dpkg_touched = 1;
($rc, $out) = dpkg('-i', $deb);
is($rc, 0, 'dpkg -i') or diag($out);
is(status(), 'installed', 'package installed');
ok(-f $SO, "$SO installed");
(undef, $out) = run('readelf', '-S', $SO);
unlike($out, qr/\.debug_|\.symtab/, 'the module is stripped');
like(slurp($AVAILABLE), qr{^load_module modules/ngx_http_stale_cache_module\.so;$}m,
     "$AVAILABLE loads it");
is(readlink($ENABLED), $AVAILABLE, "$ENABLED links to it");

# --- a private nginx that loads it through modules-enabled only ----------------------------

my $port = free_port();
give_up('no free port') unless $port;

# Debian's load files name modules relative to the prefix (modules/...): the packaged prefix
# has a modules -> /usr/lib/nginx/modules link, a private one needs the same.
symlink('/usr/lib/nginx/modules', "$dir/modules") or give_up("symlink: $!");
open(my $h, '>', "$dir/html/index.html") or die; print $h "packaged\n"; close($h);
my $conf = <<"CONF";
include /etc/nginx/modules-enabled/*.conf;
user root;
daemon off;
master_process on;
worker_processes 1;
error_log logs/error.log info;
pid logs/nginx.pid;
events { worker_connections 64; }
http {
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    access_log logs/access.log;
    stale_cache_zone pkgtest 1m;
    server {
        listen 127.0.0.1:$port;
        root html;
        location / {
            stale_cache on;
            add_header X-Stale-Cache \$stale_cache_status always;
        }
    }
}
CONF
open($h, '>', "$dir/conf/nginx.conf") or die; print $h $conf; close($h);
unlike($conf, qr/load_module/, 'the configuration has no load_module line');

my @nginx = ($NGINX, '-p', "$dir/", '-c', 'conf/nginx.conf');
($rc, $out) = run(@nginx, '-t');
is($rc, 0, 'nginx -t with modules-enabled') or diag($out);

$nginx_pid = fork() // die "fork: $!";
if (!$nginx_pid) {
    open(STDIN, '<', '/dev/null');
    open(STDOUT, '>', "$dir/logs/nginx.stderr");
    open(STDERR, '>&', \*STDOUT);
    exec(@nginx) or POSIX::_exit(127);
}
my $sock;
for (1 .. 200) {
    last if waitpid($nginx_pid, WNOHANG) != 0;
    $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) and last;
    sleep 0.05;
}
ok($sock, 'nginx is up') or diag(slurp("$dir/logs/nginx.stderr") . slurp("$dir/logs/error.log"));
my $resp = '';
if ($sock) {
    print $sock "GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n";
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm(10);
    eval { local $/; $resp = <$sock> // '' };
    alarm(0);
}
like($resp, qr{^HTTP/1\.1 200 }, 'request: 200');
like($resp, qr{^X-Stale-Cache: BYPASS\r$}m, 'request: the module ran ($stale_cache_status)');
like($resp, qr{\r\n\r\npackaged\n\z}, 'request: body');
stop_nginx();
unlike(slurp("$dir/logs/error.log"), qr/\[(alert|emerg)\]|exited on signal/,
       'no alert or emerg in error.log');

# --- remove, purge -----------------------------------------------------------------------

($rc, $out) = dpkg('-r', $PKG);
is($rc, 0, 'dpkg -r') or diag($out);
is(status(), 'config-files', 'package removed, not purged');
ok(!-e $SO, "$SO removed");
ok(!-e $AVAILABLE, "$AVAILABLE removed");
ok(!-e $ENABLED && !-l $ENABLED, "$ENABLED removed");
# Debian's convention: the link is kept as *.removed until purge, so that a reinstall enables
# the module again only if it was enabled; nginx's *.conf include skips it.
ok(-l "$ENABLED.removed", "$ENABLED.removed kept until purge");
($rc, $out) = run(@nginx, '-t');
like($out, qr/unknown directive "stale_cache_zone"/, 'modules-enabled no longer loads it');

($rc, $out) = dpkg('-P', $PKG);
is($rc, 0, 'dpkg -P') or diag($out);
like(status(), qr/^(unknown|not-installed)$/, 'package purged');
ok(!-l "$ENABLED.removed", "$ENABLED.removed removed");
ok(!-e $DOC, "$DOC removed");
my @left = grep { /stale.cache/ } glob('/etc/nginx/modules-enabled/* /usr/share/nginx/modules-available/*');
is("@left", '', 'nothing of the package left in modules-enabled or modules-available');

QUICK_START();

$dpkg_touched = 0;
done_testing();

# --- the README's quick start, as written --------------------------------------------------
#
# Each line of the block after README.md's quick-start marker is run as a user would type it,
# without "sudo " (this runs as root), on a private stand-in for the machine: /etc/nginx is
# $qs/etc/nginx, whose nginx.conf is Debian's own (its modules-enabled include kept, the
# package's), /tmp/app is $qs/app, and the ports 8080, 8081, 6379 and 9145 are free ones. A
# line this file does not know fails the test: the README cannot drift from it.
sub QUICK_START {
    my ($block) = slurp("$root/README.md") =~ /<!-- quick-start:[^>]*-->\s*```sh\n(.*?)```/s;
    ok($block, "README.md has the quick-start block") or return;
    my @lines = grep { /\S/ } split /\n/, $block;
    my $qs = "$dir/quick-start";
    mkpath([map { "$qs/etc/nginx/$_" } qw(conf.d sites-available sites-enabled)]);
    mkpath(["$qs/logs", "$qs/redis"]);
    my %port;
    for my $p (qw(8080 8081 6379 9145)) { $port{$p} = free_port() or give_up('no free port') }
    my $subst = sub {
        my $c = shift;
        $c =~ s{/etc/nginx/}{$qs/etc/nginx/}g;
        $c =~ s{/tmp/app\b}{$qs/app}g;
        $c =~ s/\b(8080|8081)\b/$port{$1}/g;
        return $c;
    };

    # The nginx that already runs on the machine: Debian's nginx.conf, where it writes.
    my $stock = slurp('/etc/nginx/nginx.conf');
    my @debian = (qr{^\s*include /etc/nginx/modules-enabled/\*\.conf;}m,
                  qr{^\s*include /etc/nginx/conf\.d/\*\.conf;}m, qr{^\s*include /etc/nginx/sites-enabled/\*;}m);
    if (grep { $stock !~ $_ } @debian) {
        diag('/etc/nginx/nginx.conf is not the packaged one: Debian\'s default includes used');
        $stock = "user www-data;\nworker_processes auto;\ninclude /etc/nginx/modules-enabled/*.conf;\n"
               . "events { worker_connections 768; }\nhttp {\n    include /etc/nginx/mime.types;\n"
               . "    include /etc/nginx/conf.d/*.conf;\n    include /etc/nginx/sites-enabled/*;\n}\n";
    }
    $stock =~ s{/etc/nginx/(conf\.d|sites-enabled)/}{$qs/etc/nginx/$1/}g;
    $stock =~ s{/var/log/nginx/}{$qs/logs/}g;
    $stock =~ s{^\s*(pid|error_log|daemon)\s[^;]*;}{}mg;    # given with -g below
    (my $outside = $stock) =~ s{\Q$qs\E/}{}g;
    unlike($outside, qr{/var/log/|/run/|/etc/nginx/(conf\.d|sites)}, "the stand-in nginx.conf writes only under $qs");
    open(my $h, '>', "$qs/etc/nginx/nginx.conf") or give_up("nginx.conf: $!");
    print $h $stock;
    close($h);
    my @nginx = ($NGINX, '-p', "$dir/", '-c', "$qs/etc/nginx/nginx.conf",
                 '-g', "daemon off; pid $qs/logs/nginx.pid; error_log $qs/logs/error.log info;");
    background("$qs/logs/redis.out", 'redis-server', '--port', $port{6379}, '--bind', '127.0.0.1',
               '--save', '', '--appendonly', 'no', '--dir', "$qs/redis");
    ok(wait_for(10, sub { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port{6379}) }),
       'a private redis-server answers');

    my $t0 = time;
    my @answers;
    for my $line (@lines) {
        (my $cmd = $line) =~ s/^sudo //;
        if ($cmd =~ /^apt install ([a-z0-9][a-z0-9.+ -]*)$/) {
            for my $p (split ' ', $1) {
                my (undef, $st) = run('dpkg-query', '-W', '-f=${db:Status-Status}', $p);
                is($st, 'installed', "quick start: $p is installed");
            }
        } elsif ($cmd eq 'make deb') {
            # make deb builds the module, then runs scripts/build-deb.sh: the .deb built above.
            ok(-f $deb, "quick start: make deb (the package built above from the module under test)");
        } elsif ($cmd =~ m{^apt install \./build/\Q$PKG\E_\*\.deb$}) {
            my ($rc, $out);
            for (1 .. 120) {
                ($rc, $out) = run('apt-get', 'install', '-y', '--no-install-recommends', $deb);
                last unless $rc && $out =~ /lock/i;
                sleep 1;
            }
            $dpkg_touched = 1;
            is($rc, 0, "quick start: $line") or diag($out);
            is(status(), 'installed', 'quick start: the package is installed');
            # The machine's nginx runs from here on: reload is the step that changes it.
            $nginx_pid = background("$qs/logs/nginx.stderr", @nginx);
            pop @background;
            ok(wait_for(10, sub { -s "$qs/logs/nginx.pid" }), 'the stand-in for the running nginx is up');
        } elsif ($cmd =~ /^(.+?)\s*&$/) {
            background("$qs/logs/app.log", 'sh', '-c', 'exec ' . $subst->($1));
            my $p = $port{8081};
            ok(wait_for(10, sub { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p) }),
               "quick start: $line");
        } elsif ($cmd =~ m{^(cp|ln|mkdir) }) {
            my ($rc, $out) = run('sh', '-c', $subst->($cmd));
            is($rc, 0, "quick start: $line") or diag($out);
        } elsif ($cmd eq 'nginx -t') {
            # The copied files as shipped, but for the ports (the machine's own stay free).
            for my $f (glob("$qs/etc/nginx/conf.d/* $qs/etc/nginx/sites-available/*")) {
                my $text = slurp($f);
                my $n = ($text =~ s/127\.0\.0\.1:(6379|8081|9145)\b/127.0.0.1:$port{$1}/g)
                      + ($text =~ s/^(\s*listen )8080;/$1$port{8080};/mg);
                ok($n, "ports of $f made private");
                open(my $w, '>', $f) or give_up("$f: $!");
                print $w $text;
                close($w);
            }
            my ($rc, $out) = run(@nginx, '-t');
            is($rc, 0, "quick start: $line") or diag($out);
            unlike($out, qr/\[(warn|emerg|alert)\]/, 'quick start: nginx -t has no warning');
        } elsif ($cmd eq 'systemctl reload nginx') {
            my ($rc, $out) = run(@nginx, '-s', 'reload');
            is($rc, 0, "quick start: $line (nginx -s reload)") or diag($out);
            my $p = $port{8080};
            ok(wait_for(10, sub { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p) }),
               'quick start: the site listens');
        } elsif ($cmd =~ /^curl /) {
            my $c = $subst->($cmd);
            my ($rc, $out) = run('sh', '-c', $c);
            # The second curl may come before the first one's store has finished: repeated
            # (deadline 5 s) while the answer is the fill's, never past FRESH.
            if (@answers && (($out =~ /^X-Stale-Cache: (\S+)/mi)[0] // '') ne 'FRESH') {
                wait_for(5, sub { (undef, $out) = run('sh', '-c', $c); $out =~ /^X-Stale-Cache: FRESH\r?$/mi });
            }
            is($rc, 0, "quick start: $line");
            push @answers, $out;
        } else {
            fail("quick start: a line this test does not know: $line");
        }
    }
    my $took = time - $t0;
    ok($took < 600, sprintf('quick start: its steps took %.1f s (under 10 minutes)', $took));

    is(scalar @answers, 2, 'quick start: two curls');
    my ($first, $second) = @answers;
    like($first // '', qr{^HTTP/1\.[01] 200 }, 'first curl: 200');
    like($first // '', qr/^X-Stale-Cache: MISS\r?$/mi, 'first curl: X-Stale-Cache: MISS');
    like($first // '', qr/^Cache-Status: stale-cache; fwd=miss; fwd-status=200\r?$/mi, 'first curl: Cache-Status');
    like($second // '', qr{^HTTP/1\.[01] 200 }, 'second curl: 200');
    like($second // '', qr/^X-Stale-Cache: FRESH\r?$/mi, 'second curl: X-Stale-Cache: FRESH');
    like($second // '', qr/^Cache-Status: stale-cache; hit; ttl=\d+\r?$/mi, 'second curl: Cache-Status');
    my $hits = () = slurp("$qs/logs/app.log") =~ m{"GET /api/hello }g;
    is($hits, 1, 'the application saw one request');
    unlike(slurp("$qs/logs/error.log"), qr/\[(alert|emerg|crit|error)\]|exited on signal/,
           'quick start: no error in error.log');

    stop_nginx();
    stop_background();
    my ($rc, $out) = dpkg('-P', $PKG);
    is($rc, 0, 'dpkg -P after the quick start') or diag($out);
    like(status(), qr/^(unknown|not-installed)$/, 'package purged again');
}
