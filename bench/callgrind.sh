#!/usr/bin/env bash
# `make bench-callgrind`: instructions per fresh hit, plain srcache vs the module, counted by
# valgrind's callgrind in one nginx worker (master_process off). Instruction counts do not
# depend on the machine's load, so two builds can be compared on a busy machine.
#
#   REDIS=native (default): the Redis locations of `make bench` (stale_cache_redis_pass).
#   REDIS=ref: redis2 + HttpRedis (built by t/lib/RefModules.pm), as lua-resty-cache's own
#              configuration and nginx-conf/drop-in-redis2.conf use them.
#   ROWS="a b": the rows measured, each in its own nginx (a: plain srcache, b: the module,
#              memo on, c: memo off, s: the module with $stale_cache_status/Cache-Status headers
#              and the drop-in's whole set of variables; d: lua-resty-cache's documented
#              location with its two lines changed, nothing added; p: plain srcache in an nginx
#              that does not load the module, the same location without it; q: d's location
#              with only `stale_cache on;` taken out, in an nginx without the module (its
#              `set $cache_*` lines stay, as in a configuration that had lua-resty-cache):
#              REDIS=ref only).
#              h: the module with `stale_cache_http on`, row HT of `make bench` (bench/run.sh's
#              /ht/ location: nginx-conf/http-cache.conf's lookup and store scripts, the
#              variant suffix in the keys, Age written by the module), a URL without Vary
#              stored fresh for an hour by its Cache-Control: REDIS=native only. Its hits
#              must be FRESH with one Age header and send no EVAL (freshness memo hits), or
#              the script fails. ha: h plus `add_header Age $stale_cache_http_age always;`,
#              as configurations wrote it before the module wrote Age (a build of that time
#              needs it to send Age; a newer one must still send one Age).
#              ac: a with h's origin response (Cache-Control: max-age=3600, stored with the
#              entry, so srcache parses it on every hit): plain srcache's fair baseline for h.
#              A row may name its own module build, ROWS="s:/tmp/old.so s": two builds
#              side by side.
#   N=2000 requests per row after WARM=50; the call graphs stay in build/callgrind/.
#   TOOL=cpu: no valgrind; every row's nginx runs natively at once, and ROUNDS=5 rounds of
#              wrk -c CONNECTIONS=4 for DURATION=5 s per row, alternating, measure the nginx
#              process's CPU time (utime + stime) per request; ratios to the first row are
#              the median of per-round ratios. Noisier than instructions (the kernel's share
#              is in it), but it is the cost a busy server pays.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/callgrind
module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}
redis_mode=${REDIS:-native}
rows=${ROWS:-a b}
n=${N:-2000}
warm=${WARM:-50}
tool=${TOOL:-callgrind}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port); backend_port=$(free_port)
rm -rf "$out" && mkdir -p "$out/redis"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$out/redis" --logfile "$out/redis.log" &
pids+=($!)
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$out/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

if [ "$redis_mode" = ref ]; then
    ref_dir=$root/build/reference-modules/$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    if [ ! -f "$ref_dir/ngx_http_redis2_module.so" ]; then
        script=${TEST_NGINX_REFERENCE_BUILD:-$root/../shared/third-party/build-reference-modules.sh}
        bash "$script" "$ref_dir" >/dev/null
    fi
    load_ref="load_module $ref_dir/ngx_http_redis2_module.so;
load_module $ref_dir/ngx_http_redis_module.so;"
    redis_locations='
        location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
            redis2_query ttl $key; redis2_pass redis; }
        location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
            redis2_query persist $key; redis2_pass redis; }
        location = /redis { internal; set_md5 $redis_key $args; redis_pass redis; }
        location = /redis2 { internal; set_unescape_uri $exptime $arg_exptime;
            set_unescape_uri $key $arg_key; set_md5 $key;
            redis2_query set $key $echo_request_body; redis2_query expire $key $exptime;
            redis2_pass redis; }'
