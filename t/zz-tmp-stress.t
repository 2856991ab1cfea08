use lib 't/lib';
use Test::StaleCache;
run_tests();
__DATA__

=== TEST 1: 1000 concurrent
--- log_level: warn
--- config
    location /slow {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://backend;
    }
--- request
GET /slow
--- more_headers
X-Backend-Delay: 0.5
--- concurrency: 1000
--- response_body_like: ^backend GET /slow hit \d+$
--- backend_hits: 1000
--- check
my ($max) = sort { $b <=> $a } map { $_->{end} } responses();
diag "slowest $max";
cmp_ok($max, '<', 3, "all finished");

=== TEST 2: 1000 concurrent debug log, echo
--- config
    location /t { echo_sleep 0.3; echo hi; }
--- request eval
["GET /t?a", "GET /t?b"]
--- concurrency: 1000
--- response_body
hi
--- check
my ($max) = sort { $b <=> $a } map { $_->{end} } responses();
diag "slowest $max";
