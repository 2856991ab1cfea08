#!/usr/bin/env bash
# Installs what building and testing the module needs, only where it is missing.
# Debian/Ubuntu: the packaged nginx (the one the module is built for), its source headers,
# the srcache/set-misc/echo/ndk modules, redis-server, the test harness base and bindgen's clang.
# dpkg-dev builds the .deb (make deb, t/080-package.t), lintian checks it (t/080); prometheus
# (promtool and the server) checks the metrics endpoint (t/090-metrics.t); the brotli filter
# is a filter module loaded after this one (t/097-hot.t); valgrind runs `make valgrind`.
set -euo pipefail

# Rust first, before anything is installed: the distributions' rustc is too old (Debian 12 has
# 1.63), so the one-line instruction is rustup's. The minimum is Cargo.toml's rust-version.
root=$(cd "$(dirname "$0")/.." && pwd)
rust_min=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
rustup_line="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""
# 0 when version $1 >= $2 (dotted numbers).
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
rust_missing() {
  if command -v rustup >/dev/null 2>&1 && [ "$(dirname "$(command -v rustup)")" != "$(dirname "$(command -v "$tool" || echo .)")" ]; then
    echo "deps: $1; Rust >= $rust_min is needed: put rustup's folder first in PATH (. \"\$HOME/.cargo/env\") and run \`rustup update stable\`, then make again" >&2
  elif command -v rustup >/dev/null 2>&1; then
    echo "deps: $1; Rust >= $rust_min is needed: run \`rustup update stable\` (or \`rustup default stable\`), then make again" >&2
  else
    echo "deps: $1; Rust >= $rust_min is needed: install it with $rustup_line , then make again" >&2
  fi
  exit 1
}
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || rust_missing "$tool not found"
  have=$("$tool" --version 2>/dev/null | sed -n 's/^[a-z]* \([0-9][0-9.]*\).*/\1/p' || true)
  [ -n "$have" ] || rust_missing "\`$tool --version\` does not answer"
  version_ge "$have" "$rust_min" || rust_missing "$(command -v "$tool") is $tool $have"
done

packages=(
  nginx nginx-dev
  libnginx-mod-http-ndk libnginx-mod-http-srcache-filter
  libnginx-mod-http-set-misc libnginx-mod-http-echo libnginx-mod-http-brotli-filter
  redis-server libtest-base-perl libclang-dev wrk dpkg-dev lintian prometheus
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
