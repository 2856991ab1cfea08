# The HTTP-semantics mode (stale_cache_http) through nginx-conf/http-cache.conf as shipped (its
# server block, with the harness's backend and Redis): what is stored and for how long comes
# from the response; each entry keeps its own windows in "<key>:w", so the TTL lookup judges
# it by them; responses from the cache carry Age.
use lib 't/lib';
use Test::StaleCache;
use Time::HiRes qw(time sleep);
use POSIX qw(strftime);

our $HTTP = "    stale_cache_zone srcache_locks 1m;\n";
# A TCP proxy to Redis that holds what nginx sends for a while (TEST 14's store location).
our $SLOW_PORT = $ENV{TEST_NGINX_SLOW_PORT} = pick_port();

# The server block of nginx-conf/http-cache.conf without its listen line (the harness adds
# its own), proxying to the harness's backend; its http-level key variables.
sub shipped {
    my $text = Test::StaleCache::slurp('nginx-conf/http-cache.conf') // die "http-cache.conf: $!";
    my ($server) = $text =~ /\n    server \{\n(.*)\n    \}\n\}\s*\z/s or die 'no server';
    $server =~ s/^\s*listen 127\.0\.0\.1:8080;[^\n]*\n//m or die 'no listen 8080';
    $server =~ s{http://www;}{http://backend;}g or die 'no proxy_pass';
    return $server;
}

sub shipped_http {
    my $text = Test::StaleCache::slurp('nginx-conf/http-cache.conf') // die "http-cache.conf: $!";
    return $::HTTP . join('', map { "$_\n" } $text =~ /^(\s*stale_cache_redis_variable [^\n]*)$/mg);
}

# The Redis key of $path under http-cache.conf ($scheme://$host$request_uri; the harness
# sends Host: localhost).
sub key_of { Digest::MD5::md5_hex("http://localhost" . shift) }

sub hdr { my ($r, $h) = @_; $r->{headers}{lc $h} }

# A response with max-age=2: stored for 2 s with windows "0_0_2_0", the second request is a
# FRESH hit with an Age; after the entry's life the backend is asked again.
sub check_max_age {
    my $p = '/ma';
    backend_config($p, header => ['Cache-Control: max-age=2']);
    my $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'MISS', 'first: MISS');
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    my $ttl = redis('TTL', $key);
    ok($ttl >= 1 && $ttl <= 2, "stored for max-age (TTL $ttl)");
    is(redis('GET', "$key:w"), '0_0_2_0', 'the entry\'s windows: no stale, no grace, 2 s in all');
    $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'FRESH', 'second: FRESH');
    like(hdr($r, 'age') // '', qr/^[01]$/, 'with an Age');
    is($r->{body}, "backend GET $p hit 1\n", 'the stored body');
    wait_until(sub { !redis('EXISTS', $key) }, 5, 'the entry ends with its freshness');
    $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'MISS', 'after max-age: MISS (never served stale)');
    is(backend_hits($p), 2, 'the backend asked twice');
}

# Responses that must not be stored, each asked twice: two backend hits, nothing in Redis.
sub check_not_stored {
    my %cases = (
        '/none'    => [],
        '/nostore' => ['Cache-Control: max-age=60, no-store'],
        '/private' => ['Cache-Control: private, max-age=60'],
        '/nocache' => ['Cache-Control: no-cache, max-age=60'],
        '/zero'    => ['Cache-Control: max-age=0'],
        '/vary'    => ['Cache-Control: max-age=60', 'Vary: *'],
        '/vary2'   => ['Cache-Control: max-age=60', 'Vary: Accept, *'],
        '/old'     => ['Cache-Control: max-age=60', 'Age: 120'],
    );
    for my $p (sort keys %cases) {
        backend_config($p, header => $cases{$p});
        http_get($p) for 1 .. 2;
        is(backend_hits($p), 2, "$p: both requests went to the backend");
        is(redis('EXISTS', key_of($p)), 0, "$p: nothing stored");
    }
}

