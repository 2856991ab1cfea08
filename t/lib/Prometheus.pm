# A private Prometheus server for the metrics tests: it scrapes this block's nginx /metrics
# every second (loopback, a data directory under the servroot) and answers instant queries.
package Prometheus;
use strict;
use warnings;
use Exporter 'import';
use File::Path qw(make_path);
use JSON::PP ();
use POSIX ();

our @EXPORT = qw(start_prometheus stop_prometheus prom_api);

my $PID;
END { stop_prometheus() }

# Starts the server; returns the port of its HTTP API.
sub start_prometheus {
    my $dir = "$Test::StaleCache::TEST_NGINX_SERVROOT/prometheus";
    make_path("$dir/data");
    my $port = Test::StaleCache::pick_port();
    open my $fh, '>', "$dir/prometheus.yml" or die $!;
    print $fh <<"_EOY_";
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: stale_cache
    metrics_path: /metrics
    static_configs:
      - targets: ['127.0.0.1:$Test::StaleCache::TEST_NGINX_SERVER_PORT']
_EOY_
    close $fh;
    $PID = fork // die "fork: $!";
    if (!$PID) {
        open STDOUT, '>', "$dir/prometheus.log";
        open STDERR, '>&', \*STDOUT;
        POSIX::setsid();
        { no warnings 'exec'; exec 'prometheus', "--config.file=$dir/prometheus.yml",
            "--storage.tsdb.path=$dir/data", "--web.listen-address=127.0.0.1:$port", '--log.level=warn' };
        POSIX::_exit(127);
    }
    return $port;
}

sub stop_prometheus {
    return unless $PID;
    kill 'TERM', $PID;
    waitpid($PID, 0);
    undef $PID;
}

# An instant query through the HTTP API: the decoded answer, undef when it does not answer.
sub prom_api {
    my ($port, $q, $timeout) = @_;
    $timeout //= 2;
    my $esc = $q =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ger;
    my $json = `curl -s --max-time $timeout 'http://127.0.0.1:$port/api/v1/query?query=$esc'`;
    return eval { JSON::PP::decode_json($json) };
}

1;
