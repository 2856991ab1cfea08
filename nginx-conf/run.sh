#!/usr/bin/env bash
# `make run`: the stock-Debian config with a private redis-server and a small demo backend,
# all on loopback, under build/run/. Prints the curls that show the module at work; Ctrl-C
# stops everything and exits 0. Overrides (environment), described in docs/run.md:
#   NGINX_PORT=8080 ADMIN_PORT=8099 BACKEND_PORT=8081 REDIS_PORT=6390
#   STALE_CACHE_CONF=nginx-conf/stock-debian.conf   another config from nginx-conf/, or yours
#   RUN_DIR=build/run NGINX_BINARY=nginx REDIS_SERVER=redis-server NGINX_MODULES_DIR=/usr/lib/nginx/modules
#   STALE_CACHE_MODULE=build/ngx_http_stale_cache_module.so
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${RUN_DIR:-$root/build/run}
nginx_port=${NGINX_PORT:-8080}
admin_port=${ADMIN_PORT:-8099}
backend_port=${BACKEND_PORT:-8081}
redis_port=${REDIS_PORT:-6390}
config=${STALE_CACHE_CONF:-$root/nginx-conf/stock-debian.conf}
nginx=${NGINX_BINARY:-nginx}
redis_server=${REDIS_SERVER:-redis-server}
modules_dir=${NGINX_MODULES_DIR:-/usr/lib/nginx/modules}
module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}

rm -rf "$prefix" && mkdir -p "$prefix"/{logs,conf,redis}
pids=()
cleanup() {
    trap - EXIT INT TERM
    local master=
    [ -f "$prefix/logs/nginx.pid" ] && master=$(cat "$prefix/logs/nginx.pid" 2>/dev/null || true)
    if [ -n "$master" ] && kill -QUIT "$master" 2>/dev/null; then
        # Graceful: wait for the master (and so its workers) to be gone, so nothing is left
        # holding the ports when this script returns.
        for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$master" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped."
}
trap cleanup EXIT
# Ctrl-C is how this is meant to end: clean up (EXIT trap) and report success, so that
# `make run` does not print "Error 130".
trap 'exit 0' INT TERM

"$redis_server" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$prefix/redis" --logfile "$prefix/logs/redis.log" &
pids+=($!)
python3 "$root/t/lib/backend.py" --port "$backend_port" >"$prefix/logs/backend.log" 2>&1 &
pids+=($!)

# The shipped config with this run's ports and module, and its commented-out PURGE turned on
# (it answers only on the admin listener).
sed -e "s#/usr/lib/nginx/modules/ngx_http_stale_cache_module.so#$module#" \
    -e "s#/usr/lib/nginx/modules/#$modules_dir/#" \
    -e "s#127.0.0.1:6379#127.0.0.1:$redis_port#" \
    -e "s#127.0.0.1:8081#127.0.0.1:$backend_port#" \
    -e "s#127.0.0.1:8080#127.0.0.1:$nginx_port#" \
    -e "s#127.0.0.1:8099#127.0.0.1:$admin_port#" \
    -e "s#^\( *\)8099\( \)#\1$admin_port\2#" \
    -e "s/^\( *\)#stale_cache_purge PURGE;/\1stale_cache_purge PURGE;/" \
    "$config" >"$prefix/conf/nginx.conf"

# Redis and the backend answering before nginx starts (the first curl would get a 502).
for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 &&
        curl -fs "http://127.0.0.1:$backend_port/__backend/hits" >/dev/null 2>&1 && break
    sleep 0.1
done
"$nginx" -p "$prefix" -c conf/nginx.conf

main=http://127.0.0.1:$nginx_port
admin=http://127.0.0.1:$admin_port
show="grep -iE '^(x-stale-cache|cache-status):|^backend' | tr -d '\\r'"
cat <<MSG

nginx with ngx_http_stale_cache_module is up ($prefix/conf/nginx.conf, made from
$config):
  $main     the main listener: what clients and a reverse proxy use
  $admin     the admin listener: /metrics and PURGE answer only here
  redis 127.0.0.1:$redis_port, demo backend 127.0.0.1:$backend_port (its body counts its hits),
  logs in $prefix/logs

1. A key's life. The config stores entries for 105 s with \$cache_stale 100: fresh for 5 s,
   then stale for 100 s. Each line prints X-Stale-Cache, Cache-Status and the body.
   MISS: collapsed fill from the backend (hit 1), stored in Redis:
  \$ curl -si $main/api/hello | $show
   FRESH: answered from Redis, the backend is not asked:
  \$ curl -si $main/api/hello | $show
   STALE: after 5 s, still hit 1, answered at once; one background refresh is sent:
  \$ sleep 6; curl -si $main/api/hello | $show
   Refreshed: FRESH again, hit 2, the refresh's response:
  \$ curl -si $main/api/hello | $show

2. Collapsing: 20 clients at once on a cold key (the backend takes 1 s): one MISS, the
   others COLLAPSED into its fill, and the backend asked once:
  \$ k=/api/cold\$RANDOM; for i in \$(seq 20); do curl -si -H 'X-Backend-Delay: 1' $main\$k | grep -i '^x-stale-cache' & done | tr -d '\\r' | sort | uniq -c; echo "backend hits: \$(curl -s "http://127.0.0.1:$backend_port/__backend/hits?path=\$k")"

3. Metrics (Prometheus; example queries and a Grafana dashboard in docs/observability/):
  \$ curl -s $admin/metrics | grep -E '^stale_cache_(requests|fills|refreshes)_total' | grep -v ' 0\$'

4. PURGE deletes a URL's entry (200; 404 when there was none); the next GET is a MISS.
   On the main listener it is refused (403), as it is through any proxy in front of it:
  \$ curl -si -X PURGE $admin/api/hello | head -1
  \$ curl -si -X PURGE $main/api/hello | head -1

Reload after editing $prefix/conf/nginx.conf (rewritten at each start):
  \$ $nginx -p $prefix -c conf/nginx.conf -s reload
Ports and config: NGINX_PORT=$nginx_port ADMIN_PORT=$admin_port BACKEND_PORT=$backend_port REDIS_PORT=$redis_port STALE_CACHE_CONF=... make run
(docs/run.md). Ctrl-C stops nginx, redis and the backend.
MSG
wait
