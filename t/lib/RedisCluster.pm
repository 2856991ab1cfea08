# A private Redis Cluster on loopback for the cluster tests: six redis-server processes
# (three primaries, a replica each, cluster-node-timeout 1 s) made into a cluster by
# `redis-cli --cluster create`, on free ports of the harness's range (each node's bus port,
# port + 10000, free too). Its files are in <servroot>-cluster (the harness empties the
# servroot when a file starts); it is stopped when the test file ends.
package RedisCluster;
use strict;
use warnings;
use IO::Socket::INET;
use File::Path qw(make_path remove_tree);
use Time::HiRes qw(time sleep);
use Test::StaleCache ();

my @NODES;    # { port, pid }
my $PARENT = $$;
our $DIR;

sub cli { $ENV{TEST_NGINX_REDIS_CLI} // '/usr/bin/redis-cli' }

# The first port the kernel hands out as a connection's source port.
sub ephemeral_low {
    open my $fh, '<', '/proc/sys/net/ipv4/ip_local_port_range' or return 32768;
    my ($lo) = (<$fh> // '') =~ /^\s*(\d+)/;
    return $lo // 32768;
}

# Six free ports whose bus ports are free too; bus ports (port + 10000) below the kernel's
# source ports where the harness's range allows, so that no connection takes one between
# this check and the node's bind.
sub pick_ports {
    my (@ports, $tries);
    my $below = ephemeral_low();
    while (@ports < 6) {
        my $p = Test::StaleCache::pick_port();
        next if $p + 10000 > 65535;
        next if $p + 10000 >= $below && ++$tries < 300;
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p + 10000,
                                      Listen => 1, ReuseAddr => 1) or next;
        close $s;
        push @ports, $p;
    }
    return @ports;
}

# One command to the node on $port; the reply (dies on an error reply).
sub cmd { Test::StaleCache::resp_to(@_) }

sub start {
    $DIR = "$ENV{TEST_NGINX_SERVROOT}-cluster";
    my $why;
    for my $attempt (1 .. 3) {
        remove_tree($DIR);
        $why = spawn_nodes() // last;
        # (A port taken meanwhile, e.g. a bus port by a connection's source port.)
        Test::More::diag("RedisCluster: $why; starting again on other ports");
        stop();
    }
    die "RedisCluster: $why\n" if @NODES == 0;
    my @addrs = map { "127.0.0.1:$_->{port}" } @NODES;
    my $out = `@{[ cli() ]} --cluster create @addrs --cluster-replicas 1 --cluster-yes 2>&1`;
    die "redis-cli --cluster create failed:\n$out" if $?;
    wait_for(sub { !grep { (eval { cmd($_->{port}, 'CLUSTER', 'INFO') } // '') !~ /cluster_state:ok/ } @NODES },
             20, 'the cluster to be ok');
    # Every node knows the same primaries.
    wait_for(sub { my %p = map { scalar(@{ primaries($_->{port}) }) => 1 } @NODES;
                   keys %p == 1 && (keys %p)[0] == 3 }, 20, 'every node to see 3 primaries');
    return ports();
}

# Starts six nodes on free ports: undef once each answers, else why not (the nodes started
# are left for stop()).
sub spawn_nodes {
    my $server = $ENV{TEST_NGINX_REDIS_SERVER} // '/usr/bin/redis-server';
    for my $port (pick_ports()) {
        make_path("$DIR/$port");
        my $pid = Test::StaleCache::spawn("$DIR/$port/redis.log", $server, '--port', $port,
            '--bind', '127.0.0.1', '--protected-mode', 'no', '--save', '', '--appendonly', 'no',
            '--daemonize', 'no', '--dir', "$DIR/$port", '--cluster-enabled', 'yes',
            '--cluster-config-file', "$DIR/$port/nodes.conf", '--cluster-node-timeout', 1000);
        push @NODES, { port => $port, pid => $pid };
    }
    for my $n (@NODES) {
        my $deadline = time + 10 * Test::StaleCache::time_scale();
        until ((eval { cmd($n->{port}, 'PING') } // '') eq 'PONG') {
            my $log = "$DIR/$n->{port}/redis.log";
            if (Test::StaleCache::proc_dead($n->{pid})) {
                my @lines = split /\n/, Test::StaleCache::slurp($log) // '';
                return "redis node $n->{port} exited: " . ($lines[-1] // '(no log)');
            }
            return "redis node $n->{port} did not answer in 10 s (see $log)" if time > $deadline;
            sleep 0.05;
        }
    }
    return undef;
}

sub wait_for {
    my ($cond, $timeout, $what) = @_;
    my $deadline = time + $timeout * Test::StaleCache::time_scale();
    until ($cond->()) {
        die "RedisCluster: waited ${timeout}s for $what\n" if time > $deadline;
        sleep 0.05;
    }
}

sub ports { map { $_->{port} } @NODES }

# The primaries' ports, as node $port sees them (CLUSTER SLOTS).
sub primaries {
    my $port = shift // (grep { alive($_) } ports())[0];
    my $slots = cmd($port, 'CLUSTER', 'SLOTS');
    my %p = map { $_->[2][1] => 1 } @$slots;
    return [sort { $a <=> $b } keys %p];
}

# Whether the cluster is whole again after primary $victim died: a live node says the state is
# ok and three primaries, none of them $victim, serve the slots (its replica was promoted).
sub failed_over {
    my $victim = shift;
    my ($port) = grep { $_ != $victim && alive($_) } ports();
    return 0 unless defined $port && (eval { cmd($port, 'CLUSTER', 'INFO') } // '') =~ /^cluster_state:ok/m;
    my $primaries = eval { primaries($port) } // return 0;
    return @$primaries == 3 && !grep { $_ == $victim } @$primaries;
}

# The port of the primary serving $key (asked of any live node).
sub node_of {
    my $key = shift;
    for my $n (grep { alive($_->{port}) } @NODES) {
        my $slot = eval { cmd($n->{port}, 'CLUSTER', 'KEYSLOT', $key) } // next;
        for my $r (@{ cmd($n->{port}, 'CLUSTER', 'SLOTS') }) {
            return $r->[2][1] if $slot >= $r->[0] && $slot <= $r->[1];
        }
    }
    return undef;
}

# A command on the node serving $key.
sub on_key { my ($c, $key, @rest) = @_; cmd(node_of($key), $c, $key, @rest) }

sub alive { my $port = shift; (eval { cmd($port, 'PING') } // '') eq 'PONG' }

# Keys per primary: { port => DBSIZE }.
sub sizes { return { map { $_ => cmd($_, 'DBSIZE') } @{ primaries() } } }

sub flushall { cmd($_, 'FLUSHALL') for @{ primaries() } }

sub pid_of { my $port = shift; (map { $_->{pid} } grep { $_->{port} == $port } @NODES)[0] }

sub kill9 {
    my $port = shift;
    my $pid = pid_of($port);
    kill 'KILL', $pid;
    Test::StaleCache::wait_pid($pid, 5);
}

sub stop {
    return unless $$ == $PARENT;
    for my $n (@NODES) {
        Test::StaleCache::kill_wait($n->{pid}, 'TERM', 5) if $n->{pid};
        $n->{pid} = undef;
    }
    @NODES = ();
}

END { local ($?, $@); stop() }

1;