# s-maxage wins over max-age; Expires - Date counts; a 404 with max-age is stored.
sub check_stored {
    backend_config('/s', header => ['Cache-Control: max-age=5, s-maxage=50']);
    backend_config('/e', header => ['Expires: ' . strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime(int(time) + 40))]);
    backend_config('/404', status => 404, header => ['Cache-Control: max-age=30']);
    for my $p ('/s', '/e', '/404') {
        http_get($p);
        wait_until(sub { redis('EXISTS', key_of($p)) }, 5, "$p stored");
        my $r = http_get($p);
        is(hdr($r, 'x-stale-cache'), 'FRESH', "$p: FRESH");
        is(backend_hits($p), 1, "$p: one backend hit");
    }
    my $ttl = redis('TTL', key_of('/s'));
    ok($ttl > 40, "s-maxage's 50 s, not max-age's 5 (TTL $ttl)");
    $ttl = redis('TTL', key_of('/e'));
    ok($ttl > 30 && $ttl <= 40, "Expires - Date (TTL $ttl)");
    is(http_get('/404')->{status}, 404, 'the stored 404 is served');
}

# The origin's stale-while-revalidate: stale after max-age, served at once and refreshed.
sub check_swr {
    my $p = '/swr';
    backend_config($p, header => ['Cache-Control: max-age=1, stale-while-revalidate=30']);
    http_get($p);
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    is(redis('GET', "$key:w"), '30_0_31_0', 'windows: 30 s stale');
    wait_until(sub { redis('TTL', $key) < 30 }, 5, 'out of its freshness');
    my $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'STALE', 'STALE');
    is($r->{body}, "backend GET $p hit 1\n", 'the stored body, at once');
    wait_until(sub { backend_hits($p) == 2 }, 5, 'refreshed in the background');
}

# An unsafe request answered 2xx/3xx deletes its URL's entry and those of its same-host
# Location and Content-Location; an error answer deletes nothing.
sub check_invalidation {
    my @paths = ('/inv', '/loc-target', '/cl-target', '/other');
    for my $p (@paths) {
        backend_config($p, header => ['Cache-Control: max-age=60']);
        http_get($p);
        wait_until(sub { redis('EXISTS', key_of($p)) }, 5, "$p stored");
    }
    backend_config('/failing', status => 500);
    is(http_request('POST', '/failing', {}, 'x')->{status}, 500, 'a failing POST');
    is(redis('EXISTS', key_of('/inv')), 1, 'deletes nothing');
    is(http_request('POST', '/inv', {}, 'x')->{status}, 200, 'POST /inv: 200');
    wait_until(sub { !redis('EXISTS', key_of('/inv')) && !redis('EXISTS', key_of('/inv') . ':w') },
               5, 'the entry of /inv and its windows deleted');
    backend_config('/act', header => ['Location: /loc-target',
                                      'Content-Location: http://localhost/cl-target']);
    is(http_request('DELETE', '/act')->{status}, 200, 'DELETE /act: 200');
    wait_until(sub { !redis('EXISTS', key_of('/loc-target')) }, 5, 'the Location\'s entry deleted');
    wait_until(sub { !redis('EXISTS', key_of('/cl-target')) }, 5,
               'the Content-Location\'s entry deleted');
    is(redis('EXISTS', key_of('/other')), 1, 'another entry stays');
    is(http_get('/inv')->{headers}{'x-stale-cache'}, 'MISS', 'the next GET of /inv: MISS');
}

