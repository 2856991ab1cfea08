#!/usr/bin/env bash
# `make bench`: plain srcache vs the module, side by side in one run, on loopback.
# BENCH_SMOKE=1 runs a seconds-long version (CI uses it to prove the bench still runs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/build/bench
module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then
    duration=1; rounds=1; cold_sizes="20"; stale_duration=1
else
    duration=${BENCH_DURATION:-5}; rounds=${BENCH_ROUNDS:-5}; cold_sizes="100 1000"; stale_duration=5
fi
connections=${BENCH_CONNECTIONS:-50}
export BENCH_CONNECTIONS=$connections

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nginx_port=$(free_port); redis_port=$(free_port); backend_port=$(free_port)

rm -rf "$prefix" && mkdir -p "$prefix"/{logs,conf,redis,modules}
cp "$module" "$prefix/modules/ngx_http_stale_cache_module.so"
ulimit -n 16384 2>/dev/null || true
pids=()
cleanup() {
    local pidfile
    for pidfile in "$prefix/logs/nginx.pid" "$prefix/stock/logs/nginx.pid" "$prefix/t/logs/nginx.pid" \
                   "$prefix/ts/logs/nginx.pid"; do
        [ -f "$pidfile" ] && kill -QUIT "$(cat "$pidfile")" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
# Stop everything on exit; a signal exits (and so runs the EXIT trap once).
trap cleanup EXIT
trap "exit 130" INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --tcp-backlog 4096 \
    --dir "$prefix/redis" --logfile "$prefix/logs/redis.log" &
pids+=($!)
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$prefix/logs/backend.log" 2>&1 &
pids+=($!)

# One server, one location per row, so every row runs against the same processes.
common='set $cache_key $uri; set_escape_uri $escaped_key $cache_key;
        srcache_fetch_skip $stale_cache_skip_fetch;
        srcache_fetch GET /redis $cache_key;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://www;'
module_vars='set $cache_lock bench; set $cache_ttl /redisttl; set $cache_stale 100; stale_cache on;'
store_fresh='srcache_store PUT /redis2 key=$escaped_key&exptime=3600;'
pcache='proxy_cache pc; proxy_cache_valid 200 1h; proxy_cache_lock on;
        proxy_cache_use_stale updating; proxy_cache_background_update on;
        add_header X-Cache-Status $upstream_cache_status;'
cat >"$prefix/conf/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
load_module /usr/lib/nginx/modules/ngx_http_srcache_filter_module.so;
load_module $prefix/modules/ngx_http_stale_cache_module.so;
worker_processes 2;
worker_rlimit_nofile 16384;
error_log logs/error.log ${BENCH_LOG_LEVEL:-notice};
pid logs/nginx.pid;
events { worker_connections 8192; }
http {
    access_log off;
    upstream redis { server 127.0.0.1:$redis_port; keepalive 1024; }
    upstream www { server 127.0.0.1:$backend_port; keepalive 64; }
    stale_cache_zone bench 1m;
    # H/P rows: the hot tier against nginx's own proxy_cache, sendfile on as Debian ships it.
    stale_cache_hot_zone hot 64m;
    sendfile on;
    proxy_cache_path $prefix/pcache levels=1:2 keys_zone=pc:10m max_size=1g inactive=10m
                     use_temp_path=off;
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location /a/ { $common $store_fresh }
        # AC: A with HT's origin response (Cache-Control: max-age=3600, stored with the
        # entry), so srcache parses that line on every hit as it does in HT: the fair baseline.
        location /ac/ { $common $store_fresh
                        proxy_set_header X-Backend-Header "Cache-Control: max-age=3600"; }
        location /b/ { $module_vars $common $store_fresh }
        location /c/ { $module_vars stale_cache_memo off; $common $store_fresh }
        # HT: the stale_cache_http mode as nginx-conf/http-cache.conf runs it (windows in
        # "<key>:w", the lookup and store scripts, the variant suffix in the keys), a URL
        # without Vary, fresh for an hour by its Cache-Control.
        location /ht/ { $module_vars set \$cache_ttl /redisttlh; stale_cache_http on;
            set \$cache_key \$uri; set_escape_uri \$escaped_key \$cache_key;
            srcache_fetch_skip \$stale_cache_skip_fetch; srcache_fetch GET /redish \$cache_key;
            srcache_store PUT /redis2h key=\$escaped_key&exptime=\$stale_cache_http_exptime&w=\$stale_cache_http_windows&v=\$stale_cache_http_variant;
            srcache_response_cache_control off; srcache_store_hide_header Age;
            add_header X-Stale-Cache \$stale_cache_status;
            proxy_set_header X-Backend-Header "Cache-Control: max-age=3600"; proxy_pass http://www; }
        location = /redisttlh { internal; set_unescape_uri \$key \$arg_key; set_md5 \$key;
            stale_cache_redis_pass redis; stale_cache_redis_command EVAL \$stale_cache_http_lookup_script
            4 \$key\$stale_cache_http_variant \$key\$stale_cache_http_variant:w \$key \$key:w; }
        location = /redish { internal; set_md5 \$redis_key \$args; stale_cache_redis_pass redis;
            stale_cache_redis_command GET \$redis_key\$stale_cache_http_variant; }
        location = /redis2h { internal; stale_cache_role store; set_unescape_uri \$exptime \$arg_exptime;
            set_unescape_uri \$key \$arg_key; set_md5 \$key; stale_cache_redis_pass redis;
            stale_cache_redis_command EVAL \$stale_cache_http_store_script 5 \$key\$arg_v \$key\$arg_v:w
            \$key \$key:w \$key:vs \$request_body \$exptime \$arg_w; }
        # Stored already stale (50 s < 100 s): every hit is stale and a refresh is running.
        location /d/ { $module_vars $common proxy_set_header X-Backend-Delay 1;
                       srcache_store PUT /redis2 key=\$escaped_key&exptime=50; }
        location /e/ { $module_vars $common proxy_set_header X-Backend-Delay 0.3; $store_fresh
                       add_header X-Wake-Delay \$stale_cache_wake_delay; }
        location /fon/ { $module_vars set \$cache_lease /redislease; $common
                         proxy_set_header X-Backend-Delay 0.3; $store_fresh }
        location /h1/ { $module_vars stale_cache_hot on; $common $store_fresh
                        proxy_set_header X-Backend-Body-Size 1024; }
        location /h100/ { $module_vars stale_cache_hot on; $common $store_fresh
                          proxy_set_header X-Backend-Body-Size 102400; }
        location /p1/ { $pcache proxy_set_header X-Backend-Body-Size 1024; proxy_pass http://www; }
        location /p100/ { $pcache proxy_set_header X-Backend-Body-Size 102400; proxy_pass http://www; }
        location /foff/ { $module_vars $common proxy_set_header X-Backend-Delay 0.3; $store_fresh }
        location = /redislease { internal; set_unescape_uri \$key \$arg_key; set_md5 \$key;
            stale_cache_redis_pass redis; stale_cache_redis_command EVAL \$stale_cache_lease_script
            2 \$key \$key:lease \$arg_op \$arg_token \$arg_ms; }
        location = /redisttl { internal; set_unescape_uri \$key \$arg_key; set_md5 \$key;
            stale_cache_redis_pass redis; stale_cache_redis_command TTL \$key; }
        location = /redis { internal; set_md5 \$redis_key \$args;
            stale_cache_redis_pass redis; stale_cache_redis_command GET \$redis_key; }
        # SET then EXPIRE, as redis2 does: the same Redis work as the reference (nginx -t
        # warns of it; harmless here, Redis never refuses a SET during the bench).
        location = /redis2 { internal; set_unescape_uri \$exptime \$arg_exptime;
            set_unescape_uri \$key \$arg_key; set_md5 \$key; stale_cache_redis_pass redis;
            stale_cache_redis_command SET \$key \$request_body;
            stale_cache_redis_command EXPIRE \$key \$exptime; }
    }
}
CONF
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
nginx -p "$prefix" -c conf/nginx.conf
sleep 0.5
url=http://127.0.0.1:$nginx_port

# Fill the fresh entries once (and the stale one, whose first fill takes 1 s).
for p in a ac b c ht; do curl -s -o /dev/null "$url/$p/item"; done
sleep 0.2
# The hot rows' key: the fill, a fresh hit (counted), a fresh hit that copies it into the zone.
for p in h1 h100 p1 p100; do for _ in 1 2 3; do curl -s -o /dev/null "$url/$p/item"; sleep 0.05; done; done

# BENCH_HOLD=1: keep everything up for profiling (perf, callgrind) until interrupted.
if [ "${BENCH_HOLD:-0}" = 1 ]; then
    echo "holding: $url/{a,b,c,d,e}/item, nginx logs in $prefix/logs; Ctrl-C stops"
    while :; do sleep 1; done
fi

# wrk: prints "rps p50_ms p99_ms".
run_wrk() {
    wrk -t2 -c"$connections" -d"$2"s --latency "$1" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit("cannot read wrk latency %r in:\n%s" % (v, text))
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s*50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, p50, p99, non2xx.group(1) if non2xx else 0)'
}

declare -A rps p50 p99
for round in $(seq "$rounds"); do
    for p in a ac b c ht; do
        read -r r l50 l99 bad < <(run_wrk "$url/$p/item" "$duration")
        [ "$bad" = 0 ] || echo "warning: row $p had $bad non-2xx responses" >&2
        rps[$p]+="$r "; p50[$p]+="$l50 "; p99[$p]+="$l99 "
    done
done
# H/P: the hot tier vs proxy_cache, 1 KB and 100 KB bodies, alternating, with the CPU time
# the nginx workers spent per request (utime + stime from /proc, in clock ticks).
worker_ticks() {
    local master total=0 pid
    master=$(cat "${1:-$prefix/logs/nginx.pid}")
    for pid in $(pgrep -P "$master"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
declare -A hp_rps hp_cpu
for round in $(seq "$rounds"); do
    for p in h1 p1 h100 p100; do
        t0=$(worker_ticks)
        read -r r l50 l99 bad < <(run_wrk "$url/$p/item" "$duration")
        t1=$(worker_ticks)
        [ "$bad" = 0 ] || echo "warning: row $p had $bad non-2xx responses" >&2
        hp_rps[$p]+="$r "
        hp_cpu[$p]+="$(python3 -c "print(($t1 - $t0) * $tick_us / max(1.0, $r * $duration))") "
    done
done
# The shipped config adapted to this run (ports, module, Redis and backend addresses, as
# nginx-conf/run.sh and t/056 do), every change checked so that an edit of the shipped file
# that this no longer matches stops the bench instead of measuring something else.
stock_prefix=$prefix/stock
stock_port=$(free_port); stock_admin_port=$(free_port); stock_pc_port=$(free_port)
declare -A stock_url=(
    [s1]=http://127.0.0.1:$stock_port/api/s1 [sp1]=http://127.0.0.1:$stock_pc_port/api/s1
    [s100]=http://127.0.0.1:$stock_port/api/s100 [sp100]=http://127.0.0.1:$stock_pc_port/api/s100)
stock_run() {
    mkdir -p "$stock_prefix"/{logs,conf,pcache}
    python3 - "$root/nginx-conf/stock-debian.conf" "$prefix/modules/ngx_http_stale_cache_module.so" \
        "$redis_port" "$backend_port" "$stock_port" "$stock_admin_port" "$stock_pc_port" \
        "$stock_prefix" "${BENCH_STOCK_SENDFILE:-0}" >"$stock_prefix/conf/nginx.conf" <<'PY'
import re, sys
src, module, redis, backend, port, admin, pc_port, prefix, sendfile = sys.argv[1:]
text = open(src).read()
def sub(pattern, repl, count=1, flags=re.M):
    global text
    text, n = re.subn(pattern, repl, text, flags=flags)
    if n != count:
        sys.exit(f"bench/run.sh: {src}: {pattern!r} matched {n} times, expected {count}")
sub(r"/usr/lib/nginx/modules/ngx_http_stale_cache_module\.so", module)
sub(r"127\.0\.0\.1:6379;", f"127.0.0.1:{redis};")
sub(r"127\.0\.0\.1:8081;", f"127.0.0.1:{backend};")
sub(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};")
sub(r"listen 127\.0\.0\.1:8099;", f"listen 127.0.0.1:{admin};")
sub(r"^(\s+)8099(\s)", rf"\g<1>{admin}\g<2>")
# The hot tier's two commented-out lines, as its comments say to turn it on.
sub(r"^(\s*)# (stale_cache_hot_zone hot \S+;)", r"\1\2")
sub(r"^(\s*)# (stale_cache_hot on;)", r"\1\2")
# Fresh for an hour (and the 100 s stale window) instead of 5 s: every request a fresh hit.
sub(r"exptime=105;", "exptime=3700;")
# BENCH_STOCK_SENDFILE=1: "sendfile on", as Debian's own nginx.conf has it around the conf.d
# files; the shipped file alone leaves nginx's default, off.
if sendfile == "1":
    sub(r"^(http \{\n)", r"\1    sendfile on;  # BENCH_STOCK_SENDFILE=1\n")
sub(r"^\}\s*\Z", f"""
    # Added by bench/run.sh: nginx's own cache in the same http block (same access log,
    # backend keepalive, status headers, key; entries valid for an hour).
    proxy_cache_path {prefix}/pcache levels=1:2 keys_zone=stockpc:10m max_size=1g
                     inactive=2h use_temp_path=off;
    server {{
        listen 127.0.0.1:{pc_port};
        location /api {{
            proxy_cache stockpc;
            proxy_cache_key "$http_user_agent|$uri";
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_cache_use_stale updating;
            proxy_cache_background_update on;
            add_header X-Cache-Status $upstream_cache_status;
            add_header Cache-Status "proxy_cache; $upstream_cache_status" always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://www;
        }}
    }}
}}
""")
print(text, end="")
PY
    curl -fs -o /dev/null "http://127.0.0.1:$backend_port/__backend/config?path=/api/s1&body_size=1024"
    curl -fs -o /dev/null "http://127.0.0.1:$backend_port/__backend/config?path=/api/s100&body_size=102400"
    nginx -p "$stock_prefix" -c conf/nginx.conf
    # Fill each key, then hit it until it is served from the hot zone (a key proves hot at its
    # second fresh hit; the next fetch copies it) or from proxy_cache.
    local p want got
    for p in s1 sp1 s100 sp100; do
        case $p in sp*) want=HIT ;; *) want=HOT ;; esac
        got=
        for _ in $(seq 100); do
            got=$(stock_served "$p")
            [ "$got" = "$want" ] && break
            sleep 0.05
        done
        [ "$got" = "$want" ] || { echo "bench/run.sh: stock row $p is served as '$got', not $want" >&2; exit 1; }
    done
}
# How a stock row's request is served: X-Stale-Cache of the module's server, X-Cache-Status
# of the proxy_cache server.
stock_served() {
    local h=X-Stale-Cache
    case $1 in sp*) h=X-Cache-Status ;; esac
    # No User-Agent, as wrk sends none: the shipped key is "$http_user_agent|$uri".
    curl -s -A '' -D - -o /dev/null "${stock_url[$1]}" | tr -d '\r' | sed -n "s/^$h: //p"
}
# After the rows: how each was served, and the backend's hits on the keys (1 per server and
# body: the fill; anything more means a row measured misses or refreshes, not fresh hits).
stock_check() {
    local p
    stock_served_as=
    for p in s1 sp1 s100 sp100; do
        stock_served "$p" >/dev/null
        stock_served_as+="$p $(stock_served "$p"); "
    done
    stock_hits=$(( $(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=/api/s1") +
                   $(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=/api/s100") ))
    if [ "$stock_hits" != 4 ] || [ "$stock_served_as" != "s1 HOT; sp1 HIT; s100 HOT; sp100 HIT; " ]; then
        echo "bench/run.sh: stock rows: backend hits $stock_hits (expected 4), served as: $stock_served_as" >&2
        stock_bad=1
    fi
}
stock_bad=0

# S/SP: the shipped nginx-conf/stock-debian.conf as an operator runs it (access log, status
# headers, its Redis locations and keepalive pools), its hot-tier lines uncommented and entries
# stored fresh for an hour, beside a proxy_cache server added to the same http block (same
# access log, status headers, backend keepalive, entries valid for an hour). A second nginx of
# its own, started after the rows above ran; its rows alternate like H/P.
stock_run
for round in $(seq "$rounds"); do
    for p in s1 sp1 s100 sp100; do
        t0=$(worker_ticks "$stock_prefix/logs/nginx.pid")
        read -r r l50 l99 bad < <(run_wrk "${stock_url[$p]}" "$duration")
        t1=$(worker_ticks "$stock_prefix/logs/nginx.pid")
        [ "$bad" = 0 ] || echo "warning: row $p had $bad non-2xx responses" >&2
        hp_rps[$p]+="$r "
        hp_cpu[$p]+="$(python3 -c "print(($t1 - $t0) * $tick_us / max(1.0, $r * $duration))") "
        # Its access log as shipped, emptied between runs (nginx appends, so it keeps writing).
        : >"$stock_prefix/logs/access.log"
    done
done
stock_check
kill -QUIT "$(cat "$stock_prefix/logs/nginx.pid")" 2>/dev/null || true

# T/TS: fresh hits through Redis (hot tier off) with the shipped stock-debian.conf and the
# shipped redis-sentinel.conf, two nginx side by side on the same Redis; for the Sentinel one,
# three Sentinels watch that Redis as "mymaster". Alternating rows, median of per-round ratios.
sentinel_ports=($(free_port) $(free_port) $(free_port))
for i in 0 1 2; do
    mkdir -p "$prefix/sentinel$i"
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %s 2\n' \
        "${sentinel_ports[$i]}" "$prefix/sentinel$i" "$redis_port" >"$prefix/sentinel$i/sentinel.conf"
    redis-server "$prefix/sentinel$i/sentinel.conf" --sentinel --logfile "$prefix/logs/sentinel$i.log" &
    pids+=($!)
done
declare -A t_url
t_start() {  # name source-file: adapted like the S rows, fresh for an hour, hot tier off
    local name=$1 file=$2 port
    port=$(free_port)
    mkdir -p "$prefix/$name"/{logs,conf}
    python3 - "$root/nginx-conf/$file" "$prefix/modules/ngx_http_stale_cache_module.so" \
        "$redis_port" "$backend_port" "$port" "$(free_port)" "${sentinel_ports[@]}" \
        >"$prefix/$name/conf/nginx.conf" <<'PY'
import re, sys
src, module, redis, backend, port, admin, s0, s1, s2 = sys.argv[1:]
text = open(src).read()
def sub(pattern, repl, count=1):
    global text
    text, n = re.subn(pattern, repl, text, flags=re.M)
    if n != count:
        sys.exit(f"bench/run.sh: {src}: {pattern!r} matched {n} times, expected {count}")
sub(r"/usr/lib/nginx/modules/ngx_http_stale_cache_module\.so", module)
if "stale_cache_redis_sentinel" in text:
    for shipped, mine in (("26379", s0), ("26380", s1), ("26381", s2)):
        sub(rf"127\.0\.0\.1:{shipped}([ ;])", rf"127.0.0.1:{mine}\g<1>")
else:
    sub(r"127\.0\.0\.1:6379;", f"127.0.0.1:{redis};")
sub(r"127\.0\.0\.1:8081;", f"127.0.0.1:{backend};")
sub(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};")
sub(r"listen 127\.0\.0\.1:8099;", f"listen 127.0.0.1:{admin};")
sub(r"^(\s+)8099(\s)", rf"\g<1>{admin}\g<2>")
sub(r"exptime=105;", "exptime=3700;")
print(text, end="")
PY
    nginx -p "$prefix/$name" -c conf/nginx.conf
    t_url[$name]=http://127.0.0.1:$port/api/t
    local got=
    for _ in $(seq 100); do
        got=$(curl -s -A '' -D - -o /dev/null "${t_url[$name]}" | tr -d '\r' | sed -n 's/^X-Cache: //p')
        [ "$got" = HIT ] && break
        sleep 0.05
    done
    [ "$got" = HIT ] || { echo "bench/run.sh: row $name is served as '$got', not HIT" >&2; exit 1; }
}
t_start t stock-debian.conf
t_start ts redis-sentinel.conf
declare -A t_rps
for round in $(seq "$rounds"); do
    for p in t ts; do
        read -r r l50 l99 bad < <(run_wrk "${t_url[$p]}" "$duration")
        [ "$bad" = 0 ] || echo "warning: row $p had $bad non-2xx responses" >&2
        t_rps[$p]+="$r "
        : >"$prefix/$p/logs/access.log"
    done
done
for p in t ts; do kill -QUIT "$(cat "$prefix/$p/logs/nginx.pid")" 2>/dev/null || true; done

# How the rows' last request was served (the second of two: the first may refill the copy).
curl -s -o /dev/null "$url/h100/item"
hot_served=$(curl -s -D - -o /dev/null "$url/h100/item" | tr -d '\r' | sed -n 's/^X-Stale-Cache: //p')
p_served=$(curl -s -D - -o /dev/null "$url/p100/item" | tr -d '\r' | sed -n 's/^X-Cache-Status: //p')

# Filled just before its row (a 1 s fill): stored for 50 s, below the 100 s stale window.
curl -s -o /dev/null "$url/d/item"
read -r d_rps d50 d99 d_bad < <(run_wrk "$url/d/item" "$stale_duration")

# HT must have been fresh hits of the mode (stored with its windows), not misses.
ht_head=$(curl -s -D - -o /dev/null "$url/ht/item" | tr -d '\r')
ht_served=$(sed -n 's/^X-Stale-Cache: //p' <<<"$ht_head")
[ "$ht_served" = FRESH ] || { echo "bench/run.sh: row ht is served as '$ht_served', not FRESH" >&2; exit 1; }
# With the Age the module writes, once.
[ "$(grep -c '^Age: [0-9]*$' <<<"$ht_head")" = 1 ] ||
    { echo "bench/run.sh: row ht: not one Age header in: $ht_head" >&2; exit 1; }
export BENCH_HT_RUNS="${rps[ht]}" BENCH_HT_P50="${p50[ht]}" BENCH_HT_P99="${p99[ht]}"
# AC must have been fresh hits of a stored copy that carries the origin's Cache-Control: one
# backend hit (the fill).
ac_hits=$(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=/ac/item")
ac_cc=$(curl -s -D - -o /dev/null "$url/ac/item" | tr -d '\r' | sed -n 's/^Cache-Control: //p')
[ "$ac_hits" = 1 ] && [ "$ac_cc" = max-age=3600 ] ||
    { echo "bench/run.sh: row ac: backend hits $ac_hits (expected 1), Cache-Control '$ac_cc'" >&2; exit 1; }
export BENCH_AC_RUNS="${rps[ac]}" BENCH_AC_P50="${p50[ac]}" BENCH_AC_P99="${p99[ac]}"
median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' $1; }
# The floor of the wake-up measurement: the same client, N answers that need no waiting
# (fresh hits). It also fills each worker's idle Redis pool, as a busy site's would be.
floor_n=${cold_sizes##* }
floor=$(python3 "$root/bench/coldmiss.py" 127.0.0.1 "$nginx_port" /b/item "$floor_n")
cold=()
for n in $cold_sizes; do
    key=/e/cold-$n-$RANDOM
    json=$(python3 "$root/bench/coldmiss.py" 127.0.0.1 "$nginx_port" "$key" "$n")
    hits=$(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=$key")
    cold+=("$n|$hits|$json")
done
cold+=("floor:$floor_n|0|$floor")
zone_line=$(grep -o 'zone "bench": [^(]*' "$prefix/logs/error.log" | head -1)

# G: a fleet of K more nginx (worker_processes 1 each, own prefix, port and zone) on the same
# Redis and backend: N cold misses round-robin, with and without the fleet lease.
fleet_k=${BENCH_FLEET_NODES:-5}; fleet_n=${BENCH_FLEET_N:-500}
[ "${BENCH_SMOKE:-0}" = 1 ] && fleet_k=2 && fleet_n=20
fleet_ports=()
for i in $(seq "$fleet_k"); do
    p=$(free_port); fleet_ports+=("$p"); d=$prefix/node$i
    mkdir -p "$d/logs" "$d/conf"
    sed -e "s/listen 127.0.0.1:$nginx_port /listen 127.0.0.1:$p /" -e 's/^worker_processes 2;/worker_processes 1;/' \
        "$prefix/conf/nginx.conf" >"$d/conf/nginx.conf"
    nginx -p "$d" -c conf/nginx.conf
done
sleep 0.5
fleet=()
for lease in on off; do
    key=/f$lease/cold-$RANDOM
    redis-cli -p "$redis_port" config resetstat >/dev/null
    json=$(python3 "$root/bench/fleet.py" 127.0.0.1 "$key" "$fleet_n" "${fleet_ports[@]}")
    sleep 0.2   # the lease's release (the keeper's next tick) is part of the cost
    hits=$(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=$key")
    calls=$(redis-cli -p "$redis_port" info commandstats | python3 -c '
import re, sys
t = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", sys.stdin.read())}
print(sum(v for k, v in t.items() if k not in ("config", "info")), t.get("eval", 0))')
    fleet+=("$lease|$hits|$calls|$json")
done
for i in $(seq "$fleet_k"); do kill -QUIT "$(cat "$prefix/node$i/logs/nginx.pid")" 2>/dev/null || true; done

python3 - "$(median "${rps[a]}")" "$(median "${rps[b]}")" "$(median "${rps[c]}")" \
    "$(median "${p50[a]}")" "$(median "${p50[b]}")" "$(median "${p50[c]}")" \
    "$(median "${p99[a]}")" "$(median "${p99[b]}")" "$(median "${p99[c]}")" \
    "$d_rps" "$d50" "$d99" "$zone_line" "$rounds" "$duration" "${rps[a]}" "${rps[b]}" "${rps[c]}" \
    "${cold[@]}" "--fleet" "$fleet_k" "$fleet_n" "${fleet[@]}" <<'PY'
import json, os, re, subprocess, sys
a = sys.argv[1:]
ra, rb, rc = map(float, a[0:3]); pa50, pb50, pc50 = map(float, a[3:6]); pa99, pb99, pc99 = map(float, a[6:9])
drps, d50, d99 = map(float, a[9:12]); zone = a[12]; rounds, duration = a[13], a[14]
runs = {"A": a[15], "B": a[16], "C": a[17]}; rest = a[18:]
split = rest.index("--fleet"); cold = rest[:split]; fleet_k, fleet_n = rest[split + 1:split + 3]; fleet = rest[split + 3:]
def ver(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stderr.strip() or subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {cores} cores; {ver(['nginx', '-v'])}; {ver(['redis-server', '--version']).split(' sha')[0]}; "
      f"wrk -t2 -c{os.environ.get('BENCH_CONNECTIONS', '50')}; throughput = median of {rounds} alternating {duration} s runs\n")
print("| row | what | req/s | p50 ms | p99 ms |")
print("|---|---|---:|---:|---:|")
print(f"| A | plain srcache, fresh hits (ceiling) | {ra:.0f} | {pa50:.2f} | {pa99:.2f} |")
print(f"| B | module, fresh hits, memo on | {rb:.0f} | {pb50:.2f} | {pb99:.2f} |")
print(f"| C | module, fresh hits, memo off | {rc:.0f} | {pc50:.2f} | {pc99:.2f} |")
import statistics
ht_runs = [float(x) for x in os.environ["BENCH_HT_RUNS"].split()]
ht50, ht99 = (statistics.median(float(x) for x in os.environ[k].split()) for k in ("BENCH_HT_P50", "BENCH_HT_P99"))
ac_runs = [float(x) for x in os.environ["BENCH_AC_RUNS"].split()]
ac50, ac99 = (statistics.median(float(x) for x in os.environ[k].split()) for k in ("BENCH_AC_P50", "BENCH_AC_P99"))
print(f"| AC | plain srcache, fresh hits, the origin's Cache-Control: max-age=3600 stored (HT's response) | {statistics.median(ac_runs):.0f} | {ac50:.2f} | {ac99:.2f} |")
print(f"| HT | module, stale_cache_http on (http-cache.conf's scripts), fresh hits, no Vary, memo on | {statistics.median(ht_runs):.0f} | {ht50:.2f} | {ht99:.2f} |")
print(f"| D | module, stale hits, refresh running (backend 1 s) | {drps:.0f} | {d50:.2f} | {d99:.2f} |")
print()
print("| E: cold misses | backend hits | 200s | client p50 ms | client p99 ms | wake-up in nginx p50 / p99 / max ms | answer after the fill's, p50 / p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
f = lambda v: "-" if v is None else f"{v:.1f}"
for row in cold:
    n, hits, js = row.split("|", 2)
    r = json.loads(js)
    if n.startswith("floor:"):
        n = n[6:]
        print(f"| floor: N = {n} fresh hits (answer after the first answer) | - | {r['ok']}/{n} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | - | {f(r['after_first_p50_ms'])} / {f(r['after_first_p99_ms'])} |")
        continue
    print(f"| N = {n} (backend 300 ms) | {hits} | {r['ok']}/{n} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | {f(r['nginx_wake_p50_ms'])} / {f(r['nginx_wake_p99_ms'])} / {f(r['nginx_wake_max_ms'])} | {f(r['wake_p50_ms'])} / {f(r['wake_p99_ms'])} |")
print()
print(f"| G: fleet, {fleet_k} nginx x 1 worker, N = {fleet_n} cold misses round-robin (backend 300 ms) | backend hits | 200s | Redis commands (lease EVALs) per cold key | other nodes answered after the fill's answer, p50 / p99 ms |")
print("|---|---:|---:|---:|---:|")
for row in fleet:
    lease, hits, calls, js = row.split("|", 3)
    r = json.loads(js)
    total, evals = calls.split()
    what = "with $cache_lease" if lease == "on" else "without (each node fills)"
    print(f"| {what} | {hits} | {r['ok']}/{fleet_n} | {total} ({evals}) | {f(r['after_p50_ms'])} / {f(r['after_p99_ms'])} |")
print()
m = re.search(r"(\d+) slots of (\d+) bytes, room for (\d+) entries", zone)
if m:
    slots, size, cap = map(int, m.groups())
    print(f"F: zone: {size} bytes per lock and per memo entry (one slot each); a 1 MiB zone holds {cap} entries "
          f"({slots} slots at most 85 % full), locks and memos together.\n")
# Ratios per round (A, B and C run back to back), then the median: robust to the machine
# speeding up or slowing down during the run.
import statistics
ra_runs, rb_runs, rc_runs = ([float(x) for x in runs[k].split()] for k in "ABC")
ba = statistics.median(b / a for a, b in zip(ra_runs, rb_runs))
ca = statistics.median(c / a for a, c in zip(ra_runs, rc_runs))
hta = statistics.median(h / a for a, h in zip(ra_runs, ht_runs))
# HT/AC: against plain srcache serving the same stored response (its Cache-Control line
# parsed on every hit, which A's response lacks); HT/A is the issue's figure.
htac = statistics.median(h / c for c, h in zip(ac_runs, ht_runs))
print(f"Ratios (median of per-round ratios): B/A = {ba:.2f}, C/A = {ca:.2f}, HT/A = {hta:.2f}, HT/AC = {htac:.2f}; D-p99 / B-p99 = {d99/pb99:.2f}")
runs["AC"] = os.environ["BENCH_AC_RUNS"]
runs["HT"] = os.environ["BENCH_HT_RUNS"]
print("Runs (req/s, in order): " + "; ".join(f"{k}: {' '.join(f'{float(x):.0f}' for x in v.split())}" for k, v in runs.items()))
PY
python3 - "${hp_rps[h1]}" "${hp_rps[p1]}" "${hp_rps[h100]}" "${hp_rps[p100]}" \
    "${hp_cpu[h1]}" "${hp_cpu[p1]}" "${hp_cpu[h100]}" "${hp_cpu[p100]}" "$hot_served" "$p_served" <<'PY'
import statistics, sys
rps = {k: [float(x) for x in v.split()] for k, v in zip(("h1", "p1", "h100", "p100"), sys.argv[1:5])}
cpu = {k: [float(x) for x in v.split()] for k, v in zip(("h1", "p1", "h100", "p100"), sys.argv[5:9])}
med = statistics.median
print()
print("| H/P: hot tier vs proxy_cache | req/s | CPU us/request (nginx workers) |")
print("|---|---:|---:|")
names = {"h1": "H1: hot tier, 1 KB body", "p1": "P1: proxy_cache, 1 KB body",
         "h100": "H100: hot tier, 100 KB body", "p100": "P100: proxy_cache, 100 KB body"}
for k in ("h1", "p1", "h100", "p100"):
    print(f"| {names[k]} | {med(rps[k]):.0f} | {med(cpu[k]):.1f} |")
h1p1 = med(h / p for h, p in zip(rps["h1"], rps["p1"]))
h100p100 = med(h / p for h, p in zip(rps["h100"], rps["p100"]))
c1 = med(h / p for h, p in zip(cpu["h1"], cpu["p1"]))
c100 = med(h / p for h, p in zip(cpu["h100"], cpu["p100"]))
print(f"\nH1/P1 = {h1p1:.2f} (CPU {c1:.2f}x), H100/P100 = {h100p100:.2f} (CPU {c100:.2f}x) "
      f"(median of per-round ratios; served as: hot rows {sys.argv[9] or '?'}, proxy_cache rows {sys.argv[10] or '?'})")
print("H/P runs (req/s, in order): " + "; ".join(f"{k}: {' '.join(f'{x:.0f}' for x in v)}" for k, v in rps.items()))
PY
python3 - "${hp_rps[s1]}" "${hp_rps[sp1]}" "${hp_rps[s100]}" "${hp_rps[sp100]}" \
    "${hp_cpu[s1]}" "${hp_cpu[sp1]}" "${hp_cpu[s100]}" "${hp_cpu[sp100]}" "$stock_served_as" "$stock_hits" "${BENCH_STOCK_SENDFILE:-0}" <<'PY'
import statistics, sys
keys = ("s1", "sp1", "s100", "sp100")
rps = {k: [float(x) for x in v.split()] for k, v in zip(keys, sys.argv[1:5])}
cpu = {k: [float(x) for x in v.split()] for k, v in zip(keys, sys.argv[5:9])}
med = statistics.median
print()
sendfile = "sendfile on (BENCH_STOCK_SENDFILE=1)" if sys.argv[11] == "1" else "sendfile off as shipped"
print(f"| S/SP: shipped stock-debian.conf, hot tier on, vs proxy_cache in the same nginx, {sendfile} | req/s | CPU us/request (nginx workers) |")
print("|---|---:|---:|")
names = {"s1": "S1: stock-debian.conf, hot tier, 1 KB body", "sp1": "SP1: proxy_cache server beside it, 1 KB body",
         "s100": "S100: stock-debian.conf, hot tier, 100 KB body", "sp100": "SP100: proxy_cache server beside it, 100 KB body"}
for k in keys:
    print(f"| {names[k]} | {med(rps[k]):.0f} | {med(cpu[k]):.1f} |")
r1 = med(s / p for s, p in zip(rps["s1"], rps["sp1"]))
r100 = med(s / p for s, p in zip(rps["s100"], rps["sp100"]))
c1 = med(s / p for s, p in zip(cpu["s1"], cpu["sp1"]))
c100 = med(s / p for s, p in zip(cpu["s100"], cpu["sp100"]))
print(f"\nS1/SP1 = {r1:.2f} (CPU {c1:.2f}x), S100/SP100 = {r100:.2f} (CPU {c100:.2f}x) "
      f"(median of per-round ratios; served as: {sys.argv[9].strip().rstrip(';')}; backend hits on these keys: {sys.argv[10]})")
print("S/SP runs (req/s, in order): " + "; ".join(f"{k}: {' '.join(f'{x:.0f}' for x in v)}" for k, v in rps.items()))
PY
python3 - "${t_rps[t]}" "${t_rps[ts]}" <<'PY'
import statistics, sys
t, ts = ([float(x) for x in v.split()] for v in sys.argv[1:3])
med = statistics.median
print()
print("| T/TS: fresh hits through Redis, shipped configs, hot tier off | req/s |")
print("|---|---:|")
print(f"| T: stock-debian.conf (upstream redis: one server) | {med(t):.0f} |")
print(f"| TS: redis-sentinel.conf (the same Redis found through 3 Sentinels) | {med(ts):.0f} |")
print(f"\nTS/T = {med(b / a for a, b in zip(t, ts)):.2f} (median of per-round ratios)")
print("T/TS runs (req/s, in order): " + "; ".join(f"{k}: {' '.join(f'{x:.0f}' for x in v)}" for k, v in (("t", t), ("ts", ts))))
PY
# The stock rows measured something other than fresh hits: fail (CI's smoke run catches it).
[ "$stock_bad" = 0 ]
