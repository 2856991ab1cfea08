#!/usr/bin/env bash
# `make bench`, row K: fresh hits through a 3-primary Redis Cluster (nginx-conf/redis-cluster.conf)
# against one Redis (nginx-conf/stock-debian.conf), in the same run, alternating, on loopback.
# Both shipped files as they are but for ports, the module's path and entries stored fresh
# for an hour; 20 keys, so the cluster's requests spread over its primaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/build/bench-cluster
module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then duration=1; rounds=1; else
    duration=${BENCH_DURATION:-5}; rounds=${BENCH_ROUNDS:-5}; fi
connections=${BENCH_CONNECTIONS:-50}

# A free port whose cluster bus port (+10000) is free too.
free_port() { python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p + 10000 > 65535: continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass'; }
redis_port=$(free_port); backend_port=$(free_port)
one_port=$(free_port); one_admin=$(free_port); cl_port=$(free_port); cl_admin=$(free_port)
nodes=($(free_port) $(free_port) $(free_port))

rm -rf "$prefix" && mkdir -p "$prefix"/{logs,one/logs,one/conf,cl/logs,cl/conf}
cp "$module" "$prefix/ngx_http_stale_cache_module.so"
ulimit -n 16384 2>/dev/null || true
pids=()
cleanup() {
    local d
    for d in one cl; do [ -f "$prefix/$d/logs/nginx.pid" ] && kill -QUIT "$(cat "$prefix/$d/logs/nginx.pid")" 2>/dev/null || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --tcp-backlog 4096 \
    --dir "$prefix" --logfile "$prefix/logs/redis.log" &
pids+=($!)
for p in "${nodes[@]}"; do
    mkdir -p "$prefix/node$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --tcp-backlog 4096 \
        --cluster-enabled yes --cluster-config-file "$prefix/node$p/nodes.conf" \
        --cluster-node-timeout 1000 --dir "$prefix/node$p" --logfile "$prefix/logs/node$p.log" &
    pids+=($!)
done
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$prefix/logs/backend.log" 2>&1 &
pids+=($!)
for p in "$redis_port" "${nodes[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 0 \
    --cluster-yes >"$prefix/logs/cluster-create.log" 2>&1
for _ in $(seq 100); do
    redis-cli -p "${nodes[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done

# The shipped file adapted; each substitution must match, so an edit of the file that this no
# longer fits stops the bench instead of measuring something else.
adapt() {
    python3 - "$@" <<'PY'
import re, sys
src, out, module, port, admin, backend, redis = sys.argv[1:8]
nodes = sys.argv[8:]
text = open(src).read()
def sub(pattern, repl, count=1):
    global text
    text, n = re.subn(pattern, repl, text, flags=re.M)
    if n != count:
        sys.exit(f"bench/cluster.sh: {src}: {pattern!r} matched {n} times, expected {count}")
sub(r"/usr/lib/nginx/modules/ngx_http_stale_cache_module\.so", module)
sub(r"127\.0\.0\.1:8081;", f"127.0.0.1:{backend};")
sub(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};")
sub(r"listen 127\.0\.0\.1:8099;", f"listen 127.0.0.1:{admin};")
sub(r"^(\s+)8099(\s)", rf"\g<1>{admin}\g<2>")
sub(r"exptime=105;", "exptime=3700;")
if nodes:
    for i in range(6):
        sub(rf"127\.0\.0\.1:{7000 + i};", f"127.0.0.1:{nodes[i % len(nodes)]};")
else:
    sub(r"127\.0\.0\.1:6379;", f"127.0.0.1:{redis};")
open(out, "w").write(text)
PY
}
adapt "$root/nginx-conf/stock-debian.conf" "$prefix/one/conf/nginx.conf" \
    "$prefix/ngx_http_stale_cache_module.so" "$one_port" "$one_admin" "$backend_port" "$redis_port"
adapt "$root/nginx-conf/redis-cluster.conf" "$prefix/cl/conf/nginx.conf" \
    "$prefix/ngx_http_stale_cache_module.so" "$cl_port" "$cl_admin" "$backend_port" "$redis_port" \
    "${nodes[@]}"
nginx -p "$prefix/one" -c conf/nginx.conf
nginx -p "$prefix/cl" -c conf/nginx.conf
sleep 0.3

# Fill the 20 keys in each, then check they are fresh hits.
for port in "$one_port" "$cl_port"; do
    for i in $(seq 0 19); do curl -s -A '' -o /dev/null "http://127.0.0.1:$port/api/k$i"; done
    sleep 0.2
    for i in $(seq 0 19); do
        got=$(curl -s -A '' -D - -o /dev/null "http://127.0.0.1:$port/api/k$i" | tr -d '\r' | sed -n 's/^X-Stale-Cache: //p')
        [ "$got" = FRESH ] || { echo "bench/cluster.sh: /api/k$i on $port is '$got', not FRESH" >&2; exit 1; }
    done
done
used=0
for p in "${nodes[@]}"; do [ "$(redis-cli -p "$p" dbsize)" -gt 0 ] && used=$((used + 1)); done

cat >"$prefix/keys.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/api/k" .. (i % 20))
end
LUA
run_wrk() {
    wrk -t2 -c"$connections" -d"$duration"s --latency -s "$prefix/keys.lua" "$1" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s*50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", text, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, p50, p99, bad.group(1) if bad else 0)'
}
declare -A rps p50 p99
for _ in $(seq "$rounds"); do
    for row in one cl; do
        port=$one_port; [ "$row" = cl ] && port=$cl_port
        read -r r l50 l99 bad < <(run_wrk "http://127.0.0.1:$port/")
        [ "$bad" = 0 ] || echo "warning: row K $row had $bad non-2xx responses" >&2
        rps[$row]+="$r "; p50[$row]+="$l50 "; p99[$row]+="$l99 "
    done
done
hits=$(curl -s "http://127.0.0.1:$backend_port/__backend/log" | grep -c . || true)
python3 - "${rps[one]}" "${rps[cl]}" "${p50[one]}" "${p50[cl]}" "${p99[one]}" "${p99[cl]}" "$used" "$rounds" "$duration" "$hits" <<'PY'
import statistics, sys
a = sys.argv[1:]
med = lambda s: statistics.median(map(float, s.split()))
r1, rc, l1, lc, h1, hc = (med(x) for x in a[:6])
used, rounds, duration, hits = a[6:10]
print()
print(f"K: fresh hits over 20 keys, the shipped configurations as they are (hot tier off), wrk with a "
      f"key per request, median of {rounds} alternating {duration} s runs; the cluster's entries on {used} of 3 primaries; "
      f"backend requests during the whole run (the 40 fills): {hits}\n")
print("| row | what | req/s | p50 ms | p99 ms |")
print("|---|---|---:|---:|---:|")
print(f"| K1 | one Redis (`stock-debian.conf`) | {r1:.0f} | {l1:.2f} | {h1:.2f} |")
print(f"| K3 | Redis Cluster, 3 primaries (`redis-cluster.conf`) | {rc:.0f} | {lc:.2f} | {hc:.2f} |")
print(f"\nK3/K1: {rc / r1:.2f}")
PY
