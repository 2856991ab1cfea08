# stale_cache_redis_variable derives the Redis key without set-misc: byte for byte the key
# set-misc's set_escape_uri / set_unescape_uri / set_md5 derived, so switching an existing
# configuration to it keeps the cache.
use lib 't/lib';
use Test::StaleCache;
use Digest::MD5 qw(md5_hex);

our $HTTP = <<'_EOC_';
    stale_cache_zone srcache_locks 1m;
    stale_cache_redis_variable $escaped_key2    $cache_key escape;
    stale_cache_redis_variable $redis_key2      $arg_key unescape md5;
    stale_cache_redis_variable $redis_fetch_key2 $args md5;
    stale_cache_redis_variable $round_trip      $http_x_key escape unescape md5;
_EOC_

# The same cache in two styles: /old with set-misc (the documented configuration), /new with
# this module's variables (nginx-conf/stock-debian.conf). The cache key does not contain the
# location, so both see the same entries.
our $CONFIG = <<'_EOC_';
    location = /old {
        set $cache_lock srcache_locks;
        set $cache_ttl /redisttl;
        set $cache_persist /redispersist;
        set $cache_key "$http_user_agent|$arg_page";
        set_escape_uri $escaped_key $cache_key;
        stale_cache on;
        if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /redis $cache_key;}
        srcache_store PUT /redis2 key=$escaped_key&exptime=105;
        add_header X-Cache $srcache_fetch_status;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend/page;
    }
    location = /new {
        set $cache_lock srcache_locks;
        set $cache_ttl /nredisttl;
        set $cache_persist /nredispersist;
        set $cache_key "$http_user_agent|$arg_page";
        stale_cache on;
        srcache_fetch_skip $stale_cache_redis_down;
        srcache_store_skip $stale_cache_redis_down;
        if ($http_x_skip_fetch != TRUE){ srcache_fetch GET /nredis $cache_key;}
        srcache_store PUT /nredis2 key=$escaped_key2&exptime=105;
        add_header X-Cache $srcache_fetch_status;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://backend/page;
    }
    location = /nredisttl { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command TTL $redis_key2; }
    location = /nredispersist { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command PERSIST $redis_key2; }
    location = /nredis { internal; stale_cache_redis_pass redis;
        stale_cache_redis_command GET $redis_fetch_key2; }
    location = /nredis2 { internal; client_max_body_size 16m; stale_cache_redis_pass redis;
        stale_cache_redis_command SET $redis_key2 $request_body;
        stale_cache_redis_command EXPIRE $redis_key2 $arg_exptime; }
    location = /cmp {
        set_unescape_uri $old_key $arg_key;
        set_md5 $old_key;
        set_md5 $old_fetch $args;
        set $k $http_x_key;
        set_escape_uri $old_escaped $k;
        set_unescape_uri $old_round_trip $old_escaped;
        set_md5 $old_round_trip;
        echo "key $old_key $redis_key2";
        echo "fetch $old_fetch $redis_fetch_key2";
        echo "round-trip $old_round_trip $round_trip";
    }
_EOC_

# Keys with what escaping is about: separators, '+', '%', spaces, UTF-8, control bytes.
our @AGENTS = ('curl/8.0', 'Mozilla/5.0 (X11; Linux x86_64) a+b', '100% "q" &x=1#f',
               "caf\xc3\xa9 \x01\x7f|pipe", '%41%zz%4+~');

run_tests();

__DATA__

=== TEST 1: unescape + md5, md5 of the query, escape round trip: the same bytes as set-misc
--- http_config eval: $main::HTTP
--- config eval: $main::CONFIG . redis_locations()
--- request
GET /cmp?key=x
--- check
my @queries = ('key=a+b', 'key=%zz%4z.end%', 'key=%%41%+x', 'key=Mozilla%7C%2Fapi%2Fx',
               'key=%00%ff%C3%A9', 'a%20b|c&d=e', 'key=plain');
my $n = 0;
for my $q (@queries) {
    for my $agent (@main::AGENTS) {
        my $r = http_get("/cmp?$q", { 'X-Key' => $agent });
        is($r->{status}, 200, "cmp $q") or next;
        for my $line (split /\n/, $r->{body}) {
            my ($what, $old, $new) = split / /, $line;
            is($new, $old, "$what: ?$q / X-Key " . length($agent) . " bytes");
            $n++;
        }
    }
}
cmp_ok($n, '==', 3 * @queries * @main::AGENTS, 'every comparison ran');

=== TEST 2: switching configurations keeps the cache, both ways, for every key
--- http_config eval: $main::HTTP
--- config eval: $main::CONFIG . redis_locations()
--- request
GET /cmp?key=x
--- check
my $i = 0;
for my $agent (@main::AGENTS) {
    for my $dir (['old', 'new'], ['new', 'old']) {
        my ($first, $second) = @$dir;
        my $page = "p" . $i++;
        my $h = { 'User-Agent' => $agent };
        my $fill = http_get("/$first?page=$page", $h);
        is($fill->{headers}{"x-stale-cache"}, "MISS", "$first fills $page") or diag(explain($fill->{headers}), $fill->{body});
        my $key = md5_hex("$agent|$page");
        wait_until(sub { (redis('TTL', $key) // -2) > 100 }, 5, "$page stored as md5(\"UA|$page\")");
        my $hit = http_get("/$second?page=$page", $h);
        is($hit->{headers}{'x-stale-cache'}, 'FRESH', "$second finds $page fresh (TTL lookup)");
        is($hit->{headers}{'x-cache'}, 'HIT', "$second fetches $page from the cache");
        is($hit->{body}, $fill->{body}, "$second serves what $first stored");
    }
}
is(backend_hits(), 2 * @main::AGENTS, 'one backend hit per page');
