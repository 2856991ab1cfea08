# Clients cannot bypass or overwrite the cache with the skip header, cannot fake
# a refresh with X-Stale-Cache-Refresh, and the refresh secret never reaches the
# backend.
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

our $BASE_HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
_EOC_

# What the blocks add to base_config: the memo off, and $stale_cache_skip_fetch shown to the
# client and to the backend.
our $IN = ['stale_cache_memo off;',
           'add_header X-Skip-Var "[$stale_cache_skip_fetch]";',
           'proxy_set_header X-Skip-Seen "[$stale_cache_skip_fetch]";'];
# The srcache_fetch_skip form instead of the documented `if` line.
our $SKIP_FETCH = 'srcache_fetch GET /redis $cache_key; srcache_fetch_skip $stale_cache_skip_fetch;';

# The spoofing requests: the first fills the cache, the others carry spoofed headers.
our @SPOOF_REQS = ("GET /api/x") x 6;
our @SPOOF_HEADERS = (
    "",
    "X-Skip-Fetch: TRUE",
    "X-Skip-Fetch: yes",
    "x-skip-fetch: true",
    "X-Skip-Fetch: TRUE\nX-Stale-Cache-Refresh: anything",
    "X-Skip-Fetch: TRUE\nX-Stale-Cache-Refresh: " . ('0123456789abcdef' x 4),
);
our @SPOOF_EXPECT = (
    "X-Stale-Cache: MISS\nX-Cache: MISS\nX-Store: STORE\nX-Skip-Var: []",
    ("X-Stale-Cache: FRESH\nX-Cache: HIT\nX-Store: BYPASS\nX-Skip-Var: []") x 5,
);

