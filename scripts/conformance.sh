#!/usr/bin/env bash
# `make conformance`: the public HTTP cache test suite (npm package http-cache-tests, the suite
# behind cache-tests.fyi) against nginx-conf/http-cache.conf, changed only in its ports and
# module path. The suite's own server plays the backend. Prints the required/all counts and,
# with CONFORMANCE_LIST_FAILING=1, every required test that failed and why.
# Environment: CONFORMANCE_CONF (default nginx-conf/http-cache.conf), CONFORMANCE_DIR
# (default build/conformance), CONFORMANCE_ID=<test id> runs one test verbosely,
# NGINX_BINARY, REDIS_SERVER, NGINX_MODULES_DIR, STALE_CACHE_MODULE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CONFORMANCE_DIR:-$root/build/conformance}
config=${CONFORMANCE_CONF:-$root/nginx-conf/http-cache.conf}
nginx=${NGINX_BINARY:-/usr/sbin/nginx}
redis_server=${REDIS_SERVER:-redis-server}
modules_dir=${NGINX_MODULES_DIR:-/usr/lib/nginx/modules}
module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}
suite_version=0.4.5
suite=$dir/node_modules/http-cache-tests

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    # Debian's nodejs (18 in bookworm) is enough: the suite needs node >= 14.8.
    echo "conformance: installing nodejs and npm (apt)"
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nodejs npm \
        || { echo "conformance: node (>= 14.8) and npm are needed: apt install nodejs npm" >&2; exit 1; }
fi
if [ ! -f "$suite/package.json" ] || ! grep -q "\"version\": \"$suite_version\"" "$suite/package.json"; then
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --omit=dev "http-cache-tests@$suite_version" >"$dir/npm.log" 2>&1 \
        || { cat "$dir/npm.log" >&2; exit 1; }
fi

# Three free loopback ports: nginx, the suite's server (the backend), Redis.
read -r nginx_port backend_port redis_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

run=$dir/run
rm -rf "$run" && mkdir -p "$run"/{logs,conf,redis}
pids=()
cleanup() {
    local master=
    [ -f "$run/logs/nginx.pid" ] && master=$(cat "$run/logs/nginx.pid" 2>/dev/null || true)
    if [ -n "$master" ] && kill -QUIT "$master" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$master" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$redis_server" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$run/redis" --logfile "$run/logs/redis.log" &
pids+=($!)
(cd "$suite" && exec env npm_config_port="$backend_port" npm_config_protocol=http \
    npm_config_pidfile="$run/server.pid" node server/server.mjs) >"$run/logs/backend.log" 2>&1 &
pids+=($!)

sed -e "s#/usr/lib/nginx/modules/ngx_http_stale_cache_module.so#$module#" \
    -e "s#/usr/lib/nginx/modules/#$modules_dir/#" \
    -e "s#127.0.0.1:6379#127.0.0.1:$redis_port#" \
    -e "s#127.0.0.1:8081#127.0.0.1:$backend_port#" \
    -e "s#127.0.0.1:8080#127.0.0.1:$nginx_port#" \
    "$config" >"$run/conf/nginx.conf"

for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 &&
        curl -s -o /dev/null "http://127.0.0.1:$backend_port/" && break
    sleep 0.1
done
"$nginx" -p "$run" -c conf/nginx.conf

base=http://127.0.0.1:$nginx_port
if [ -n "${CONFORMANCE_ID:-}" ]; then
    (cd "$suite" && npm_config_base=$base npm_config_id=$CONFORMANCE_ID node --no-warnings cli.mjs)
    exit 0
fi
# The suite runs its tests 100 at a time; a hang would leave it waiting forever.
(cd "$suite" && npm_config_base=$base npm_config_id= npm_package_config_id= timeout 600 node --no-warnings cli.mjs) \
    >"$dir/results.json" 2>"$dir/cli.log" || { echo "conformance: the suite failed, see $dir/cli.log" >&2; exit 1; }
node "$root/scripts/conformance-count.mjs" "$suite" "$dir/results.json"
if grep -E '\[(alert|crit|emerg)\]' "$run/logs/error.log"; then
    echo "conformance: [alert]/[crit] lines in $run/logs/error.log" >&2
    exit 1
fi
