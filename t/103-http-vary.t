# stale_cache_http, Vary (nginx-conf/http-cache.conf as shipped): a response with Vary is
# stored as a variant of its URL ("<key>:v:<md5>"), the URL's "<key>:w" says what it varies
# on, Vary: * is never stored, a purge or an invalidation drops every variant, and a URL
# without Vary costs no extra Redis round trip; per-entry windows with stale, collapsing,
# the hot tier and three nodes.
use lib 't/lib';
use Test::StaleCache;
use Fleet;

our $HTTP = "    stale_cache_zone srcache_locks 1m;\n";

sub shipped {
    my $text = Test::StaleCache::slurp('nginx-conf/http-cache.conf') // die "http-cache.conf: $!";
    my ($server) = $text =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die 'no server';
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die 'no listen 8080';
    $server =~ s{http://www;}{http://backend;}g or die 'no proxy_pass';
    # PURGE requests delete the URL through $cache_purge (/redispurge).
    $server =~ s/(\n\s*stale_cache on;)/$1\n            stale_cache_purge PURGE;/ or die 'no stale_cache on';
    return $server;
}

# The same with the hot tier on.
sub shipped_hot {
    my $server = shipped();
    $server =~ s/(\n\s*stale_cache on;)/$1\n            stale_cache_hot on;/ or die 'no stale_cache on';
    return $server;
}

sub shipped_http {
    my $text = Test::StaleCache::slurp('nginx-conf/http-cache.conf') // die "http-cache.conf: $!";
    return $::HTTP . join('', map { "$_\n" } $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg);
}

sub key_of { Digest::MD5::md5_hex("http://localhost" . shift) }
sub hdr { my ($r, $h) = @_; $r->{headers}{lc $h} }
sub variants {    # the variant entries of key $k (a count in scalar context)
    my $k = shift;
    my @v = sort grep { /^\Q$k\E:v:[0-9a-f]{32}$/ } @{ redis('KEYS', "$k:v:*") };
    return @v;
}

# How many EVALs (lookups and stores: one round trip each) Redis ran.
sub evals {
    my ($n) = redis('INFO', 'commandstats') =~ /cmdstat_eval:calls=(\d+)/;
    return $n // 0;
}

sub get_al {
    my ($p, $al) = @_;
    return http_get($p, defined $al ? { 'Accept-Language' => $al } : {});
}

# Variants of one URL: each Accept-Language has its own entry; the names and values are
# normalised; a request without the header is a variant of its own.
sub check_variants {
    my $p = '/v';
    my $key = key_of($p);
    backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: accept-language']);
    my $r = get_al($p, 'en');
    is(hdr($r, 'x-stale-cache'), 'MISS', 'en: MISS');
    wait_until(sub { redis('GET', "$key:w") }, 5, 'stored');
    is(redis('GET', "$key:w"), 'v=accept-language', 'the URL\'s record: what it varies on');
    is(redis('EXISTS', $key), 0, 'no entry under the URL\'s own key');
    is(scalar(my @v = variants($key)), 1, 'one variant');
    $r = get_al($p, 'en');
    is(hdr($r, 'x-stale-cache'), 'FRESH', 'en again: FRESH');
    is($r->{body}, "backend GET $p hit 1\n", 'en: its variant');
    like(hdr($r, 'age') // '', qr/^\d+$/, 'with an Age');
    $r = get_al($p, 'fr');
    is(hdr($r, 'x-stale-cache'), 'MISS', 'fr: MISS (not the en variant)');
    is($r->{body}, "backend GET $p hit 2\n", 'fr: from the backend');
    wait_until(sub { variants($key) == 2 }, 5, 'the fr variant stored');
    is(get_al($p, 'fr')->{body}, "backend GET $p hit 2\n", 'fr again: the fr variant');
    is(get_al($p, ' en ')->{body}, "backend GET $p hit 1\n", 'en with spaces: the en variant');
    $r = get_al($p, undef);
    is($r->{body}, "backend GET $p hit 3\n", 'no Accept-Language: a variant of its own');
    wait_until(sub { variants($key) == 3 }, 5, 'stored');
    is(get_al($p, undef)->{body}, "backend GET $p hit 3\n", 'and served from it');
    is(get_al($p, '')->{body}, "backend GET $p hit 4\n", 'an empty Accept-Language differs from none');
    is(backend_hits($p), 4, 'four backend hits for four variants');
    is(redis('SCARD', "$key:vs"), 8, 'the variant set lists the four variants and their windows');

    # Several names, in any case and order, with list members spaced differently.
    my $q = '/v2';
    backend_config($q, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language, ACCEPT',
                                  'Vary: accept-language']);
    http_get($q, { 'Accept' => 'text/html, */*', 'Accept-Language' => 'de' });
    wait_until(sub { redis('GET', key_of($q) . ':w') }, 5, 'stored');
    is(redis('GET', key_of($q) . ':w'), 'v=accept,accept-language', 'names sorted, case-folded, once');
    is(http_get($q, { 'Accept-Language' => 'de', 'Accept' => 'text/html,*/*' })->{body},
       "backend GET $q hit 1\n", 'the same variant');
    is(http_get($q, { 'Accept-Language' => 'de', 'Accept' => '*/*, text/html' })->{body},
       "backend GET $q hit 2\n", 'members in another order: another variant');
}

# Vary: * is never stored; a URL that stops varying is stored under its own key again.
sub check_star_and_change {
    my $p = '/star';
    backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: *']);
    get_al($p, 'en') for 1 .. 2;
    is(backend_hits($p), 2, 'Vary: * : both requests to the backend');
    is(scalar @{ redis('KEYS', key_of($p) . '*') }, 0, 'nothing in Redis');

    my $q = '/change';
    my $key = key_of($q);
    backend_config($q, header => ['Cache-Control: max-age=1', 'Vary: Accept-Language']);
    get_al($q, 'en');
    wait_until(sub { variants($key) == 1 }, 5, 'a variant stored');
    wait_until(sub { !variants($key) }, 5, 'it expired');
    backend_config($q, header => ['Cache-Control: max-age=60']);
    get_al($q, 'en');
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored under the URL\'s key');
    like(redis('GET', "$key:w"), qr/^\d+_\d+_\d+_\d+$/, 'with its windows (no vary record)');
    is(get_al($q, 'fr')->{body}, "backend GET $q hit 2\n", 'served to every request');
    is(backend_hits($q), 2, 'from the cache');
}

