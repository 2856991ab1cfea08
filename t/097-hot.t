# The hot tier (stale_cache_hot_zone, stale_cache_hot): fresh hits of hot keys answered from
# shared memory with the bytes srcache fetched from Redis, and its bounds.
use lib 't/lib';
use Test::StaleCache;
use Time::HiRes ();

# Headers of a response, without the ones that may differ between two hits (Date) or that
# say how it was served.
sub comparable {
    my $r = shift;
    return join "\n", map { "$_->[0]: $_->[1]" }
        grep { $_->[0] !~ /^(date|x-stale-cache)$/i } @{ $r->{header_list} };
}

# Makes $uri hot: the fill (MISS), a fresh hit (counted), a fresh hit whose fetch fills the
# zone, then a hit from the zone. Returns (the srcache hit, the hot hit).
sub make_hot {
    my ($uri, $headers) = @_;
    my $miss = http_get($uri, $headers);
    Test::More::is($miss->{headers}{'x-stale-cache'}, 'MISS', "$uri: filled");
    # The harness's client closes its connection after the answer, which can cut a large
    # store short (srcache logs a 499): fill until the entry is there.
    my $first = Test::StaleCache::wait_until(sub {
        my $r = http_get($uri, $headers);
        $r->{headers}{'x-stale-cache'} eq 'FRESH' && $r
    }, 5, "$uri stored");
    Test::More::is($first->{headers}{'x-stale-cache'}, 'FRESH', "$uri: first fresh hit");
    my $fresh = http_get($uri, $headers);
    Test::More::is($fresh->{headers}{'x-stale-cache'}, 'FRESH', "$uri: second fresh hit fills");
    my $hot = http_get($uri, $headers);
    Test::More::is($hot->{headers}{'x-stale-cache'}, 'HOT', "$uri: then served hot");
    return ($fresh, $hot);
}

sub same_response {
    my ($fresh, $hot, $what) = @_;
    Test::More::is($hot->{status}, $fresh->{status}, "$what: same status");
    Test::More::is(comparable($hot), comparable($fresh), "$what: same headers, same order");
    Test::More::ok($hot->{body} eq $fresh->{body}, "$what: byte-identical body")
        or Test::More::diag(length($hot->{body}) . ' vs ' . length($fresh->{body}) . ' bytes');
}


# A filter module to load after this one (Debian: libnginx-mod-http-brotli-filter), from
# where the harness takes the other modules.
our $BROTLI = ($ENV{TEST_NGINX_MODULES_DIR} || '/usr/lib/nginx/modules')
    . '/ngx_http_brotli_filter_module.so';

# The slow-client blocks' bodies, and their setup: $uri made hot with $size bytes of $byte,
# then asked by a slow client (see slow_client). Returns its reader.
our $SLOW_SIZE = 200_000;
our $SLOW_HEADERS = { 'X-Backend-Body-Size' => $SLOW_SIZE };
sub slow_hot {
    my ($uri, $byte) = @_;
    hot_with_body($uri, $byte, $SLOW_SIZE);
    return slow_client($uri, $SLOW_HEADERS);
}

# Retired entries of the hot zone, by /metrics.
sub retired { metric('stale_cache_hot_entries{zone="hot",state="retired"}') }