else
    load_ref=
    redis_locations='
        location = /redisttl { internal; set_unescape_uri $key $arg_key; set_md5 $key;
            stale_cache_redis_pass redis; stale_cache_redis_command TTL $key; }
        location = /redispersist { internal; set_unescape_uri $key $arg_key; set_md5 $key;
            stale_cache_redis_pass redis; stale_cache_redis_command PERSIST $key; }
        location = /redis { internal; set_md5 $redis_key $args;
            stale_cache_redis_pass redis; stale_cache_redis_command GET $redis_key; }
        # SET then EXPIRE, as redis2 does: the same Redis work as the reference (nginx -t
        # warns of it; harmless here, Redis never refuses a SET during the run).
        location = /redis2 { internal; set_unescape_uri $exptime $arg_exptime;
            set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis;
            stale_cache_redis_command SET $key $request_body;
            stale_cache_redis_command EXPIRE $key $exptime; }'
fi

# The rows of `make bench` (a, b, c), and s: the drop-in's location (every $cache_* variable,
# the status headers).
common='set $cache_key $uri; set_escape_uri $escaped_key $cache_key;
        srcache_fetch_skip $stale_cache_skip_fetch;
        srcache_fetch GET /redis $cache_key;
        srcache_store PUT /redis2 key=$escaped_key&exptime=3600;
        add_header X-Stale-Cache $stale_cache_status;
        proxy_pass http://www;'
module_vars='set $cache_lock bench; set $cache_ttl /redisttl; set $cache_stale 100; stale_cache on;'
# d: lua-resty-cache's documented location with its two lines changed and nothing added (the
# seed configuration, compared with p: the same location without the module).
seed='set $cache_lock bench; set $cache_ttl /redisttl; set $cache_persist /redispersist;
      set $cache_key "$http_user_agent|$uri"; set $cache_stale 100;
      set $cache_lock_exptime 30; set $cache_backend_lock_timeout 0.01;
      set $cache_lock_timeout 3; set $cache_lock_timeout_wait 0.06;
      set $cache_skip_fetch "X-Skip-Fetch"; set_escape_uri $escaped_key $cache_key;
      stale_cache on;
      if ($http_x_skip_fetch != TRUE) { srcache_fetch GET /redis $cache_key; }
      srcache_store PUT /redis2 key=$escaped_key&exptime=3600;
      srcache_store_skip $upstream_http_set_cookie;
      add_header X-Cache $srcache_fetch_status; add_header X-Store $srcache_store_status;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://www;'

# h: row HT of bench/run.sh (keep the two alike), and its Redis locations.
http_mode='set $cache_lock bench; set $cache_ttl /redisttlh; set $cache_stale 100; stale_cache on;
      stale_cache_http on;
      set $cache_key $uri; set_escape_uri $escaped_key $cache_key;
      srcache_fetch_skip $stale_cache_skip_fetch; srcache_fetch GET /redish $cache_key;
      srcache_store PUT /redis2h key=$escaped_key&exptime=$stale_cache_http_exptime&w=$stale_cache_http_windows&v=$stale_cache_http_variant;
      srcache_response_cache_control off; srcache_store_hide_header Age;
      add_header X-Stale-Cache $stale_cache_status;
      proxy_set_header X-Backend-Header "Cache-Control: max-age=3600"; proxy_pass http://www;'
http_locations='
        location = /redisttlh { internal; set_unescape_uri $key $arg_key; set_md5 $key;
            stale_cache_redis_pass redis; stale_cache_redis_command EVAL $stale_cache_http_lookup_script
            4 $key$stale_cache_http_variant $key$stale_cache_http_variant:w $key $key:w; }
        location = /redish { internal; set_md5 $redis_key $args; stale_cache_redis_pass redis;
            stale_cache_redis_command GET $redis_key$stale_cache_http_variant; }
        location = /redis2h { internal; stale_cache_role store; set_unescape_uri $exptime $arg_exptime;
            set_unescape_uri $key $arg_key; set_md5 $key; stale_cache_redis_pass redis;
            stale_cache_redis_command EVAL $stale_cache_http_store_script 5 $key$arg_v $key$arg_v:w
            $key $key:w $key:vs $request_body $exptime $arg_w; }'

