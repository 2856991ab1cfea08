# The shipped configurations (nginx-conf/*.conf) run as they are in the harness: their server
# block on the harness's listener, backend and Redis, their admin listener (8099 in the files)
# on a port of this run. Shared by t/048-local.t and t/056-stock-configs.t.
package main;
use strict;
use warnings;

our $HTTP = "    stale_cache_zone srcache_locks 1m;\n";

# The admin listener of the shipped configs (their 8099: /metrics and PURGE answer only there).
our $ADMIN_PORT = Test::StaleCache::pick_port();

sub shipped_text {
    my ($file) = @_;
    return Test::StaleCache::slurp("nginx-conf/$file") // die "nginx-conf/$file: $!";
}

# The server block of nginx-conf/$file without its main listen line (the harness adds its
# own), its admin listener on $ADMIN_PORT, proxying to the harness's backend; $extra goes
# into /api after its "set"s.
sub stock {
    my ($file, $extra) = @_;
    my $text = shipped_text($file);
    my ($server) = $text =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die "no server in $file";
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die "no listen 8080 in $file";
    $server =~ s/listen 127\.0\.0\.1:8099;/listen 127.0.0.1:$::ADMIN_PORT;/ or die "no admin listen in $file";
    $server =~ s{http://www;}{http://backend;}g;
    $server =~ s/(stale_cache on;)/$1\n$extra/ if $extra;
    return $server;
}

# The http-level lines of nginx-conf/$file the server needs (the module's key variables, the
# maps of the admin listener's guard).
sub stock_http {
    my ($file) = @_;
    my $text = shipped_text($file);
    my @maps = $text =~ /^(    map [^\n]*\{\n.*?^    \}\n)/msg or die "no map in $file";
    my $admin = grep { s/^(\s+)8099 /${1}$::ADMIN_PORT /m } @maps;
    die "no map of the admin port in $file" unless $admin;
    return $::HTTP . join('', map { "$_\n" } $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg)
        . join('', @maps);
}

# One request ("METHOD /path") to 127.0.0.1:$port.
sub at_port {
    my ($port, $line, $headers) = @_;
    my $req = Test::StaleCache::build_request($line, $headers);
    return (Test::StaleCache::run_jobs([{ port => $port, reqs => [$req] }], 10))[0];
}

1;