# A purge, and an unsafe request's invalidation, drop every variant of the URL.
sub check_purge {
    my $p = '/pv';
    my $key = key_of($p);
    backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
    for my $al ('en', 'fr', 'de') {
        get_al($p, $al);
    }
    wait_until(sub { variants($key) == 3 }, 5, 'three variants stored');
    my $r = http_request('PURGE', $p);
    is($r->{status}, 200, 'PURGE: 200');
    is(scalar @{ redis('KEYS', "$key*") }, 0, 'every variant, window and record gone');
    is(hdr(get_al($p, 'fr'), 'x-stale-cache'), 'MISS', 'fr afterwards: MISS');

    for my $al ('en', 'de') {
        get_al($p, $al);
    }
    wait_until(sub { variants($key) == 3 }, 5, 'three variants again');
    is(http_request('POST', $p, {}, 'x')->{status}, 200, 'POST: 200');
    wait_until(sub { !@{ redis('KEYS', "$key*") } }, 5, 'the POST invalidated every variant');
}

# Round trips: a URL without Vary is looked up with one EVAL, then answered by the freshness
# memo; one with Vary with one EVAL more the first time (the URL's record, then its
# variant), then by its variant's memo; another variant goes straight to its own lookup.
sub check_round_trips {
    backend_config('/plain', header => ['Cache-Control: max-age=60']);
    backend_config('/varies', header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
    for my $p ('/plain', '/varies') {
        get_al($p, 'en');
        wait_until(sub { redis('GET', key_of($p) . ':w') }, 5, "$p stored");
    }
    redis('CONFIG', 'RESETSTAT');
    is(hdr(get_al('/plain', 'en'), 'x-stale-cache'), 'FRESH', '/plain: FRESH');
    is(evals(), 1, '/plain: one lookup');
    is(hdr(get_al('/plain', 'en'), 'x-stale-cache'), 'FRESH', '/plain again: FRESH');
    is(evals(), 1, '/plain again: no lookup (the memo)');
    redis('CONFIG', 'RESETSTAT');
    is(hdr(get_al('/varies', 'en'), 'x-stale-cache'), 'FRESH', '/varies: FRESH');
    is(evals(), 2, '/varies: one lookup more, for its variant');
    my $r = get_al('/varies', 'en');
    is(hdr($r, 'x-stale-cache'), 'FRESH', '/varies again: FRESH');
    is($r->{body}, "backend GET /varies hit 1\n", 'its variant');
    is(evals(), 2, '/varies again: no lookup (the variant\'s memo)');
    redis('CONFIG', 'RESETSTAT');
    $r = get_al('/varies', 'fr');
    is(hdr($r, 'x-stale-cache'), 'MISS', '/varies fr: MISS');
    is($r->{body}, "backend GET /varies hit 2\n", 'from the backend');
    wait_until(sub { evals() >= 2 }, 5, 'stored');
    is(evals(), 2, '/varies fr: one lookup (its variant, directly) and the store');
    redis('CONFIG', 'RESETSTAT');
    is(get_al('/varies', 'fr')->{body}, "backend GET /varies hit 2\n", '/varies fr again');
    is(evals(), 1, 'one lookup: the variant');
    is(get_al('/varies', 'fr')->{body}, "backend GET /varies hit 2\n", 'and again');
    is(evals(), 1, 'then its memo');

    # The URL stops varying: a remembered variant's lookup finds no record, the URL is
    # looked up as a whole.
    redis('DEL', key_of('/varies') . ':w');
    backend_config('/varies', header => ['Cache-Control: max-age=60']);
    is(get_al('/varies', 'de')->{body}, "backend GET /varies hit 3\n", 'de: from the backend');
    wait_until(sub { redis('EXISTS', key_of('/varies')) }, 5, 'stored under the URL\'s key');
    $r = get_al('/varies', 'it');
    is(hdr($r, 'x-stale-cache'), 'FRESH', 'it: FRESH');
    is($r->{body}, "backend GET /varies hit 3\n", 'the URL\'s entry');
}

# Hits answered by the freshness memo (no lookup) carry Age too: the entry's age when it
# was looked up plus the time since.
sub check_memo_age {
    backend_config('/aged', header => ['Cache-Control: max-age=600', 'Age: 100']);
    backend_config('/aged-v', header => ['Cache-Control: max-age=600', 'Age: 200',
                                         'Vary: Accept-Language']);
    for my $p ('/aged', '/aged-v') {
        get_al($p, 'en');
        wait_until(sub { redis('GET', key_of($p) . ':w') }, 5, "$p stored");
        my $r = get_al($p, 'en');
        is(hdr($r, 'x-stale-cache'), 'FRESH', "$p: FRESH after a lookup");
        my $age = hdr($r, 'age') // '';
        like($age, qr/^\d+$/, "$p: with an Age");
        redis('CONFIG', 'RESETSTAT');
        $r = get_al($p, 'en');
        is(hdr($r, 'x-stale-cache'), 'FRESH', "$p: FRESH by the memo");
        is(evals(), 0, "$p: no lookup");
        my $memo_age = hdr($r, 'age') // 'none';
        ok($memo_age =~ /^\d+$/ && $memo_age >= $age && $memo_age <= $age + 2,
           "$p: the memo hit's Age ($memo_age) follows the lookup's ($age)");
    }
}

# A variant's own windows: stale-while-revalidate serves it STALE and refreshes that variant
# only; concurrent misses of one variant collapse into one backend request.
sub check_windows_and_collapsing {
    my $p = '/vw';
    my $key = key_of($p);
    backend_config($p, header => ['Cache-Control: max-age=1, stale-while-revalidate=30',
                                  'Vary: Accept-Language']);
    get_al($p, 'en');
    get_al($p, 'fr');
    wait_until(sub { variants($key) == 2 }, 5, 'two variants');
    my ($en) = grep { redis('GET', $_) =~ /hit 1\n\z/ } variants($key);
    is(redis('GET', "$en:w"), '30_0_31_0', 'the en variant\'s windows: 30 s stale');
    wait_until(sub { redis('TTL', $en) < 30 }, 5, 'past its freshness');
    my $r = get_al($p, 'en');
    is(hdr($r, 'x-stale-cache'), 'STALE', 'en: STALE');
    is($r->{body}, "backend GET $p hit 1\n", 'the stored en variant, at once');
    wait_until(sub { redis('GET', $en) =~ /hit 3\n\z/ }, 5, 'the en variant refreshed');
    like(redis('GET', grep { $_ ne $en } variants($key)), qr/hit 2\n\z/, 'the fr variant untouched');

    my $q = '/vc';
    backend_config($q, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
    get_al($q, 'en');
    wait_until(sub { variants(key_of($q)) == 1 }, 5, 'the URL varies');
    my @r = Test::StaleCache::run_jobs(
        [map { { port => $ENV{TEST_NGINX_SERVER_PORT},
                 reqs => [Test::StaleCache::build_request("GET $q",
                          { 'Accept-Language' => 'it', 'X-Backend-Delay' => '0.5' })] } } 1 .. 10], 15);
    is(scalar(grep { ($_->{status} // 0) == 200 } @r), 10, '10 concurrent misses of the it variant: 10 x 200');
    is(scalar(grep { $_->{body} eq "backend GET $q hit 2\n" } @r), 10, 'all with the one it answer');
    is(backend_hits($q), 2, 'one backend request for them');
}

# The hot tier: a URL without Vary becomes HOT in the mode; a variant never enters it, so
# every client keeps getting its own variant.
sub check_hot {
    backend_config('/hplain', header => ['Cache-Control: max-age=60']);
    http_get('/hplain');
    wait_until(sub { hdr(http_get('/hplain'), 'x-stale-cache') eq 'FRESH' }, 5, 'stored');
    my $hot = wait_until(sub { my $r = http_get('/hplain'); hdr($r, 'x-stale-cache') eq 'HOT' && $r },
                         5, '/hplain served HOT');
    is($hot->{body}, "backend GET /hplain hit 1\n", 'the hot copy');
    my $p = '/hv';
    backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
    get_al($p, 'en');
    get_al($p, 'fr');
    wait_until(sub { variants(key_of($p)) == 2 }, 5, 'two variants');
    for my $i (1 .. 6) {
        my ($en, $fr) = (get_al($p, 'en'), get_al($p, 'fr'));
        is($en->{body}, "backend GET $p hit 1\n", "round $i: en gets its variant");
        is($fr->{body}, "backend GET $p hit 2\n", "round $i: fr gets its variant");
        isnt(hdr($en, 'x-stale-cache'), 'HOT', "round $i: not from the hot tier");
    }
}

# Three nginx on one Redis: a variant one node stored is served by the others (each learns
# the URL's record by itself); concurrent misses of a new variant: at most one fill per
# node; a PURGE through one node drops the variants for all.
sub check_fleet {
    my $p = '/fv';
    my $key = key_of($p);
    backend_config($p, header => ['Cache-Control: max-age=60', 'Vary: Accept-Language']);
    get_al($p, 'en');
    wait_until(sub { variants($key) == 1 }, 5, 'en stored by node 0');
    my @r = fleet_get($p, 30, { 'Accept-Language' => 'en' });
    is(scalar(grep { ($_->{status} // 0) == 200 && $_->{body} eq "backend GET $p hit 1\n" } @r), 30,
       '30 en requests over 3 nodes: the stored en variant');
    is(backend_hits($p), 1, 'no backend request for them');
    @r = fleet_get($p, 30, { 'Accept-Language' => 'fr', 'X-Backend-Delay' => '0.3' });
    is(scalar(grep { ($_->{status} // 0) == 200 && $_->{body} =~ /^backend GET \Q$p\E hit [234]\n\z/ } @r),
       30, '30 fr requests: 200, each with a fr answer');
    my $hits = backend_hits($p);
    ok($hits >= 2 && $hits <= 4, "at most one fill per node ($hits backend hits in all)");
    wait_until(sub { variants($key) == 2 }, 5, 'fr stored');
    my ($r) = Test::StaleCache::run_jobs([{ port => (node_ports())[1],
        reqs => [Test::StaleCache::build_request("PURGE $p")] }], 10);
    is($r->{status}, 200, 'PURGE through node 1: 200');
    is(scalar @{ redis('KEYS', "$key*") }, 0, 'every key of the URL gone');
    @r = fleet_get($p, 3, { 'Accept-Language' => 'en' });
    is(scalar(grep { ($_->{status} // 0) == 200 && $_->{body} ne "backend GET $p hit 1\n" } @r), 3,
       'each node answers en anew after the purge');
    nodes_clean(1, 2);
}

run_tests();

__DATA__

=== TEST 1: variants of a URL, normalised names and values
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_variants();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 2: Vary: * is not stored; a URL that stops varying
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_star_and_change();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 3: purge and invalidation drop every variant
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_purge();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 4: round trips with and without Vary
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_round_trips();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 5: Age on hits answered by the freshness memo
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_memo_age();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 6: a variant's own windows (stale-while-revalidate) and collapsing of one variant's misses
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_windows_and_collapsing();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 7: the hot tier: HOT for a URL without Vary, never for a variant
--- http_config eval: ::shipped_http() . "    stale_cache_hot_zone hot 4m;\n"
--- config eval: ::shipped_hot()
--- check
check_hot();
--- no_error_log
[alert]
[crit]
[error]

=== TEST 8: three nginx on one Redis: variants shared, one fill per node at most, PURGE through one node
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- pre
start_nodes(3);
--- check
check_fleet();
--- no_error_log
[alert]
[crit]
[error]