# Checks shared by the blocks, run in --- check after the spoofing requests.
sub check_spoofing {
    my $k = redis_key('/api/x');
    is(backend_hits('/api/x'), 1, 'backend hit only by the first request');
    like(redis('GET', $k) // '', qr/\r\n\r\nbackend GET \/api\/x hit 1\n\z/,
         'Redis still holds the first copy');
    my @log = backend_log('/api/x');
    is($log[0]{headers}{'x-skip-seen'}, '[]', '$stale_cache_skip_fetch empty in the client\'s request');
    ok(!grep({ ($_->{headers}{'x-stale-cache-refresh'} // '') =~ /anything|0123456789abcdef/ } @log),
       'no spoofed refresh header value reached the backend');
}

# A genuine refresh: make the entry stale, request it, then look at what the
# backend saw. The secret must not reach it, and the refresh must store.
sub check_genuine_refresh {
    my $k = redis_key('/api/x');
    redis('EXPIRE', $k, 50);
    my $r = http_get('/api/x');
    is($r->{status}, 200, 'stale request 200');
    is($r->{headers}{'x-stale-cache'}, 'STALE', 'stale request: STALE');
    like($r->{body}, qr/hit 1\n\z/, 'stale copy served');
    # the refresh's line is logged when it has ended; then the new copy is in Redis
    wait_until(sub { error_log_text() =~ /stale_cache: refresh of "\/api\/x" via / && (redis('GET', $k) // '') =~ /hit 2\n\z/ },
               5, 'the refresh of /api/x to be stored');
    is(backend_hits('/api/x'), 2, 'one refresh reached the backend');
    my (undef, $refresh) = backend_log('/api/x');
    is($refresh->{headers}{'x-status-seen'}, 'REFRESH', 'the backend saw a REFRESH');
    is($refresh->{headers}{'x-skip-seen'}, '[1]', '$stale_cache_skip_fetch is 1 in the refresh');
    my $secret = $refresh->{headers}{'x-stale-cache-refresh'};
    ok(!defined $secret || length($secret) < 8,
       'the refresh secret did not reach the backend (' . ($secret // 'absent') . ')');
    for my $l (backend_log()) {
        for my $h (@{ $l->{header_list} }) {
            next unless lc $h->[0] eq 'x-stale-cache-refresh';
            ok(length($h->[1]) < 8, "backend hit $l->{seq}: no secret-looking X-Stale-Cache-Refresh ($h->[1])");
        }
    }
    like(redis('GET', $k) // '', qr/hit 2\n\z/, 'the refresh stored the new copy');
    my $ttl = redis('TTL', $k);
    ok($ttl >= 100, "refreshed entry has its full exptime again (TTL $ttl)");
}

run_tests();

__DATA__

=== TEST 1: if form: spoofed X-Skip-Fetch (TRUE, yes, true) is served from cache and stores nothing
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::IN)
--- request eval: [@::SPOOF_REQS[0 .. 3]]
--- more_headers eval: [@::SPOOF_HEADERS[0 .. 3]]
--- response_body
backend GET /api/x hit 1
--- response_headers eval: [@::SPOOF_EXPECT[0 .. 3]]
--- backend_hits: 1
--- check
check_spoofing();
--- no_error_log
[error]



=== TEST 2: if form: spoofed X-Stale-Cache-Refresh + X-Skip-Fetch is not a refresh; the real secret never reaches the backend
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::IN)
--- request eval: [@::SPOOF_REQS[0, 4, 5]]
--- more_headers eval: [@::SPOOF_HEADERS[0, 4, 5]]
--- response_body
backend GET /api/x hit 1
--- response_headers eval: [@::SPOOF_EXPECT[0, 4, 5]]
--- backend_hits: 1
--- check
check_spoofing();
check_genuine_refresh();
--- error_log eval
[qr/stale_cache: refresh of "\/api\/x" via 127\.0\.0\.1:\d+ 200 in \d+ ms/]
--- no_error_log
[error]



=== TEST 3: spoofed refresh header on a miss: not a refresh, the guess does not reach the backend
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::IN)
--- request
GET /api/x
--- more_headers
X-Stale-Cache-Refresh: 0123456789abcdef0123456789abcdef
X-Skip-Fetch: TRUE
--- response_body
backend GET /api/x hit 1
--- response_headers
X-Stale-Cache: MISS
X-Cache: MISS
X-Store: STORE
X-Skip-Var: []
--- backend_hits: 1
--- check
my ($l) = backend_log('/api/x');
is($l->{headers}{'x-status-seen'}, 'MISS', 'backend saw MISS, not REFRESH');
unlike($l->{headers}{'x-stale-cache-refresh'} // '', qr/0123456789abcdef/, 'the guessed value was not forwarded');



=== TEST 4: srcache_fetch_skip $stale_cache_skip_fetch form: same guarantees
--- log_level: info
--- http_config eval: $::BASE_HTTP
--- config eval: base_config(in => $::IN, fetch => $::SKIP_FETCH)
--- request eval: [@::SPOOF_REQS]
--- more_headers eval: [@::SPOOF_HEADERS]
--- response_body
backend GET /api/x hit 1
--- response_headers eval: [@::SPOOF_EXPECT]
--- backend_hits: 1
--- check
check_spoofing();
check_genuine_refresh();
--- error_log eval
[qr/stale_cache: refresh of "\/api\/x" via 127\.0\.0\.1:\d+ 200 in \d+ ms/]
--- no_error_log
[error]

=== TEST 5: a custom skip header is hidden once stale_cache_skip_header names it
--- http_config
    stale_cache_zone srcache_locks 1m;
    stale_cache_skip_header X-Refresh-Me;
--- config eval
<<'_EOC_' . redis_locations()
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        set $cache_skip_fetch X-Refresh-Me;
        set_escape_uri $escaped_key $cache_key;
        stale_cache on;
        if ($http_x_refresh_me != TRUE) { srcache_fetch GET /redis $cache_key; }
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Cache $srcache_fetch_status;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend;
    }
_EOC_
--- request eval
["GET /api/custom", "GET /api/custom"]
--- more_headers eval
["", "X-Refresh-Me: TRUE"]
--- response_body eval
["backend GET /api/custom hit 1\n", "backend GET /api/custom hit 1\n"]
--- response_headers eval
["X-Cache: MISS", "X-Cache: HIT"]
--- backend_hits: 1
--- no_error_log
$cache_skip_fetch is

=== TEST 6: a $cache_skip_fetch that stale_cache_skip_header does not name is reported
--- http_config
    stale_cache_zone srcache_locks 1m;
--- config
    location /api {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        set $cache_skip_fetch X-Refresh-Me;
        stale_cache on;
        echo ok;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
--- request
GET /api/w
--- response_body
ok
--- error_log
$cache_skip_fetch is "X-Refresh-Me" but clients' "X-Skip-Fetch" headers are the ones hidden
