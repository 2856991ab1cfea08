#!/usr/bin/env bash
# `make run`: the stock-Debian config with a private redis-server and a small demo backend,
# all on loopback, under build/run/. Ctrl-C stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/build/run
nginx_port=${NGINX_PORT:-8080}
backend_port=${BACKEND_PORT:-8081}
redis_port=${REDIS_PORT:-6390}
config=${STALE_CACHE_CONF:-$root/nginx-conf/stock-debian.conf}

rm -rf "$prefix" && mkdir -p "$prefix"/{logs,conf,redis}
pids=()
cleanup() {
    trap - EXIT
    [ -f "$prefix/logs/nginx.pid" ] && kill -QUIT "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped."
}
trap cleanup EXIT
trap "exit 130" INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$prefix/redis" --logfile "$prefix/logs/redis.log" &
pids+=($!)
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$prefix/logs/backend.log" 2>&1 &
pids+=($!)

sed -e "s#/usr/lib/nginx/modules/ngx_http_stale_cache_module.so#$root/build/ngx_http_stale_cache_module.so#" \
    -e "s#127.0.0.1:6379#127.0.0.1:$redis_port#" \
    -e "s#127.0.0.1:8081#127.0.0.1:$backend_port#" \
    -e "s#127.0.0.1:8080#127.0.0.1:$nginx_port#" \
    "$config" >"$prefix/conf/nginx.conf"

for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
nginx -p "$prefix" -c conf/nginx.conf

cat <<MSG

nginx with ngx_http_stale_cache_module is up: http://127.0.0.1:$nginx_port/api/hello
(redis on 127.0.0.1:$redis_port, demo backend on 127.0.0.1:$backend_port, logs in $prefix/logs)

Try:
  curl -si http://127.0.0.1:$nginx_port/api/hello | grep -E '^X-Cache|^backend'   # X-Cache: MISS
  curl -si http://127.0.0.1:$nginx_port/api/hello | grep -E '^X-Cache|^backend'   # X-Cache: HIT

Ctrl-C stops nginx, redis and the backend.
MSG
wait