# s: d's location plus the module's status headers (the drop-in configs send both).
drop_in="$seed
         add_header X-Stale-Cache \$stale_cache_status;
         add_header Cache-Status \$stale_cache_rfc9211 always;"

pure='set $cache_key "$http_user_agent|$uri"; set_escape_uri $escaped_key $cache_key;
      if ($http_x_skip_fetch != TRUE) { srcache_fetch GET /redis $cache_key; }
      srcache_store PUT /redis2 key=$escaped_key&exptime=3600;
      srcache_store_skip $upstream_http_set_cookie;
      add_header X-Cache $srcache_fetch_status; add_header X-Store $srcache_store_status;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://www;'

# write_conf INDEX ROW[:MODULE] PORT: the configuration of one row's nginx in $out/INDEX.
write_conf() {
    local index=$1 row=${2%%:*} port=$3 prefix=$out/$1 load_module=$module module_locations
    [ "$2" = "$row" ] || load_module=${2#*:}
    mkdir -p "$prefix"/{logs,conf}
    module_locations="location /a/ { $common }
        location /b/ { $module_vars $common }
        location /c/ { $module_vars stale_cache_memo off; $common }
        location /s/ { $drop_in }
        location /d/ { $seed }"
    # ac: a's nginx and one more location (the others stay: the module's handlers then do
    # the same work as in a); h and ha: an nginx with that one location (ha serves /h/ too:
    # the same key and URL as h).
    if [ "$row" = ac ]; then
        module_locations="$module_locations
        location /ac/ { $common
            proxy_set_header X-Backend-Header \"Cache-Control: max-age=3600\"; }"
    fi
    if [ "$row" = h ] || [ "$row" = ha ]; then
        [ "$redis_mode" = native ] || { echo "row $row needs REDIS=native" >&2; return 1; }
        local age_line=
        [ "$row" = ha ] && age_line='add_header Age $stale_cache_http_age always;'
        module_locations="location /h/ { $http_mode $age_line } $http_locations"
    fi
    if [ "$row" = p ]; then
        [ "$redis_mode" = ref ] || { echo "row p needs REDIS=ref" >&2; return 1; }
        load_module=
        module_locations="location /p/ { $pure }"
    fi
    if [ "$row" = q ]; then
        [ "$redis_mode" = ref ] || { echo "row q needs REDIS=ref" >&2; return 1; }
        load_module=
        module_locations="location /q/ { ${seed/stale_cache on;/} }"
    fi
    cat >"$prefix/conf/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
load_module /usr/lib/nginx/modules/ngx_http_srcache_filter_module.so;
$load_ref
${load_module:+load_module $load_module;}
daemon off;
master_process off;
worker_processes 1;
error_log logs/error.log notice;
pid logs/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    upstream redis { server 127.0.0.1:$redis_port; keepalive 64; }
    upstream www { server 127.0.0.1:$backend_port; keepalive 16; }
    ${load_module:+stale_cache_zone bench 1m;}
    server {
        listen 127.0.0.1:$port;
        $module_locations
        $redis_locations
    }
}
CONF
}

# The URL a row's requests ask for.
row_path() { local row=${1%%:*}; [ "$row" = ha ] && row=h; echo "/$row/item"; }

# Waits for the row's nginx (pid $3) to answer on port $1 at path $2, fills the entry, and
# sends WARM fresh hits; with callgrind, then counts N more between a zero and a dump.
client() {
    python3 - "$1" "$2" "$warm" "$n" "$3" "$tool" "$redis_port" <<'PY'
import http.client, subprocess, sys, time
port, path, warm, n, pid, tool = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
redis_port = sys.argv[7]
def evals():
    out = subprocess.run(["redis-cli", "-p", redis_port, "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_eval:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", path)
        c.getresponse().read()
        break
    except OSError:
        if time.time() > deadline or subprocess.run(["kill", "-0", pid]).returncode != 0:
            sys.exit("nginx did not answer")
        time.sleep(0.5)
time.sleep(0.3)  # the fill's store ends
def get():
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: status {r.status}")
    return r
status = "-"
for _ in range(max(warm, 1)):
    status = get().getheader("X-Stale-Cache") or "-"
print(f"{path}: served as {status}", file=sys.stderr)
if path == "/h/item":
    # Fresh hits of the mode, with their Age, answered by the freshness memo (no EVAL).
    before = evals()
    for _ in range(20):
        r = get()
        status, age = r.getheader("X-Stale-Cache"), r.getheader("Age")
        if status != "FRESH" or age is None or len(r.headers.get_all("Age")) != 1:
            sys.exit(f"{path}: served as {status}, Age {age}: not a fresh hit of the mode")
    if evals() != before:
        sys.exit(f"{path}: fresh hits sent EVAL lookups: not answered by the freshness memo")
if tool == "callgrind":
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    for _ in range(n):
        get()
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
}

if [ "$tool" = callgrind ]; then
    i=0
    for spec in $rows; do
        i=$((i + 1)); port=$(free_port)
        write_conf "$i" "$spec" "$port"
        valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$i.out" --dump-instr=no \
            nginx -p "$out/$i" -c conf/nginx.conf >"$out/valgrind.$i.log" 2>&1 &
        pid=$!
        client "$port" "$(row_path "$spec")" "$pid"
        kill -QUIT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    echo "REDIS=$redis_mode, N=$n fresh hits per row; call graphs in $out"
    i=0
    for spec in $rows; do
        i=$((i + 1))
        f=$(ls "$out"/callgrind."$i".out.* 2>/dev/null | head -1 || true)
        [ -n "$f" ] || f=$out/callgrind.$i.out
        total=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
        echo "row $spec: $((total / n)) instructions per request ($f)"
    done
    exit 0
fi

# TOOL=cpu: every row's nginx at once, natively.
rounds=${ROUNDS:-5}; duration=${DURATION:-5}; connections=${CONNECTIONS:-4}
ports=(); npids=(); i=0
for spec in $rows; do
    i=$((i + 1)); port=$(free_port); ports+=("$port")
    write_conf "$i" "$spec" "$port"
    nginx -p "$out/$i" -c conf/nginx.conf >"$out/nginx.$i.log" 2>&1 &
    npids+=($!); pids+=($!)
    client "$port" "$(row_path "$spec")" "$!"
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
results=()
for round in $(seq "$rounds"); do
    i=0
    for spec in $rows; do
        t0=$(ticks "${npids[$i]}")
        reqs=$(wrk -t1 -c"$connections" -d"$duration"s "http://127.0.0.1:${ports[$i]}$(row_path "$spec")" \
            | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
        t1=$(ticks "${npids[$i]}")
        results+=("$round $i $reqs $((t1 - t0))")
        i=$((i + 1))
    done
done
printf '%s\n' "${results[@]}" >"$out/cpu-runs.txt"
python3 -c '
import os, statistics, sys
rows = sys.argv[1].split(); tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
runs = {}
for line in sys.stdin:
    rnd, i, reqs, ticks = map(int, line.split())
    runs.setdefault(i, []).append((rnd, reqs, ticks * tick_us / max(reqs, 1)))
mode = os.environ.get("REDIS", "native")
print(f"REDIS={mode}: CPU us per request of the nginx process (utime + stime), "
      f"median of {len(runs[0])} rounds; ratios: median of per-round ratios to row {rows[0]}")
for i, spec in enumerate(rows):
    cpu = [c for _, _, c in runs[i]]; rps = [r for _, r, _ in runs[i]]
    ratio = statistics.median(c / c0 for (_, _, c), (_, _, c0) in zip(runs[i], runs[0]))
    rratio = statistics.median(r / r0 for (_, r, _), (_, r0, _) in zip(runs[i], runs[0]))
    print(f"row {spec}: {statistics.median(cpu):.1f} us/request (x{ratio:.3f}), "
          f"requests per run {statistics.median(rps):.0f} (x{rratio:.3f}); runs: "
          + " ".join(f"{c:.1f}" for c in cpu))
' "$rows" <"$out/cpu-runs.txt"
