#!/usr/bin/env bash
# Installs what building and testing the module needs, only where it is missing.
# Debian/Ubuntu: the packaged nginx (the one the module is built for), its source headers,
# the srcache/set-misc/echo/ndk modules, redis-server, the test harness base and bindgen's clang.
# dpkg-dev builds the .deb (make deb, t/080-package.t); prometheus (promtool and the server)
# checks the metrics endpoint (t/090-metrics.t); the brotli filter is a filter module loaded
# after this one (t/097-hot.t); valgrind runs `make valgrind`.
set -euo pipefail

packages=(
  nginx nginx-dev
  libnginx-mod-http-ndk libnginx-mod-http-srcache-filter
  libnginx-mod-http-set-misc libnginx-mod-http-echo libnginx-mod-http-brotli-filter
  redis-server libtest-base-perl libclang-dev wrk dpkg-dev prometheus
  libpcre2-dev libssl-dev zlib1g-dev python3 make gcc pkg-config curl valgrind
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  # The distro's nginx service is not ours to run: keep the package from starting it.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
    trap '"${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
