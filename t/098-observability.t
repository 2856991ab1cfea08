# docs/observability/: every metric, label and label value that the example PromQL
# (promql.md) and the Grafana dashboard (grafana-dashboard.json) use exists in the module's
# /metrics output after some traffic; the dashboard is JSON with the fields Grafana needs; and a
# Prometheus server scraping the module accepts every query and answers the ratios.
use lib 't/lib';
use Test::StaleCache;
use Prometheus;
use JSON::PP ();

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 1m;
_EOC_

our $CONFIG = drop_in_config('stale_cache_hot on;') . <<'_EOC_';
    location = /metrics { stale_cache_metrics; }
_EOC_

# The queries of promql.md (its ```promql blocks).
sub doc_queries {
    my $md = Test::StaleCache::slurp('docs/observability/promql.md') // die "promql.md: $!";
    return $md =~ /^```promql\n(.*?)^```$/msg;
}

# The dashboard, parsed; dies on invalid JSON.
sub dashboard {
    my $text = Test::StaleCache::slurp('docs/observability/grafana-dashboard.json') // die "dashboard: $!";
    return JSON::PP->new->decode($text);
}

# Every panel of the dashboard, those inside rows too.
sub panels {
    my @out;
    my @todo = @{ shift->{panels} // [] };
    while (my $p = shift @todo) {
        push @out, $p;
        push @todo, @{ $p->{panels} // [] };
    }
    return @out;
}

# The exposition: { metric => { label => { value => 1 } } } for every sample.
sub exposition {
    my $text = shift;
    my %m;
    for (split /\n/, $text) {
        next if /^#/ || !/\S/;
        my ($name, $labels) = /^(\w+)(?:\{(.*)\})? \S+$/ or next;
        $m{$name} //= {};
        $m{$name}{$1}{$2} = 1 while ($labels // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
    }
    return \%m;
}

# What $expr ($what says where it is) uses that /metrics ($m) lacks: metric names, label
# names of selectors and of by/without, label values of matchers (each alternative of a
# plain a|b regex). Grafana variables ($zone) and Prometheus's own labels are not checked.
sub missing {
    my ($m, $expr) = @_;
    my @missing;
    my @names = $expr =~ /\b(stale_cache_\w+)/g;
    push @missing, map { "metric $_" } grep { !$m->{$_} } @names;
    my %target = map { $_ => 1 } qw(instance job);
    while ($expr =~ /\b(stale_cache_\w+)\s*\{([^}]*)\}/g) {
        my ($name, $sel) = ($1, $2);
        next unless $m->{$name};
        while ($sel =~ /(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g) {
            my ($label, $op, $value) = ($1, $2, $3);
            next if $target{$label} || $value =~ /\$/;
            if (!$m->{$name}{$label}) { push @missing, "label $label of $name"; next }
            my @values = $op =~ /~/ ? ($value =~ /^[\w|-]+$/ ? split(/\|/, $value) : ()) : ($value);
            push @missing, map { "$name\{$label=\"$_\"}" } grep { !$m->{$name}{$label}{$_} } @values;
        }
    }
    while ($expr =~ /\b(?:by|without)\s*\(([^)]*)\)/g) {
        for my $label (split /\s*,\s*/, $1) {
            next if $target{$label} || $label eq 'le' && grep { /_bucket$/ } @names;
            push @missing, "label $label (by/without) of none of @names"
                unless grep { $m->{$_} && $m->{$_}{$label} } @names;
        }
    }
    return @missing;
}

sub one_line { my $q = shift; $q =~ s/\s+/ /g; $q }

# A dashboard query as Prometheus takes it: Grafana's variables replaced as "All" would.
sub plain {
    my $q = shift;
    $q =~ s/\$__rate_interval/1m/g;
    $q =~ s/\$(zone|instance)\b/.*/g;
    return $q;
}

run_tests();

__DATA__

=== TEST 1: every metric, label and value the queries and the dashboard use is in /metrics
--- http_config eval: $::HTTP
--- config eval: $::CONFIG
--- request
GET /api/warm
--- check
# Traffic of most kinds: a miss, fresh hits made hot, a stale hit and its refresh, a purge.
http_get('/api/a') for 1 .. 4;
fill_and_stale('/api/s');
is(http_get('/api/s')->{headers}{'x-stale-cache'}, 'STALE', 'a stale hit');
my ($m, $r) = metrics();
is($r->{status}, 200, '/metrics: 200');
my $exp = exposition($r->{body});
cmp_ok(scalar keys %$exp, '>=', 20, 'the exposition has its families');
ok($exp->{stale_cache_hot_candidate_evictions_total}, 'hot zone families included');

my @docs = doc_queries();
cmp_ok(scalar @docs, '>=', 15, scalar(@docs) . ' queries in promql.md');
for my $q (@docs) {
    my @miss = missing($exp, $q);
    is("@miss", '', 'promql.md: ' . one_line($q));
}
like(join("\n", @docs), qr/status=~"fresh\|hot\|stale\|stale-error"/, 'promql.md: the hit statuses');

my $d = eval { dashboard() };
ok($d, 'grafana-dashboard.json parses') or diag($@);
$d //= {};
ok($d->{title} && $d->{uid} && $d->{schemaVersion} =~ /^\d+$/, 'title, uid, schemaVersion');
my @panels = panels($d);
my %ids;
my @exprs;
for my $p (@panels) {
    ok(!$ids{ $p->{id} }++, "panel id $p->{id} unique");
    my $g = $p->{gridPos} // {};
    ok(defined $g->{x} && $g->{w} && $g->{h} && $g->{x} + $g->{w} <= 24, "\"$p->{title}\": gridPos");
    next if $p->{type} eq 'row';
    my @t = @{ $p->{targets} // [] };
    ok(@t, "\"$p->{title}\": has queries");
    is($p->{datasource}{uid}, '${datasource}', "\"$p->{title}\": the datasource variable");
    push @exprs, map { $_->{expr} } @t;
}
cmp_ok(scalar @exprs, '>=', 15, scalar(@exprs) . ' queries in the dashboard');
my %vars = map { $_->{name} => $_ } @{ $d->{templating}{list} // [] };
ok($vars{datasource} && $vars{datasource}{type} eq 'datasource', 'a datasource variable');
for my $v (grep { $_->{type} eq 'query' } values %vars) {
    my $q = ref $v->{query} ? $v->{query}{query} : $v->{query};
    my @miss = missing($exp, $q);
    is("@miss", '', "dashboard variable \$$v->{name}: $q");
}
for my $q (@exprs) {
    my @miss = missing($exp, $q);
    is("@miss", '', 'dashboard: ' . one_line($q));
}

# The check itself finds a name that does not exist, and a label value that does not.
is(join(',', missing($exp, 'rate(stale_cache_hot_evicted_total[5m])')), 'metric stale_cache_hot_evicted_total',
   'a wrong metric name is found');
is(join(',', missing($exp, 'stale_cache_requests_total{status=~"fresh|hits"}')),
   'stale_cache_requests_total{status="hits"}', 'a wrong label value is found');

SKIP: {
    skip 'prometheus not installed', 3 if system('command -v prometheus >/dev/null 2>&1');
    my $port = start_prometheus();
    # Two scrapes at least: rate() needs both.
    wait_until(sub { my $a = prom_api($port, 'count(rate(stale_cache_requests_total[1m]))', 5);
                     $a && $a->{status} eq 'success' && @{ $a->{data}{result} } }, 60,
               'Prometheus to scrape /metrics twice');
    my @bad;
    my @empty;
    for my $q (@docs, map { plain($_) } @exprs) {
        my $a = prom_api($port, $q, 5);
        if (!$a || $a->{status} ne 'success') {
            push @bad, "$q: " . ($a ? "$a->{errorType}: $a->{error}" : 'no answer');
        } elsif (!@{ $a->{data}{result} } && $q !~ /\)\s*>\s*[\d.]+\s*$/) {
            push @empty, $q;    # a filter (> 0) may rightly find nothing
        }
    }
    is(join("\n", @bad), '', 'Prometheus accepts every query');
    is(join("\n", @empty), '', 'and every query but the filters answers');
    my $hit = prom_api($port, plain($exprs[0]), 5);
    like($hit->{data}{result}[0]{value}[1] // '', qr/^(0(\.\d+)?|1|NaN)$/, 'the hit ratio is a ratio');
}
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/]
