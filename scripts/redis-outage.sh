#!/usr/bin/env bash
# Measures what a Redis outage costs under load with a configuration from nginx-conf/
# (default stock-debian.conf): wrk -c32 for 20 s, Redis stopped from second 5 to second 10.
# Prints wrk's summary (non-2xx responses) and the error-log lines of the run, per second.
#   scripts/redis-outage.sh [CONFIG] [DOWN_SECONDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
config=${1:-$root/nginx-conf/stock-debian.conf}
down=${2:-5}
prefix=$root/build/outage
port=${NGINX_PORT:-18080} backend_port=${BACKEND_PORT:-18081} redis_port=${REDIS_PORT:-16390}
admin_port=${ADMIN_PORT:-18099}
rm -rf "$prefix" && mkdir -p "$prefix"/{logs,conf,redis}
pids=()
cleanup() {
    [ -f "$prefix/logs/nginx.pid" ] && kill -QUIT "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
start_redis() {
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$prefix/redis" --logfile "$prefix/logs/redis.log" --daemonize yes
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return; sleep 0.1; done
}
start_redis
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$prefix/logs/backend.log" 2>&1 &
pids+=($!)
sed -e "s#/usr/lib/nginx/modules/ngx_http_stale_cache_module.so#$root/build/ngx_http_stale_cache_module.so#" \
    -e "s#127.0.0.1:6379#127.0.0.1:$redis_port#" -e "s#127.0.0.1:8081#127.0.0.1:$backend_port#" \
    -e "s#127.0.0.1:8080#127.0.0.1:$port#" -e "s#127.0.0.1:8099#127.0.0.1:$admin_port#" \
    -e "s#^\( *\)8099\( \)#\1$admin_port\2#" "$config" >"$prefix/conf/nginx.conf"
nginx -p "$prefix" -c conf/nginx.conf
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$backend_port/__backend/hits" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/api/outage" >/dev/null
( sleep 5; redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  echo "redis stopped at $(date +%T)"; sleep "$down"; start_redis; echo "redis started at $(date +%T)" ) &
flip=$!
wrk -t2 -c32 -d20s "http://127.0.0.1:$port/api/outage"
wait "$flip"
echo "error-log lines at warn and above, per second (2 workers):"
grep -E '\[(warn|error|crit|alert|emerg)\]' "$prefix/logs/error.log" | cut -c1-19 | sort | uniq -c || true
echo "total: $(grep -cE '\[(warn|error|crit|alert|emerg)\]' "$prefix/logs/error.log" || true)"
echo "by message:"
grep -E '\[(warn|error|crit|alert|emerg)\]' "$prefix/logs/error.log" \
    | sed -E 's/^.*\] [0-9#]+: (\*[0-9]+ )?//; s/(, client|while).*//' | sort | uniq -c | sort -rn | head