# Surrogate-Control wins over Cache-Control; must-understand with an unknown status is not
# stored; a compressed response is stored; If-None-Match overrules If-Modified-Since.
sub check_more {
    backend_config('/sc', header => ['Cache-Control: no-store', 'Surrogate-Control: max-age=60']);
    backend_config('/sc-ns', header => ['Cache-Control: max-age=60', 'Surrogate-Control: no-store']);
    backend_config('/mu', status => 599, header => ['Cache-Control: max-age=60, must-understand']);
    backend_config('/gz', header => ['Cache-Control: max-age=60', 'Content-Encoding: gzip']);
    for my $p ('/sc', '/sc-ns', '/mu', '/gz') {
        http_get($p) for 1 .. 2;
    }
    is(backend_hits('/sc'), 1, 'Surrogate-Control: max-age stores despite Cache-Control: no-store');
    ok(!defined hdr(http_get('/sc'), 'surrogate-control'), 'Surrogate-Control not sent to clients');
    is(backend_hits('/sc-ns'), 2, 'Surrogate-Control: no-store is not stored');
    is(backend_hits('/mu'), 2, 'must-understand with status 599 is not stored');
    is(backend_hits('/gz'), 1, 'a compressed response is stored');
    my $lm = 'Mon, 01 Jan 2024 00:00:00 GMT';
    backend_config('/cond', header => ['Cache-Control: max-age=60', 'ETag: "abc"',
                                       "Last-Modified: $lm"]);
    http_get('/cond');
    wait_until(sub { redis('EXISTS', key_of('/cond')) }, 5, 'stored');
    my $r = http_get('/cond', { 'If-None-Match' => '"abc"',
                               'If-Modified-Since' => 'Sun, 31 Dec 2023 00:00:00 GMT' });
    is($r->{status}, 304, 'a matching If-None-Match: 304, whatever If-Modified-Since says');
    is(backend_hits('/cond'), 1, 'from the cache');
}

# A response with an ETag is kept past its freshness (revalidate=1h): the next request
# revalidates it with If-None-Match; the 304's headers and life update the stored response,
# whose body stays; a 200 in its place is served and replaces it.
sub check_revalidation {
    my $p = '/rv';
    backend_config($p, header => ['Cache-Control: max-age=1', 'ETag: "v1"', 'X-Version: 1']);
    http_get($p);
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    my $ttl = redis('TTL', $key);
    ok($ttl > 3000, "kept for revalidation (TTL $ttl)");
    wait_until(sub { redis('TTL', $key) < 3600 }, 5, 'past its freshness');
    backend_config($p, status => 304, header => ['Cache-Control: max-age=60', 'ETag: "v1"',
                                                 'X-Version: 2']);
    my $r = http_get($p);
    is($r->{status}, 200, 'the client gets a 200');
    is($r->{body}, "backend GET $p hit 1\n", 'with the stored body');
    is(hdr($r, 'x-version'), '2', 'and the 304\'s headers');
    my @log = backend_log($p);
    is(scalar @log, 2, 'one revalidation');
    is($log[1]{headers}{'if-none-match'}, '"v1"', 'conditional, with the stored ETag');
    like(redis('GET', $key), qr/X-Version: 2\r\n.*hit 1\n\z/s, 'the stored response updated');
    $ttl = redis('TTL', $key);
    ok($ttl > 3600, "with the 304's life (TTL $ttl)");
    $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'FRESH', 'then FRESH');
    is(backend_hits($p), 2, 'without the backend');
}

# A revalidation answered with a response that may not be stored (no-store): the old entry
# goes, and the client is not served it.
sub check_revalidation_no_store {
    my $p = '/rvns';
    backend_config($p, header => ['Cache-Control: max-age=1', 'ETag: "v1"']);
    http_get($p);
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    wait_until(sub { redis('TTL', $key) < 3600 }, 5, 'past its freshness');
    backend_config($p, header => ['Cache-Control: no-store']);
    my $r = http_get($p);
    is($r->{status}, 200, 'answered 200');
    unlike($r->{body}, qr/hit 1\n/, 'not the old answer');
    wait_until(sub { !redis('EXISTS', $key) }, 5, 'the old entry is gone');
}

# A 304 without freshness of its own: served from the stored response, which stays.
sub check_revalidation_bare_304 {
    my $p = '/rv2';
    backend_config($p, header => ['Cache-Control: max-age=1', 'ETag: "v1"']);
    http_get($p);
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    wait_until(sub { redis('TTL', $key) < 3600 }, 5, 'past its freshness');
    backend_config($p, status => 304, header => ['ETag: "v1"']);
    my $r = http_get($p);
    is($r->{status}, 200, 'answered 200');
    is($r->{body}, "backend GET $p hit 1\n", 'the stored body');
    is(backend_hits($p), 2, 'one revalidation, no second request');
    is(redis('EXISTS', $key), 1, 'the entry stays');
}

