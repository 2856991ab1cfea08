# The `$cache_*` values a location sets as literals are parsed once, at configuration time;
# a request uses them only while its variables hold exactly those literals. Whatever else
# wrote a variable (an `if`, a nested location, a read before the `set`, an empty value) is
# read and parsed per request, as before.
use lib 't/lib';
use Test::StaleCache;
run_tests();

__DATA__

=== TEST 1: an `if` that changes a literal value is obeyed; the server's literals count in its locations
/redisttl answers the key's TTL (1000: fresh), /otherttl that of a key that does not exist
(MISS); no pass marks, so a MISS whose answer is not stored changes nothing for the next request.
--- http_config
    stale_cache_zone locks 1m;
--- config
    set $cache_lock locks;
    set $cache_pass_ttl 0;
    location /p {
        set $cache_ttl /redisttl;
        set $cache_key $uri;
        if ($arg_other) {
            set $cache_ttl /otherttl;
            echo ok;
        }
        stale_cache on;
        stale_cache_memo off;
        add_header X-Stale-Cache $stale_cache_status;
        echo ok;
        location /p/nested {
            set $cache_ttl /otherttl;
            set $cache_key $uri;
            stale_cache_memo off;
            add_header X-Stale-Cache $stale_cache_status;
            echo ok;
        }
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
    location = /otherttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL other:$key; }
--- pre
redis('SET', $_, 'x', 'EX', 1000) for '/p/a', '/p/nested/a';
--- request
GET /p/a
--- response_headers
X-Stale-Cache: FRESH
--- check
for (1 .. 3) {
    is(http_get('/p/a?other=1')->{headers}{'x-stale-cache'}, 'MISS', "request $_ through the if: its TTL location");
    is(http_get('/p/a')->{headers}{'x-stale-cache'}, 'FRESH', "request $_ past the if: the location's");
}
is(http_get('/p/nested/a')->{headers}{'x-stale-cache'}, 'MISS', 'a nested location: its own TTL location');
--- no_error_log
[warn]

=== TEST 2: values read before their `set`, or set empty, are parsed per request
`$cache_expire` read by another `set` first (nginx caches "not found"), `$cache_persist` set to
"" (unset, as in the Lua original): the settings are those of the literals either way.
--- http_config
    stale_cache_zone locks 1m;
--- config
    location /p {
        set $seen "[$cache_expire]";
        set $cache_lock locks;
        set $cache_ttl /redisttl;
        set $cache_persist "";
        set $cache_key $uri;
        stale_cache on;
        stale_cache_memo off;
        add_header X-Stale-Cache $stale_cache_status;
        add_header X-Seen $seen;
        echo ok;
    }
    location = /redisttl { internal; set_unescape_uri $key $arg_key;
        stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
--- pre
redis('SET', '/p/a', 'x', 'EX', 1000);
--- request
GET /p/a
--- response_headers
X-Stale-Cache: FRESH
X-Seen: []
--- check
is(http_get('/p/b')->{headers}{'x-stale-cache'}, 'MISS', 'a missing key is a MISS');
--- no_error_log
[warn]
