# The Debian package (scripts/build-deb.sh, `make deb`) of the module under test: dpkg -i,
# nginx loads it through /etc/nginx/modules-enabled alone and serves a request, then dpkg -r
# and dpkg -P leave nothing behind.
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

my ($nginx_pid, $dpkg_touched, $child);

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

my $port;
for (1 .. 50) {
    my $p = 20000 + int(rand(12000));
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p, Listen => 1,
                                  ReuseAddr => 1) or next;
    close($s);
    $port = $p;
    last;
}
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
$dpkg_touched = 0;

done_testing();