# Whether $body is $SLOW_SIZE bytes of $byte; says which other bytes it holds if not.
sub only_bytes {
    my ($body, $byte, $what) = @_;
    Test::More::ok($body eq $byte x $SLOW_SIZE, $what)
        or Test::More::diag('other bytes: ' . join '', sort keys %{{ map { $_ => 1 } split //, $body }});
}

# A TLS server (HTTP/1.1 and HTTP/2) on its own port with the given locations; a
# self-signed certificate made for the run.
our $TLS_PORT;
sub tls_server {
    my $locations = shift;
    require File::Temp;
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 "
           . "-keyout $dir/key.pem -out $dir/cert.pem >/dev/null 2>&1") == 0
        or die "openssl failed: $?";
    $TLS_PORT = Test::StaleCache::pick_port();
    return <<"_EOC_";
    server {
        listen 127.0.0.1:$TLS_PORT ssl http2;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
$locations
    }
_EOC_
}

# Stores $uri (a body of $size bytes from the backend), then replaces its body in Redis by
# $size bytes of $byte (same length, so the stored head still fits), and makes it hot.
sub hot_with_body {
    my ($uri, $byte, $size) = @_;
    my $h = { 'X-Backend-Body-Size' => $size };
    http_get($uri, $h);
    my $key = redis_key($uri);
    my $v = Test::StaleCache::wait_until(sub { redis('GET', $key) }, 5, "$uri stored");
    my $he = index($v, "\r\n\r\n");
    redis('SET', $key, substr($v, 0, $he + 4) . ($byte x $size), 'EX', 105);
    return heat($uri, $h);
}

# Fresh hits until $uri is answered from the hot zone; returns that answer.
sub heat {
    my ($uri, $h) = @_;
    return Test::StaleCache::wait_until(sub {
        my $r = http_get($uri, $h);
        ($r->{headers}{'x-stale-cache'} // '') eq 'HOT' && $r
    }, 5, "$uri hot");
}

# A client with a 4 KB receive buffer that reads the head and the first 4 KB of $uri's
# answer from the small-buffer server (slow_http), then waits: with both socket buffers
# full, nginx is left in the middle of sending the body until the client reads again.
# Returns a sub that reads the rest (returning the head and the whole body).
# $fast: the main server and the usual buffers instead: nginx sends the whole body into the
# socket buffers and is done before the client reads.
sub slow_client {
    my ($uri, $h, $fast) = @_;
    require Socket;
    socket(my $s, Socket::PF_INET(), Socket::SOCK_STREAM(), 0) or die "socket: $!";
    setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), pack('i', 4096)) or die
        unless $fast;
    my $port = $fast ? (node_ports())[0] : $main::SLOW_PORT;
    connect($s, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1')))
        or die "connect: $!";
    my $extra = join '', map { "$_: $h->{$_}\r\n" } sort keys %{ $h // {} };
    syswrite $s, "GET $uri HTTP/1.1\r\nHost: localhost\r\n${extra}Connection: close\r\n\r\n";
    my $buf = '';
    while (index($buf, "\r\n\r\n") < 0 || length($buf) < index($buf, "\r\n\r\n") + 4 + 4096) {
        sysread($s, $buf, 4096, length $buf) or die "closed early: $!";
    }
    return sub {
        while (sysread($s, $buf, 65536, length $buf)) { }
        close $s;
        my $he = index($buf, "\r\n\r\n");
        return (substr($buf, 0, $he), substr($buf, $he + 4));
    };
}

# sendfile on, as Debian's nginx.conf has it (nginx's default is off: TEST 10).
our $HTTP = <<'_EOC_';
    sendfile on;
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 4m;
_EOC_

# The /api location of the slow-client blocks: a copy made hot must still be young when the
# slow client asks for it right after (slower under valgrind).
sub hot_location {
    my $ms = 1000 * time_scale();
    drop_in_config("stale_cache_hot on; stale_cache_hot_max_age ${ms}ms;");
}

# A small zone, and a server whose socket send buffers are small (see slow_client).
our $SLOW_PORT;
sub slow_http {
    my $locations = shift;
    $SLOW_PORT = Test::StaleCache::pick_port();
    return <<"_EOC_";
    sendfile on;
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 1m;
    server {
        listen 127.0.0.1:$SLOW_PORT sndbuf=8k;
$locations
    }
_EOC_
}

our $METRICS = <<'_EOC_';
    location = /metrics { stale_cache_metrics; }
_EOC_

run_tests();

__DATA__

=== TEST 1: a hot hit is byte-identical to the srcache hit (binary body, headers), without a Redis GET
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on;')
--- pre
backend_config('/api/bin', body_binary => 1,
    header => ['X-One: 1', 'Set-Cookie: a=b', 'Cache-Control: max-age=60', 'X-Two: two']);
--- request
GET /api/warm
--- response_headers
X-Stale-Cache: MISS
--- check
my ($fresh, $hot) = make_hot('/api/bin');
is(length $fresh->{body}, 256, 'the binary body (bytes 0..255)');
same_response($fresh, $hot, 'binary');
redis('CONFIG', 'RESETSTAT');
for (1 .. 5) {
    my $r = http_get('/api/bin');
    is($r->{headers}{'x-stale-cache'}, 'HOT', "hot hit $_");
    ok($r->{body} eq $fresh->{body}, "hot hit $_: same body");
}
is(redis_calls('get'), 0, 'hot hits do not ask Redis');
is(redis_calls('set'), 0, 'and store nothing');
my ($bfresh, $bhot) = make_hot('/api/big2', { 'X-Backend-Body-Size' => 100_000 });
same_response($bfresh, $bhot, '100 KB');
is(backend_hits('/api/bin'), 1, 'one backend hit');
--- no_error_log eval
[qr/\[error\].*stale_cache/]

=== TEST 2: the same through redis2/HttpRedis locations
--- redis2
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on;', 'redis2')
--- pre
backend_config('/api/bin', body_binary => 1, header => ['X-One: 1', 'Set-Cookie: a=b']);
--- request
GET /api/warm
--- response_headers
X-Stale-Cache: MISS
--- check
my ($fresh, $hot) = make_hot('/api/bin');
same_response($fresh, $hot, 'binary, redis2');
redis('CONFIG', 'RESETSTAT');
is(http_get('/api/bin')->{headers}{'x-stale-cache'}, 'HOT', 'hot again');
is(redis_calls('get'), 0, 'without a Redis GET');
--- no_error_log
[error]

=== TEST 2b: the same through redis2/HttpRedis locations without stale_cache_role (legacy recognition of the fetch)
--- redis2
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on;', 'redis2-legacy')
--- pre
backend_config('/api/bin', body_binary => 1, header => ['X-One: 1', 'Set-Cookie: a=b']);
--- request
GET /api/warm
--- response_headers
X-Stale-Cache: MISS
--- check
my ($fresh, $hot) = make_hot('/api/bin');
same_response($fresh, $hot, 'binary, redis2 without roles');
redis('CONFIG', 'RESETSTAT');
is(http_get('/api/bin')->{headers}{'x-stale-cache'}, 'HOT', 'hot again');
is(redis_calls('get'), 0, 'without a Redis GET');
--- no_error_log
[error]

=== TEST 3: off by default: the drop-in location never answers HOT even with a hot zone
--- http_config eval: $main::HTTP
--- config eval
drop_in_config()
--- request
GET /api/warm
--- check
for (1 .. 5) {
    isnt(http_get('/api/off')->{headers}{'x-stale-cache'}, 'HOT', "request $_ not hot");
}

=== TEST 4: a key changed in Redis by another writer is served new within the max age (1 s)
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on;')
--- request
GET /api/warm
--- check
my ($fresh, $hot) = make_hot('/api/upd');
my $key = redis_key('/api/upd');
my $old = redis('GET', $key);
(my $new = $old) =~ s/hit 1/hit 9/ or die 'stored value has no body';
redis('SET', $key, $new, 'EX', 105);
my $t0 = Time::HiRes::time();
my $seen = wait_until(sub { http_get('/api/upd')->{body} =~ /hit 9/ }, 5, 'the new copy');
my $took = Time::HiRes::time() - $t0;
ok($seen, 'the new copy is served');
cmp_ok($took, '<=', 1.0 + 0.5 * time_scale(), "within the 1 s max age (+0.5 s margin): ${took}s");
is(http_get('/api/upd')->{body}, "backend GET /api/upd hit 9\n", 'and stays');

=== TEST 5: a purge drops the hot copy on this node at once
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on; stale_cache_hot_max_age 30s; set $cache_purge /redispurge;
        stale_cache_purge PURGE;') . <<'_EOC_'
    location = /redispurge { internal; set_unescape_uri $key $arg_key; set_md5 $key;
        stale_cache_redis_pass redis; stale_cache_redis_command DEL $key; }
_EOC_
--- request
GET /api/warm
--- check
my ($fresh, $hot) = make_hot('/api/p');
my $key = redis_key('/api/p');
my $value = redis('GET', $key);
my $r = http_request('PURGE', '/api/p');
is($r->{status}, 200, 'purged');
# Put the same entry back behind nginx's back: only a hot copy that survived the purge
# could answer HOT now (the max age is 30 s).
redis('SET', $key, $value, 'EX', 105);
$r = http_get('/api/p');
is($r->{headers}{'x-stale-cache'}, 'FRESH', 'no hot copy after the purge');
is($r->{body}, "backend GET /api/p hit 1\n", 'served by srcache');

=== TEST 6: a full zone evicts the least recently used responses, without errors
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 1m;
--- config eval
drop_in_config('stale_cache_hot on;')
--- request
GET /api/z0
--- more_headers
X-Backend-Body-Size: 100000
--- check
my $h = { 'X-Backend-Body-Size' => 100_000 };
# 1 MiB holds about nine 100 KB responses: making 16 keys hot evicts the first ones.
for my $i (0 .. 15) { make_hot("/api/k$i", $h) }
my $last = http_get('/api/k15', $h);
is($last->{headers}{'x-stale-cache'}, 'HOT', 'the last key is hot');
is($last->{body}, backend_pattern(100_000), 'with its body');
my $first = http_get('/api/k0', $h);
is($first->{headers}{'x-stale-cache'}, 'FRESH', 'the first key was evicted: srcache serves it');
is($first->{body}, backend_pattern(100_000), 'with its body');
# logged once for the worker's life (one worker)
is(error_log_count(qr/hot zone "hot" is full/), 1, 'the eviction is logged once');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 7: Redis down: hot copies are served within their fresh period, never after it
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on; stale_cache_hot_max_age 60s;')
--- request
GET /api/warm
--- check
is(http_get('/api/down')->{headers}{'x-stale-cache'}, 'MISS', 'filled');
my $key = redis_key('/api/down');
my $fresh_s = 3 * time_scale();          # (valgrind: the requests below take longer)
redis('EXPIRE', $key, 100 + $fresh_s);   # fresh for 3 more seconds (stale window 100 s)
my $t0 = Time::HiRes::time();
my $a = http_get('/api/down');
is($a->{headers}{'x-stale-cache'}, 'FRESH', 'fresh by the TTL lookup (memo for ~3 s)');
is(http_get('/api/down')->{headers}{'x-stale-cache'}, 'FRESH', 'second hit fills');
is(http_get('/api/down')->{headers}{'x-stale-cache'}, 'HOT', 'hot');
stop_redis();
my $r = http_get('/api/down');
is($r->{headers}{'x-stale-cache'}, 'HOT', 'Redis down, within the fresh period: hot');
is($r->{body}, "backend GET /api/down hit 1\n", 'the cached body');
# Redis rounds TTLs: the memo ends 2 to 3 s after the lookup; +1 s margin.
sleep_until($t0 + $fresh_s + 1);
$r = http_get('/api/down');
isnt($r->{headers}{'x-stale-cache'}, 'HOT', 'after the fresh period: not hot');
is($r->{body}, "backend GET /api/down hit 2\n", 'the backend answers (fail open)');
start_redis();

=== TEST 8: kill -9 of workers while they write the zone leaves it usable, also after a reload
--- workers: 2
--- log_level: notice
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 1m;
--- config eval
drop_in_config('stale_cache_hot on; stale_cache_hot_max_age 200ms;')
--- request
GET /api/warm
--- check
my $h = { 'X-Backend-Body-Size' => 60_000 };
for my $i (0 .. 19) { http_get("/api/w$i", $h) for 1 .. 2 }
my $out = "$ENV{TEST_NGINX_SERVROOT}/load.txt";
unlink $out;
my @kids;
for my $c (1 .. 4) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open my $fh, '>>', $out or die;
        my $end = Time::HiRes::time() + 2.5;
        my $i = $c;
        while (Time::HiRes::time() < $end) {
            my $r = http_get('/api/w' . ($i++ % 20), $h);
            # A connection of a killed worker ends early (an error or a short body): only a
            # whole 200 with other bytes would be wrong.
            my $whole = !$r->{error} && length($r->{body} // '') == 60_000;
            my $ok = ($r->{status} // 0) == 200 && $r->{body} eq backend_pattern(60_000) ? 1 : 0;
            my $st = ($r->{status} // 'none') . ($whole ? '' : '-cut');
            print $fh "$ok $st\n";
        }
        exit 0;
    }
    push @kids, $pid;
}
my $killed = 0;
for (1 .. 6) {
    sleep_ms(300);
    my (undef, @workers) = nginx_pids();
    if (@workers) { kill 'KILL', $workers[0]; $killed++ }
}
waitpid $_, 0 for @kids;
open my $fh, '<', $out or die;
my @lines = <$fh>;
my $good = grep { /^1 / } @lines;
my $bad = grep { /^0 200/ } @lines;
cmp_ok(scalar @lines, '>', 50, 'requests ran: ' . scalar @lines);
is($bad, 0, 'no 200 with a wrong body');
cmp_ok($good, '>=', scalar(@lines) * 0.8, "mostly answered ($good good; killed connections fail)");
ok($killed > 0, "killed $killed workers");
my $hot_after = 0;
for my $i (0 .. 19) {
    for (1 .. 3) {
        my $r = wait_until(sub { my $r = http_get("/api/w$i", $h); $r->{status} == 200 && $r }, 5, 'a response');
        is($r->{body}, backend_pattern(60_000), "w$i after the kills: right body") if $_ == 3;
        $hot_after++ if $r->{headers}{'x-stale-cache'} eq 'HOT';
    }
}
# The reload checks the zone the killed workers wrote.
my ($master) = nginx_pids();
kill 'HUP', $master;
wait_log(qr/reconfiguring|signal 1 \(SIGHUP\)/);
# (Two requests back to back: the second comes within the 200 ms max age of the first's fill.)
wait_until(sub { http_get('/api/w1', $h); http_get('/api/w1', $h)->{headers}{'x-stale-cache'} eq 'HOT' },
    10, 'a hot hit after the reload');
my $r = http_get('/api/w2', $h);
is($r->{body}, backend_pattern(60_000), 'right body after the reload');
is(error_log_count(qr/has another layout/), 0, 'the reload kept the zone');
is(error_log_count(qr/\[(emerg|crit)\]/), 0, 'no emerg or crit')
    or diag(join "\n", grep { /\[(emerg|crit)\]/ } split /\n/, error_log_text());
# (nginx says so when a killed worker held a zone's mutex: "was locked by".)
is(error_log_count(qr/\[alert\]/),
   error_log_count(qr/\[alert\].*(exited on signal 9|shared memory zone "[^"]+" was locked by)/),
   'no alert but the killed workers')
    or diag(join "\n", grep { /\[alert\]/ && !/signal 9/ } split /\n/, error_log_text());
diag('hot zone emptied after a kill: ' . error_log_count(qr/hot zone "hot" was/)
    . ', on reload: ' . error_log_count(qr/hot zone "hot" failed its check/));
--- error_log eval
[qr/\[alert\].*exited on signal 9/]


=== TEST 9: bodies of 8 KB and more go out from the zone in place: same bytes for GET, HEAD, ranges, gzip, keep-alive, 304
--- http_config eval: $main::HTTP
--- pre
backend_config('/api/etag', body_size => 50_000, header => ['ETag: "v1"']);
--- config eval
drop_in_config('stale_cache_hot on; set $cache_methods "GET HEAD";
        gzip on; gzip_types text/plain; gzip_min_length 1; error_page 412 /e412;')
    . $main::METRICS . "    location = /e412 { return 412 'precondition failed\\n'; }\n"
--- request
GET /api/warm
--- check
my $h = { 'X-Backend-Body-Size' => 100_000 };
my ($fresh, $hot) = make_hot('/api/big9', $h);
same_response($fresh, $hot, 'in place, 100 KB');
is($hot->{headers}{'content-length'}, 100_000, 'the whole length');
like(error_log_text(), qr/answered from the hot tier \(\d+ bytes, in place\)/, 'sent in place');
is(metric('stale_cache_hot_responses_total{zone="hot",how="in_place"}'), 1, 'counted in place');
my $head = http_request('HEAD', '/api/big9', $h);
is($head->{headers}{'x-stale-cache'}, 'HOT', 'HEAD: hot');
is(comparable($head), comparable($hot), 'HEAD: the same headers');
is($head->{body}, '', 'HEAD: no body');
my $range = http_get('/api/big9', { %$h, Range => 'bytes=0-9' });
is($range->{headers}{'x-stale-cache'}, 'HOT', 'Range: hot');
is($range->{status}, $fresh->{status}, 'Range: as srcache answers it');
ok($range->{body} eq $fresh->{body}, 'Range: same body as srcache sends');
my $gz = http_get('/api/big9', { %$h, 'Accept-Encoding' => 'gzip' });
is($gz->{headers}{'x-stale-cache'}, 'HOT', 'gzip: hot');
is($gz->{headers}{'content-encoding'}, 'gzip', 'gzip: compressed');
require IO::Uncompress::Gunzip;
my $plain;
IO::Uncompress::Gunzip::gunzip(\$gz->{body}, \$plain) or die 'gunzip failed';
ok($plain eq $fresh->{body}, 'gzip: the body compressed whole');
my $req = "GET /api/big9 HTTP/1.1\r\nHost: localhost\r\nX-Backend-Body-Size: 100000\r\n\r\n";
my @ka = Test::StaleCache::run_jobs([{ port => (node_ports())[0],
    reqs => [map { { raw => $req } } 1 .. 5] }], 10);
is(scalar(grep { ($_->{headers}{'x-stale-cache'} // '') eq 'HOT' && $_->{body} eq $fresh->{body} } @ka),
   5, 'keep-alive: 5 hot answers in a row on one connection, each whole');
my ($efresh, $ehot) = make_hot('/api/etag');
is($ehot->{headers}{etag}, '"v1"', 'the stored ETag');
my @cond = Test::StaleCache::run_jobs([{ port => (node_ports())[0], reqs => [
    { raw => "GET /api/etag HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"v1\"\r\n\r\n" },
    { raw => "GET /api/etag HTTP/1.1\r\nHost: localhost\r\n\r\n" }] }], 10);
is($cond[0]{status}, 304, 'If-None-Match: 304 from the hot copy');
is($cond[0]{headers}{'x-stale-cache'}, 'HOT', '304: hot');
ok($cond[1]{body} eq $efresh->{body}, 'the next request on the connection gets the whole body');
# A response finalized below this module's filter after it was armed (not_modified's 412,
# here turned into an error page): its own body and length, and the connection goes on.
my @pre = (http_get('/api/etag', { 'If-Match' => '"nope"' }));
is($pre[0]{status}, 412, 'If-Match mismatch: 412');
is($pre[0]{body}, "precondition failed\n", 'with the error page\'s body');
is($pre[0]{headers}{'content-length'}, length("precondition failed\n"), 'and its length');
# (srcache ends the request with an error after such a response, and nginx then resets the
# connection: the same happens without the hot tier.)
my $after = http_get('/api/etag');
is($after->{headers}{'x-stale-cache'}, 'HOT', 'the next request is hot');
ok($after->{body} eq $efresh->{body}, 'with the whole body');
is(retired(), 0, 'nothing left pinned');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 10: in place with sendfile off (written from the shared memory) and through redis2/HttpRedis
--- redis2
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on; sendfile off;', 'redis2')
--- request
GET /api/warm
--- check
my ($fresh, $hot) = make_hot('/api/nosf', { 'X-Backend-Body-Size' => 50_000 });
same_response($fresh, $hot, 'sendfile off');
like(error_log_text(), qr/answered from the hot tier \(\d+ bytes, in place\)/, 'sent in place');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 11: a slow client keeps its bytes while the zone is rewritten under it
--- http_config eval: slow_http(hot_location())
--- config eval: hot_location() . $main::METRICS
--- request
GET /api/warm
--- check
my ($size, $h) = ($main::SLOW_SIZE, $main::SLOW_HEADERS);
my $rest = slow_hot('/api/slow', 'S');
cmp_ok(metric('stale_cache_hot_responses_total{zone="hot",how="in_place"}'), '>=', 1, 'sent in place');
# The zone (about 245 blocks of 4 KB) holds four 200 KB responses: twelve others, each of its
# own letter, take every block many times over while the slow answer is half sent.
for my $i (0 .. 11) {
    my $r = hot_with_body("/api/churn$i", chr(ord('a') + $i), $size);
    ok($r->{body} eq chr(ord('a') + $i) x $size, "churn $i served whole");
}
is(retired(), 1,
   'its copy was evicted but is kept (retired) while it is sent');
my ($head, $body) = $rest->();
like($head, qr/X-Stale-Cache: HOT/, 'the slow answer was sent from the zone');
is(length $body, $size, 'the slow client got the whole body');
only_bytes($body, 'S', 'and only its own bytes');
# Its pin ended with the request: the retired copy was freed.
wait_until(sub { retired() == 0 }, 5,
    'no retired entry left');
cmp_ok(metric('stale_cache_hot_evictions_total{zone="hot"}'), '>=', 8, 'the zone was churned');
# The same with a client that does not read while nginx sends at full speed: the body sits in
# the socket buffers (sent with sendfile: pages of the zone's file) after the request ended.
hot_with_body('/api/unread', 'U', $size);
my $log = "$ENV{TEST_NGINX_SERVROOT}/logs/access.log";
my $logged = sub { scalar(() = (Test::StaleCache::slurp($log) // '') =~ m{GET /api/unread }g) };
my $before = $logged->();
$rest = slow_client('/api/unread', $h, 'fast');
# nginx logs a request when it is done with it: the whole body is in the socket buffers.
wait_until(sub { $logged->() > $before }, 5, 'nginx done with the unread answer');
for my $i (0 .. 5) { hot_with_body("/api/more$i", chr(ord('m') + $i), $size) }
($head, $body) = $rest->();
like($head, qr/X-Stale-Cache: HOT/, 'the unread answer was sent from the zone');
only_bytes($body, 'U', 'the unread answer kept its own bytes');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 12: kill -9 of the worker sending from the zone: its pins are dropped by the next one
--- log_level: notice
--- http_config eval: slow_http(hot_location())
--- config eval: hot_location() . $main::METRICS
--- request
GET /api/warm
--- check
my $size = $main::SLOW_SIZE;
my $rest = slow_hot('/api/pinned', 'P');
# Evicted while pinned: retired, kept for the slow answer.
hot_with_body("/api/evict$_", 'e', $size) for 0 .. 4;
is(retired(), 1, 'the pinned copy is retired');
my (undef, $worker) = nginx_pids();
kill 'KILL', $worker;
$rest->();
wait_until(sub { my (undef, $w) = nginx_pids(); $w && $w != $worker }, 10, 'a new worker');
# The new worker's first answer from the zone drops what the dead one held.
my $r = hot_with_body('/api/after', 'A', $size);
ok($r->{body} eq 'A' x $size, 'the new worker serves from the zone');
is(retired(), 0, 'the dead worker\'s pin is gone');
hot_with_body("/api/again$_", 'g', $size) for 0 .. 4;
is(retired(), 0, 'and the zone keeps turning over');
--- error_log eval
[qr/\[alert\].*exited on signal 9/]

=== TEST 13: a filter module loaded after this one (brotli) compresses the whole body sent in place
--- main_config eval: -f $main::BROTLI ? "load_module $main::BROTLI;" : ''
--- http_config eval: $main::HTTP
--- config eval
drop_in_config('stale_cache_hot on;' . (-f $main::BROTLI ? ' brotli on; brotli_types text/plain;' : ''))
    . $main::METRICS
--- request
GET /api/warm
--- check
my $h = { 'X-Backend-Body-Size' => 100_000 };
my ($fresh, $hot) = make_hot('/api/br', $h);
same_response($fresh, $hot, 'plain');
is(metric('stale_cache_hot_responses_total{zone="hot",how="in_place"}'), 1, 'sent in place');
if (-f $main::BROTLI) {
    my ($f2, $h2) = make_hot('/api/br2', { %$h, 'Accept-Encoding' => 'br' });
    is($h2->{headers}{'content-encoding'}, 'br', 'compressed by brotli');
    cmp_ok(length $h2->{body}, '>', 10, 'a real compressed body');
    ok($h2->{body} eq $f2->{body}, 'the same compressed bytes as the srcache hit');
} else {
    diag("no $main::BROTLI: the brotli half of this block did not run");
}
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 14: in place through TLS (HTTP/1.1 and HTTP/2): the body is written from the zone
--- http_config eval
$main::HTTP . tls_server(drop_in_config('stale_cache_hot on; stale_cache_hot_max_age 60s;'))
--- config eval
drop_in_config('stale_cache_hot on; stale_cache_hot_max_age 60s;') . $main::METRICS
--- request
GET /api/warm
--- check
my $h = { 'X-Backend-Body-Size' => 100_000 };
my ($fresh, $hot) = make_hot('/api/tls', $h);
for my $proto ('--http1.1', '--http2') {
    my $dir = File::Temp::tempdir(CLEANUP => 1);
    # No User-Agent, like the harness's client: the same cache key.
    system('curl', '-sk', $proto, '-A', '', '-H', 'X-Backend-Body-Size: 100000',
           '-D', "$dir/head", '-o', "$dir/body", "https://127.0.0.1:$main::TLS_PORT/api/tls") == 0
        or die "curl $proto failed: $?";
    my $head = Test::StaleCache::slurp("$dir/head");
    like($head, qr/^x-stale-cache: HOT\r?$/mi, "$proto: hot");
    ok(Test::StaleCache::slurp("$dir/body") eq $fresh->{body}, "$proto: the same body");
}
is(metric('stale_cache_hot_responses_total{zone="hot",how="in_place"}'), 3, 'all three in place');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 15: a reload while a worker sends from the zone: the new workers share it, the old one finishes its answer
--- log_level: notice
--- http_config eval: slow_http(hot_location())
--- config eval: hot_location() . $main::METRICS
--- request
GET /api/warm
--- check
my $size = $main::SLOW_SIZE;
my $rest = slow_hot('/api/reload', 'R');
my ($master, $old) = nginx_pids();
kill 'HUP', $master;
wait_until(sub { my (undef, @w) = nginx_pids(); grep { $_ != $old } @w }, 10 * time_scale(),
    'a new worker');
# The new worker evicts the copy the old one is still sending.
hot_with_body("/api/new$_", 'n', $size) for 0 .. 4;
is(retired(), 1,
   'the copy being sent by the old worker is retired, not freed');
my ($head, $body) = $rest->();
like($head, qr/X-Stale-Cache: HOT/, 'the old worker sent it from the zone');
ok($body eq 'R' x $size, 'whole and unchanged across the reload');
wait_until(sub { retired() == 0 },
    5 * time_scale(), 'freed when the old worker finished it');
is(error_log_count(qr/failed its check on reload/), 0, 'the reload found the zone consistent');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 16: a reload that resizes the zone while a worker sends from it: the old worker finishes from the old region, the new ones start a new one
--- log_level: notice
--- http_config eval: slow_http(hot_location())
--- config eval: hot_location() . $main::METRICS
--- request
GET /api/warm
--- check
my $size = $main::SLOW_SIZE;
my $rest = slow_hot('/api/resize', 'Z');
my $conf = "$ENV{TEST_NGINX_SERVROOT}/conf/nginx.conf";
my $text = Test::StaleCache::slurp($conf);
$text =~ s/stale_cache_hot_zone hot 1m;/stale_cache_hot_zone hot 3m;/ or die 'no hot zone line';
open my $fh, '>', $conf or die; print $fh $text; close $fh;
my ($master, $old) = nginx_pids();
kill 'HUP', $master;
wait_log(qr/hot zone "hot" resized to 3145728 bytes/);
wait_until(sub { my (undef, @w) = nginx_pids(); grep { $_ != $old } @w }, 10 * time_scale(),
    'a new worker');
my $r = hot_with_body('/api/after-resize', 'N', $size);
ok($r->{body} eq 'N' x $size, 'the new workers serve from the new region');
# (Until the old worker has closed its listening sockets it may still take a request.)
ok(wait_until(sub { metric('stale_cache_hot_bytes{zone="hot",state="free"}')
                    + metric('stale_cache_hot_bytes{zone="hot",state="used"}') > 2_000_000 },
              5 * time_scale(), 'the new region answering'), 'the new region is the 3 MB one');
my ($head, $body) = $rest->();
like($head, qr/X-Stale-Cache: HOT/, 'the old worker sent its answer from the old region');
ok($body eq 'Z' x $size, 'whole and unchanged');
is(error_log_count(qr/exited on signal/), 0, 'no worker crashed');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]

=== TEST 17: keys seen once fill the zone with candidates: no stored response is counted as evicted
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_hot_zone hot 1m;
--- config eval: drop_in_config('stale_cache_hot on;') . $main::METRICS
--- request
GET /api/warm
--- check
my $entries = metric('stale_cache_hot_bytes{zone="hot",state="free"}') / 4096;
cmp_ok($entries, '>=', 8, "a zone of $entries entries");
# Each key: its fill, then a fresh hit that counts it (a candidate: a hit count, no data).
my $seen_once = sub {
    my $uri = shift;
    http_get($uri);
    wait_until(sub { (http_get($uri)->{headers}{'x-stale-cache'} // '') eq 'FRESH' }, 5,
        "$uri counted");
};
$seen_once->("/api/c$_") for 1 .. 2 * $entries;
is(metric('stale_cache_hot_stored_total{zone="hot"}'), 0, 'nothing stored');
is(metric('stale_cache_hot_evictions_total{zone="hot"}'), 0,
   'candidates only: no stored response evicted');
cmp_ok(metric('stale_cache_hot_candidate_evictions_total{zone="hot"}'), '>=', $entries,
       'the candidates evicted are counted on their own');
# A stored response pushed out by candidates is an eviction.
make_hot('/api/h');
$seen_once->("/api/d$_") for 1 .. $entries + 1;
is(metric('stale_cache_hot_evictions_total{zone="hot"}'), 1, 'the hot response evicted');
isnt(http_get('/api/h')->{headers}{'x-stale-cache'}, 'HOT', 'and no longer served hot');
--- no_error_log eval
[qr/\[(crit|alert|emerg)\]/, qr/\[error\].*stale_cache/]