# The request's own directives (RFC 9111 5.2.1): no-cache, max-age=0, Pragma: no-cache and
# no-store go to the origin (no-store: nothing stored); max-age and min-fresh against the
# entry's age and freshness left.
sub check_request_directives {
    my $p = '/rq';
    my $key = key_of($p);
    backend_config($p, header => ['Cache-Control: max-age=600', 'Age: 50']);
    http_get($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    is(hdr(http_get($p), 'x-stale-cache'), 'FRESH', 'a plain request: FRESH');
    my $n = 1;
    for my $h (['Cache-Control', 'no-cache'], ['Cache-Control', 'max-age=0'], ['Pragma', 'no-cache'],
               ['Cache-Control', 'max-age=10'], ['Cache-Control', 'min-fresh=1000']) {
        my $r = http_get($p, { $h->[0] => $h->[1] });
        $n++;
        is($r->{body}, "backend GET $p hit $n\n", "$h->[0]: $h->[1]: from the origin");
        wait_until(sub { redis('GET', $key) =~ /hit $n\n\z/ }, 5, "$h->[0]: $h->[1]: the answer stored");
    }
    for my $cc ('max-age=1000', 'min-fresh=10', 'max-stale=5') {
        is(http_get($p, { 'Cache-Control' => $cc })->{body}, "backend GET $p hit $n\n",
           "Cache-Control: $cc: from the cache");
    }
    my $r = http_get($p, { 'Cache-Control' => 'no-store' });
    is($r->{body}, "backend GET $p hit " . ($n + 1) . "\n", 'no-store: from the origin');
    is(http_get($p)->{body}, "backend GET $p hit $n\n", 'and not stored');
    like(redis('GET', $key), qr/hit $n\n\z/, 'Redis holds the earlier answer');
}

# The shipped file with the line configurations had before the module wrote Age itself.
sub shipped_with_add_header_age {
    my $server = shipped();
    $server =~ s/^(\s*srcache_store_hide_header Age;\n)/$1            add_header Age \$stale_cache_http_age always;\n/m
        or die 'no srcache_store_hide_header Age';
    return "access_log logs/age.log age;\n" . $server;
}

# With `add_header Age $stale_cache_http_age always` still in the location: one Age, the
# module's, on a hit (the origin's Age stored nowhere); a miss keeps the origin's; the variable
# still has the entry's age in the access log.
sub check_add_header_age {
    my $p = '/dup';
    backend_config($p, header => ['Cache-Control: max-age=600', 'Age: 7']);
    my $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'MISS', 'first: MISS');
    is(hdr($r, 'age'), '7', 'a miss: the origin\'s Age, once');
    wait_until(sub { redis('EXISTS', key_of($p)) }, 5, 'stored');
    for my $n (1 .. 2) {
        $r = http_get($p);
        is(hdr($r, 'x-stale-cache'), 'FRESH', "hit $n: FRESH");
        like(hdr($r, 'age') // '', qr/^\d+$/, "hit $n: one Age header");
        ok((hdr($r, 'age') // 0) >= 7, "hit $n: the entry's age counts the origin's");
    }
    my $log = "$ENV{TEST_NGINX_SERVROOT}/logs/age.log";
    wait_until(sub { (() = (Test::StaleCache::slurp($log) // '') =~ /^\/dup age=\d+$/mg) == 2 },
               5, 'the access log has the two hits\' ages');
    like(Test::StaleCache::slurp($log), qr{^/dup age=-$}m, 'and no age for the miss');
}

# An unsafe request while Redis is away (stopped: this worker's lookups fail, its Redis
# locations refuse at once): the copy the fill kept on this node is served (LOCAL) until the
# POST, and not after it, although the invalidation's DEL could not be sent.
sub check_invalidation_away {
    my $p = '/inv-away';
    backend_config($p, header => ['Cache-Control: max-age=60']);
    stop_redis();
    is(hdr(http_get($p), 'x-stale-cache'), 'MISS', 'Redis away: the fill goes to the backend');
    my $r = http_get($p);
    is(hdr($r, 'x-stale-cache'), 'LOCAL', 'the next GET: the copy kept on this node');
    is($r->{body}, "backend GET $p hit 1\n", 'with the fill\'s answer');
    is(http_request('POST', $p, {}, 'x')->{status}, 200, 'POST: 200');
    $r = http_get($p);
    isnt(hdr($r, 'x-stale-cache'), 'LOCAL', 'the GET after the POST: not the kept copy');
    is($r->{body}, "backend GET $p hit 3\n", 'but the origin\'s answer');
    start_redis();
}

# The invalidation's DEL refused by Redis (its user may not EVAL for a moment): this node
# does not serve the entry Redis still holds, but goes to the origin until an answer is
# stored; that answer replaces the entry, and the hits come from the cache again.
sub check_invalidation_refused {
    my $p = '/inv-refused';
    backend_config($p, header => ['Cache-Control: max-age=60']);
    http_get($p);
    my $key = key_of($p);
    wait_until(sub { redis('EXISTS', $key) }, 5, 'stored');
    is(hdr(http_get($p), 'x-stale-cache'), 'FRESH', 'FRESH before the POST');
    redis('ACL', 'SETUSER', 'default', '-eval');
    my $post = http_request('POST', $p, {}, 'x');
    redis('ACL', 'SETUSER', 'default', '+eval');
    is($post->{status}, 200, 'POST: 200 (its DEL refused)');
    is(redis('EXISTS', $key), 1, 'Redis still holds the old entry');
    my $r = http_get($p);
    is($r->{body}, "backend GET $p hit 3\n", 'the next GET: from the origin, not the old entry');
    wait_until(sub { hdr(http_get($p), 'x-stale-cache') eq 'FRESH' }, 5, 'FRESH again');
    is(http_get($p)->{body}, "backend GET $p hit 3\n", 'from the cache: the new answer');
    is(backend_hits($p), 3, 'three backend hits in all');
}

# A keep-alive connection to nginx, and GET $path on it: (head, body) once the whole answer
# is in. The connection stays open (a client that closes it makes nginx abandon the
# answer's store), and nginx reads its next request only once the last one has ended.
sub kept_connection {
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT}")
        or die "connect: $!";
    $c->blocking(0);
    return $c;
}

sub get_on {
    my ($c, $path) = @_;
    print $c "GET $path HTTP/1.1\r\nHost: localhost\r\n\r\n";
    my $in = '';
    my $whole = sub {
        my $end = index($in, "\r\n\r\n");
        return 0 if $end < 0;
        my ($len) = substr($in, 0, $end) =~ /^Content-Length: (\d+)\r?$/mi;
        return length($in) - $end - 4 >= ($len // 0);
    };
    wait_until(sub { sysread($c, $in, 65536, length $in); $whole->() }, 5, "the answer to GET $path");
    return split /\r\n\r\n/, $in, 2;
}

# The shipped server block whose store location (/redis2) reaches Redis through the slow
# proxy, with a read timeout longer than its delay.
sub shipped_slow_store {
    my $server = shipped();
    $server =~ s{(location = /redis2 \{.*?)stale_cache_redis_pass redis;}
                {$1stale_cache_redis_pass slowredis; stale_cache_redis_read_timeout 30s;}s
        or die 'no /redis2';
    return $server;
}

# A response larger than postpone_output reaches the client before srcache's store of it has
# landed (the store's subrequest holds back only the last, empty, buffer). An unsafe request
# sent then has its DEL land first; the store then puts the old response back in Redis. This
# node must not serve it: the key stays passed while the fill that stored it was under way,
# until a later answer has been stored.
sub check_invalidation_late_store {
    my $delay = 2 * time_scale();
    my $proxy = Test::StaleCache::spawn_slow_proxy($SLOW_PORT, $ENV{TEST_NGINX_REDIS_PORT}, $delay);
    my $p = '/inv-late';
    my $key = key_of($p);
    backend_config($p, body_size => 8000, header => ['Cache-Control: max-age=60']);
    my $t0 = time;
    my $c = kept_connection();
    my ($head, $body) = get_on($c, $p);
    is(length($body // ''), 8000, 'the GET\'s whole answer, its connection kept');
    is(redis('EXISTS', $key), 0, 'its store not landed yet');
    is(http_request('POST', $p, {}, 'x')->{status}, 200, 'POST: 200');
    ok(time - $t0 < $delay, 'the POST ended before the store could land') or diag(time - $t0);
    is(redis('EXISTS', $key), 0, 'the DEL found nothing to delete');
    wait_until(sub { redis('EXISTS', $key) }, 3 * $delay, 'the late store landed (the old answer)');
    ($head) = get_on($c, $p);
    like($head, qr/^X-Backend-Hit: 3\r$/m, 'the next GET: from the origin, not the old answer');
    unlike($head, qr/^X-Stale-Cache: FRESH\r$/m, 'not FRESH');
    # Asked on the same connection, so after that GET (and its store) ended.
    ($head) = get_on($c, $p);
    like($head, qr/^X-Stale-Cache: FRESH\r$/m, 'then FRESH');
    like($head, qr/^X-Backend-Hit: 3\r$/m, 'from the cache: the new answer');
    close $c;
    kill 'TERM', $proxy;
}

run_tests();

__DATA__

=== TEST 1: max-age: stored for its freshness only, FRESH with Age, then a miss
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_max_age();
--- no_error_log
[alert]
[crit]



=== TEST 2: no-store, private, no-cache, max-age=0, Vary: *, no freshness, too old: not stored
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_not_stored();
--- no_error_log
[alert]
[crit]



=== TEST 3: s-maxage over max-age, Expires - Date, a 404 with max-age
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_stored();
--- no_error_log
[alert]
[crit]



=== TEST 4: the origin's stale-while-revalidate: STALE, refreshed
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_swr();
--- no_error_log
[alert]
[crit]
is already stale



=== TEST 5: POST/DELETE answered 2xx invalidate the URL, its Location and Content-Location
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_invalidation();
--- no_error_log
[alert]
[crit]



=== TEST 6: Surrogate-Control, must-understand, Content-Encoding, If-None-Match precedence
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_more();
--- no_error_log
[alert]
[crit]



=== TEST 7: revalidation: If-None-Match, a 304 updates the stored headers and life
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_revalidation();
--- no_error_log
[alert]
[crit]



=== TEST 8: a revalidation answered with no-store drops the entry
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_revalidation_no_store();
--- no_error_log
[alert]
[crit]



=== TEST 9: a 304 without freshness: the stored response is served and stays
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_revalidation_bare_304();
--- no_error_log
[alert]
[crit]

=== TEST 10: the request's Cache-Control: no-cache, no-store, max-age, min-fresh
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_request_directives();
--- no_error_log
[alert]
[crit]



=== TEST 11: add_header Age $stale_cache_http_age left in the config: one Age; the variable in logs
--- http_config eval: ::shipped_http() . "    log_format age '\$request_uri age=\$stale_cache_http_age';\n"
--- config eval: ::shipped_with_add_header_age()
--- check
check_add_header_age();
--- no_error_log
[alert]
[crit]



=== TEST 12: an invalidation while Redis is away drops the copy kept on this node
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_invalidation_away();
--- no_error_log
[alert]
[crit]



=== TEST 13: an invalidation whose DEL Redis refused: the origin until an answer is stored
--- http_config eval: ::shipped_http()
--- config eval: ::shipped()
--- check
check_invalidation_refused();
--- error_log
the invalidation of "http://localhost/inv-refused" failed
--- no_error_log
[alert]
[crit]



=== TEST 14: an invalidation while the URL's store is still on its way: the late store is not served
--- http_config eval: ::shipped_http() . "    upstream slowredis {\n        server 127.0.0.1:\$TEST_NGINX_SLOW_PORT;\n    }\n"
--- config eval: ::shipped_slow_store()
--- check
check_invalidation_late_store();
--- no_error_log
[alert]
[crit]
