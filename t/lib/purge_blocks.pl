# The checks t/091-purge.t (native Redis locations) and t/092-purge-redis2.t (redis2/HttpRedis
# locations) share: the same behaviour must come out of both.
use strict;
use warnings;

# purges_total of zone srcache_locks by result.
sub purge_counts {
    my ($m) = metrics();
    return { map { /^stale_cache_purges_total\{zone="srcache_locks",result="(\w+)"\}$/ ? ($1 => $m->{$_}) : () }
             keys %$m };
}

# Fills $uri, purges it: 200 naming what went, the Redis key deleted.
sub fill_and_purge_checks {
    my ($uri) = @_;
    my $r = http_get($uri);
    Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', "fill $uri");
    my $key = redis_key($uri);
    Test::More::is(redis('EXISTS', $key), 1, 'stored');
    $r = http_request('PURGE', $uri);
    Test::More::is($r->{status}, 200, 'PURGE: 200');
    Test::More::is($r->{body}, "key: |$uri\nredis: deleted\nmemo: none\npass-mark: none\n",
                   'PURGE: says what was removed');
    Test::More::like($r->{headers}{'content-type'} // '', qr{^text/plain}, 'text/plain');
    Test::More::is(redis('EXISTS', $key), 0, 'the Redis entry is gone');
    Test::More::is(purge_counts()->{removed}, 1, 'purges_total{result=removed} 1');
}

sub methods_checks {
    Test::More::is(purge_counts()->{not_found}, 2, 'purges_total{result=not_found} 2');
    my $r = http_request('PATCH', '/api/none');
    Test::More::is($r->{status}, 200, 'PATCH is not a purge method: proxied');
    Test::More::like($r->{body}, qr{^backend PATCH /api/none}, 'PATCH reached the backend');
}

# After the block's MISS of $uri: a lookup sets the memo; the purge drops it, and the next
# GET misses (a kept memo would say FRESH and srcache would miss on its own). Then a pass mark.
sub memo_and_mark_checks {
    my ($uri) = @_;
    my $r = http_get($uri);
    Test::More::is($r->{headers}{'x-stale-cache'}, 'FRESH', 'looked up: fresh, memo set');
    $r = http_request('PURGE', $uri);
    Test::More::is($r->{status}, 200, 'PURGE: 200');
    Test::More::like($r->{body}, qr/^redis: deleted\nmemo: removed\npass-mark: none\n/m,
                     'PURGE: the Redis entry and the memo');
    $r = http_get($uri);
    Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', 'next GET: MISS (no memo left)');
    Test::More::is($r->{body}, "backend GET $uri hit 2\n", 'and filled from the backend');
    backend_config('/api/p', status => 500);
    $r = http_get('/api/p');
    Test::More::is($r->{status}, 500, 'a 500: not stored, pass mark set');
    $r = http_request('DELETE', '/api/p');
    Test::More::is($r->{status}, 200, 'DELETE of a marked key: 200');
    Test::More::like($r->{body}, qr/^redis: not found\nmemo: none\npass-mark: removed\n/m,
                     'the pass mark went');
    backend_config('/api/p', clear => 1);
    $r = http_get('/api/p');
    Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', 'the key collapses again (MISS, not PASS)');
}

sub under_traffic_pre {
    my ($uri) = @_;
    my $r = http_get($uri);
    Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', "fill $uri");
    # A lookup: the memo is set, so the GETs below are fresh hits until the purge.
    $r = http_get($uri);
    Test::More::is($r->{headers}{'x-stale-cache'}, 'FRESH', 'fresh, memo set');
}

sub under_traffic_checks {
    my ($uri) = @_;
    my @r = responses();
    Test::More::is($r[0]{status}, 200, 'the PURGE: 200');
    my @gets = @r[1 .. $#r];
    Test::More::is(scalar(grep { !$_->{error} && $_->{status} == 200 } @gets), 100,
                   'all 100 GETs answered 200');
    my %n = %{ statuses(@gets) };
    my $after = 100 - ($n{FRESH} // 0);
    Test::More::cmp_ok($after, '>', 0, 'some GETs came after the purge')
        or Test::More::diag(Test::More::explain(\%n));
    Test::More::is(backend_hits($uri), 2, 'the backend saw the first fill and exactly one more')
        or Test::More::diag(Test::More::explain(\%n));
    Test::More::is(($n{MISS} // 0) + ($n{GONE} // 0) + ($n{TIMEOUT} // 0) + ($n{PASS} // 0), 1,
                   'one GET filled, the others were served from the cache')
        or Test::More::diag(Test::More::explain(\%n));
    Test::More::is(redis('EXISTS', redis_key($uri)), 1, 'stored again');
}

# The variant set of $uri, as the documented store locations name it.
sub variants_key { 'variants:' . Digest::MD5::md5_hex($_[0]) }

# Variants: $uri stored for two User-Agents; a PURGE with one deletes both entries and the
# URL's variant set, and both miss again; a URL with no variants answers 404.
sub variants_checks {
    my ($uri) = @_;
    my %ua = (a => { 'User-Agent' => 'agent-a' }, b => { 'User-Agent' => 'agent-b' });
    for (sort keys %ua) {
        my $r = http_get($uri, $ua{$_});
        Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', "fill $uri for agent-$_");
    }
    my @keys = map { redis_key($uri, "agent-$_") } sort keys %ua;
    Test::More::is(redis('EXISTS', @keys), 2, 'both variants stored');
    my $index = variants_key($uri);
    Test::More::is_deeply([sort @{ redis('SMEMBERS', $index) }], [sort @keys],
                          'the variant set lists both Redis keys');
    my $ttl = redis('TTL', $index);
    Test::More::ok($ttl > 100 && $ttl <= 105, "the variant set expires with them (TTL $ttl)");
    my $r = http_request('PURGE', $uri, $ua{a});
    Test::More::is($r->{status}, 200, 'PURGE with agent-a: 200');
    Test::More::is($r->{body}, "key: agent-a|$uri\nredis: deleted 2 keys\nmemo: none\npass-mark: none\n",
                   'PURGE: says how many variants went');
    Test::More::is(redis('EXISTS', @keys, $index), 0, 'both entries and the variant set are gone');
    for (sort keys %ua) {
        $r = http_get($uri, $ua{$_});
        Test::More::is($r->{headers}{'x-stale-cache'}, 'MISS', "next GET for agent-$_: MISS");
    }
    Test::More::is(backend_hits($uri), 4, 'each variant filled again from the backend');
    Test::More::is(redis('EXISTS', @keys), 2, 'both stored again');
    $r = http_request('PURGE', '/api/none', $ua{a});
    Test::More::is($r->{status}, 404, 'PURGE of a URL with no variants: 404');
    Test::More::is($r->{body}, "key: agent-a|/api/none\nredis: not found\nmemo: none\npass-mark: none\n",
                   'nothing deleted');
    Test::More::is(purge_counts()->{removed}, 1, 'purges_total{result=removed} 1');
    Test::More::is(purge_counts()->{not_found}, 1, 'purges_total{result=not_found} 1');
}

1;
