# stale_cache_metrics: the zone's counters in Prometheus text format, checked against known
# request sequences, by promtool, and through a real Prometheus server scraping them.
use lib 't/lib';
use Test::StaleCache;
use Prometheus;

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    stale_cache_zone other 1m;
_EOC_

our $CONFIG = drop_in_config('add_header X-Wake-Delay $stale_cache_wake_delay;') . <<'_EOC_';
    location = /metrics { stale_cache_metrics; }
    location /other {
        set $cache_lock other; set $cache_ttl /redisttl; set $cache_key "$uri";
        stale_cache on;
        srcache_fetch GET /redis $cache_key;
        srcache_store PUT /redis2 key=$cache_key&exptime=105;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend;
    }
_EOC_

# The exposition as { 'name{labels}' => value } (the harness's metrics()), and the response;
# fails on a status other than 200 and on each line that is no sample.
sub scrape {
    my ($m, $r, $bad) = metrics();
    Test::More::is($r->{status}, 200, 'metrics: 200');
    Test::More::fail("bad line: $_") for @$bad;
    return ($m, $r);
}

sub req { my ($status, $zone) = @_; "stale_cache_requests_total{zone=\"" . ($zone // 'srcache_locks') . "\",status=\"$status\"}" }
sub z { my ($name, $zone, $extra) = @_; "$name\{zone=\"" . ($zone // 'srcache_locks') . '"' . ($extra ? ",$extra" : '') . '}' }

sub promtool_check {
    my ($text) = @_;
    my $file = "$TEST_NGINX_SERVROOT/metrics.txt";
    open my $fh, '>', $file or die $!;
    print $fh $text;
    close $fh;
    my $out = `promtool check metrics < $file 2>&1`;
    Test::More::is($?, 0, 'promtool check metrics: exit 0');
    Test::More::is($out, '', 'promtool check metrics: no problems reported') or Test::More::diag($out);
}

# An instant query through Prometheus's HTTP API: the first result's value, or undef.
sub prom_query {
    my ($port, $q) = @_;
    my $d = prom_api($port, $q) or return undef;
    return undef unless $d->{status} eq 'success' && @{ $d->{data}{result} };
    return $d->{data}{result}[0]{value}[1];
}

run_tests();

__DATA__

=== TEST 1: 1 MISS + 99 COLLAPSED are counted exactly; fills, waits, wake-ups, histogram; promtool
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- request
GET /api/m
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 100
--- response_body
backend GET /api/m hit 1
--- backend_hits: 1
--- check
my @r = responses();
my %n;
$n{ $_->{headers}{'x-stale-cache'} }++ for @r;
is($n{MISS}, 1, 'one MISS');
is($n{COLLAPSED}, 99, '99 COLLAPSED');
my ($m, $resp) = scrape();
like($resp->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'exposition content type');
is($m->{req('miss')}, 1, 'requests_total{status=miss} 1');
is($m->{req('collapsed')}, 99, 'requests_total{status=collapsed} 99');
is($m->{req($_)}, 0, "requests_total{status=$_} 0")
    for qw(fresh stale timeout refresh bypass error pass gone);
is($m->{z('stale_cache_fills_started_total')}, 1, 'one fill started');
is($m->{z('stale_cache_fills_total', undef, 'outcome="stored"')}, 1, 'one fill stored');
is($m->{z('stale_cache_fills_total', undef, 'outcome="not_stored"')}, 0, 'none not stored');
is($m->{z('stale_cache_fills_total', undef, 'outcome="abandoned"')}, 0, 'none abandoned');
is($m->{z('stale_cache_waits_total')}, 99, '99 waits');
is($m->{z('stale_cache_wakeups_total')}, 99, '99 wake-ups');
is($m->{z('stale_cache_wait_timeouts_total')}, 0, 'no timeouts');
is($m->{z('stale_cache_wake_delay_seconds_count')}, 99, 'histogram: 99 wake delays');
is($m->{z('stale_cache_wake_delay_seconds_bucket', undef, 'le="+Inf"')}, 99, 'histogram: +Inf bucket');
# The histogram agrees with what each waiter's $stale_cache_wake_delay said.
my @d = map { $_->{headers}{'x-wake-delay'} } grep { $_->{headers}{'x-stale-cache'} eq 'COLLAPSED' } @r;
my $le5 = grep { $_ <= 5 } @d;
is($m->{z('stale_cache_wake_delay_seconds_bucket', undef, 'le="0.005"')}, $le5,
   'histogram: le=0.005 bucket matches the waiters\' $stale_cache_wake_delay');
my $sum = 0; $sum += $_ for @d;
is($m->{z('stale_cache_wake_delay_seconds_sum')}, sprintf('%d.%03d', $sum / 1000, $sum % 1000),
   'histogram: sum of the delays');
is($m->{req('miss', 'other')}, 0, 'the other zone counted nothing');
cmp_ok($m->{z('stale_cache_zone_capacity')}, '>', 10000, 'zone capacity (1m)');
is($m->{z('stale_cache_zone_entries')}, 1, 'one zone entry (the fill memory)');
is($m->{z('stale_cache_zone_evictions_total')}, 0, 'no evictions');
is($m->{z('stale_cache_zone_dead_owner_takeovers_total')}, 0, 'no dead owners');
promtool_check($resp->{body});
--- no_error_log
[error]

=== TEST 2: fresh hits by lookup and by memo, pass marks, lookup errors (local zone off), other zones
--- http_config eval: $::HTTP . "    stale_cache_local_zone off;\n"
--- config eval: $::CONFIG
--- pre
backend_config('/api/bad', status => 500);
--- request eval
[ ("GET /api/f") x 5, "GET /api/bad", "GET /api/bad", "POST /api/f", "GET /other/o", "GET /other/o" ]
--- error_code eval
[ (200) x 5, 500, 500, 200, 200, 200 ]
--- response_headers eval
[ "X-Stale-Cache: MISS", "X-Stale-Cache: FRESH", ("X-Stale-Cache: FRESH") x 3,
  undef, undef, "X-Stale-Cache: BYPASS",
  "X-Stale-Cache: MISS", "X-Stale-Cache: FRESH" ]
--- check
my ($m) = scrape();
is($m->{req('fresh')}, 4, '4 fresh');
is($m->{z('stale_cache_memo_hits_total')}, 3, '3 of them by the memo (the first looked up)');
is($m->{req('miss')}, 2, '2 misses');
is($m->{req('pass')}, 1, '1 pass');
is($m->{req('bypass')}, 1, 'the POST: bypass');
is($m->{z('stale_cache_fills_total', undef, 'outcome="not_stored"')}, 1, 'the 500: not stored');
is($m->{z('stale_cache_pass_marks_total')}, 1, 'one pass mark');
is($m->{req('miss', 'other')}, 1, 'zone other: 1 miss');
is($m->{req('fresh', 'other')}, 1, 'zone other: 1 fresh');
is($m->{req('fresh')}, 4, 'zone srcache_locks unchanged by the other zone');
stop_redis();
my $r = http_get('/api/e');
is($r->{headers}{'x-stale-cache'}, 'ERROR', 'redis down: ERROR');
($m) = scrape();
is($m->{req('error')}, 1, 'requests_total{status=error} 1');
is($m->{z('stale_cache_errors_total', undef, 'kind="lookup"')}, 1, 'errors_total{kind=lookup} 1');
start_redis();
$r = http_request('POST', '/metrics');
is($r->{status}, 405, 'POST /metrics: 405');
--- error_log
TTL lookup failed

=== TEST 3: a stale hit's refresh is counted sent and succeeded
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- pre
fill_and_stale('/api/s');
--- request
GET /api/s
--- response_headers
X-Stale-Cache: STALE
--- wait_for
redis('TTL', redis_key('/api/s')) > 100
--- check
my $m;
wait_until(sub { ($m) = scrape(); $m->{z('stale_cache_refreshes_total', undef, 'outcome="succeeded"')} }, 5,
           'the refresh counted');
is($m->{z('stale_cache_refreshes_sent_total')}, 1, 'one refresh sent');
is($m->{z('stale_cache_refreshes_total', undef, 'outcome="succeeded"')}, 1, 'one succeeded');
is($m->{z('stale_cache_refreshes_total', undef, 'outcome="failed"')}, 0, 'none failed');
is($m->{req('stale')}, 1, 'one stale');
is($m->{req('refresh')}, 1, 'the refresh request itself: REFRESH');
is($m->{req('miss')}, 1, 'the fill');

=== TEST 4: a Prometheus server scrapes the endpoint; its API reads the counters back
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- request
GET /api/p
--- more_headers
X-Backend-Delay: 0.3
--- concurrency: 20
--- backend_hits: 1
--- check
my $port = start_prometheus();
my $q = 'stale_cache_requests_total{zone="srcache_locks",status="collapsed"}';
my $v = wait_until(sub { prom_query($port, $q) }, 60, 'Prometheus to scrape the endpoint');
is($v, 19, "Prometheus API: $q = 19");
is(prom_query($port, 'stale_cache_requests_total{zone="srcache_locks",status="miss"}'), 1,
   'Prometheus API: miss = 1');
is(prom_query($port, 'up{job="stale_cache"}'), 1, 'Prometheus: the target is up');
is(prom_query($port, 'histogram_count(stale_cache_wake_delay_seconds{zone="srcache_locks"})') // prom_query($port, 'stale_cache_wake_delay_seconds_count{zone="srcache_locks"}'), 19,
   'Prometheus reads the histogram');
stop_prometheus();

=== TEST 5: each worker counts in a lane of its own; a killed worker's counts stay in the totals and its replacement goes on counting
--- http_config eval: $::HTTP
--- config eval
$::CONFIG . <<'_EOC_';
    # Fresh for an hour: the kills and restarts below may take longer than the drop-in's 5 s.
    location /long {
        set $cache_lock srcache_locks; set $cache_ttl /redisttl; set $cache_key "$uri";
        stale_cache on;
        srcache_fetch GET /redis $cache_key;
        srcache_store PUT /redis2 key=$cache_key&exptime=3700;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend;
    }
_EOC_
--- workers: 2
--- request
GET /long/lane
--- response_body
backend GET /long/lane hit 1
--- backend_hits: 1
--- check
# The fill's request ends (and releases its lock, right after counting its MISS) just after
# its last byte left: until then a request on the other worker would wait for it (COLLAPSED).
my $m;
wait_until(sub { ($m) = scrape(); ($m->{req('miss')} // 0) >= 1 }, 5, 'the fill ended');
# New connections may land on either worker, each counting in its lane.
my %seen;
for (1 .. 30) { $seen{ http_get('/long/lane')->{headers}{'x-stale-cache'} // 'none' }++ }
is($seen{FRESH}, 30, '30 fresh hits') or diag(explain(\%seen));
# A request is counted as it ends, just after its last byte left: the scrape waits for it.
wait_until(sub { ($m) = scrape(); ($m->{req('fresh')} // 0) >= 30 }, 5, 'the 30th hit counted');
is($m->{req('fresh')}, 30, 'requests_total{status=fresh} 30');
is($m->{req('miss')}, 1, 'requests_total{status=miss} 1');
# kill -9 each worker in turn; the master starts new ones, which take over the lanes.
for my $worker (grep { $_ != (nginx_pids())[0] } nginx_pids()) {
    kill 'KILL', $worker;
    wait_until(sub { my @p = nginx_pids(); @p == 3 && !grep { $_ == $worker } @p }, 10,
               "the master to replace worker $worker");
}
($m) = scrape();
is($m->{req('fresh')}, 30, 'after both workers were killed: still fresh 30');
is($m->{req('miss')}, 1, 'still miss 1');
my %after;
for (1 .. 20) { $after{ http_get('/long/lane')->{headers}{'x-stale-cache'} // 'none' }++ }
is($after{FRESH}, 20, '20 more fresh hits') or diag(explain(\%after));
wait_until(sub { ($m) = scrape(); ($m->{req('fresh')} // 0) >= 50 }, 5, 'the 50th hit counted');
is($m->{req('fresh')}, 50, 'the new workers add to the totals: fresh 50');
--- error_log eval
qr/\[alert\].*exited on signal 9/
