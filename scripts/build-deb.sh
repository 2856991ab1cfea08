#!/usr/bin/env bash
# Packages a built module as libnginx-mod-http-stale-cache_<version>_<arch>.deb, laid out like
# Debian's own nginx module packages. Used by `make deb` and by t/080-package.t.
#   scripts/build-deb.sh [module.so [output-dir]]
# Needs dpkg-dev (dpkg-shlibdeps, dpkg-gencontrol, dpkg-parsechangelog); runs as any user.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
module=${1:-$root/build/ngx_http_stale_cache_module.so}
outdir=${2:-$root/build}
# The nginx source the module was compiled against (the Makefile's default copy of nginx-dev's).
nginx_src=${NGINX_SOURCE_DIR:-$root/build/nginx}
package=libnginx-mod-http-stale-cache
die() { echo "build-deb: $*" >&2; exit 1; }

[ -f "$module" ] || die "no module at $module (run make module)"
umask 022

# The version is Cargo.toml's; the changelog must have an entry for it.
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || die "no version in Cargo.toml"
changelog_version=$(dpkg-parsechangelog -l "$root/packaging/debian/changelog" -S Version)
[ "$changelog_version" = "$version" ] ||
    die "Cargo.toml says $version, packaging/debian/changelog's last entry $changelog_version: add an entry"

# The module only loads into the nginx it was built for: depend on that build's ABI, as the
# installed nginx package declares it (nginx, nginx-core, nginx-extras... provide nginx-abi-*).
nginx_pkg=$(dpkg-query -S /usr/sbin/nginx | cut -d: -f1)
abi=$(dpkg-query -W -f='${Provides}' "$nginx_pkg" | grep -o 'nginx-abi-[^ ,]*' | head -n1 || true)
[ -n "$abi" ] || die "package $nginx_pkg provides no nginx-abi-*"
# nginx-dev's tree records the ABI it belongs to: a mismatch means the module was compiled
# against headers of another nginx than the one installed.
abi_file=$nginx_src/debian/libnginx-mod.abisubstvars
if [ -f "$abi_file" ]; then
    src_abi=$(sed -n 's/^nginx:abi=//p' "$abi_file")
    [ "$src_abi" = "$abi" ] || die "module built against $src_abi ($nginx_src), installed nginx is $abi"
fi

# dpkg-shlibdeps and dpkg-gencontrol work on a debian/ directory: stage one.
stage=$(mktemp -d "${TMPDIR:-/tmp}/stale-cache-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/debian"
cp "$root/packaging/debian/control" "$root/packaging/debian/changelog" "$stage/debian/"
pkgroot=$stage/debian/$package
so=$pkgroot/usr/lib/nginx/modules/ngx_http_stale_cache_module.so
doc=$pkgroot/usr/share/doc/$package

install -D -m 0644 "$module" "$so"
# What dh_strip does to a shared object; the release profile's debug info stays in build/.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$so"
install -D -m 0644 "$root/packaging/debian/mod-http-stale-cache.conf" \
    "$pkgroot/usr/share/nginx/modules-available/mod-http-stale-cache.conf"
install -D -m 0644 "$root/packaging/debian/copyright" "$doc/copyright"
# lintian's one remark (informational) and why it does not apply: see the file.
install -D -m 0644 "$root/packaging/debian/lintian-overrides" \
    "$pkgroot/usr/share/lintian/overrides/$package"
# A native package (no Debian revision): its changelog is changelog.gz.
gzip -9n <"$root/packaging/debian/changelog" >"$doc/changelog.gz"
gzip -9n <"$root/README.md" >"$doc/README.md.gz"
# The rest of the documentation (docs/*.md, compressed like the README), and the
# configurations of nginx-conf/ as examples, uncompressed: they are copied into /etc/nginx.
[ -d "$root/docs" ] || die "no docs/ folder in $root"
(cd "$root" && find docs -name '*.md' -type f -printf '%P\0') |
    while IFS= read -r -d '' f; do
        mkdir -p "$(dirname "$doc/docs/$f")"
        gzip -9n <"$root/docs/$f" >"$doc/docs/$f.gz"
    done
(cd "$root/nginx-conf" && find . -name '*.conf' -type f -printf '%P\0') |
    while IFS= read -r -d '' f; do install -D -m 0644 "$root/nginx-conf/$f" "$doc/examples/$f"; done
find "$doc" -name '*.gz' -exec chmod 0644 {} +

mkdir -p "$pkgroot/DEBIAN"
for f in postinst prerm postrm; do
    install -m 0755 "$root/packaging/debian/$f" "$pkgroot/DEBIAN/$f"
done
install -m 0644 "$root/packaging/debian/triggers" "$pkgroot/DEBIAN/triggers"

(
    cd "$stage"
    # Only libc and friends: the ngx_* symbols come from the nginx binary that loads the
    # module, so the "symbol not found in any library" warnings (bit 1) are noise here.
    dpkg-shlibdeps --warnings=2 -Tdebian/substvars "debian/$package/usr/lib/nginx/modules/ngx_http_stale_cache_module.so"
    dpkg-gencontrol -p"$package" -v"$version" -V"nginx:abi=$abi" -P"debian/$package" -fdebian/files
)
(cd "$pkgroot" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$pkgroot/DEBIAN/md5sums"
chmod 0644 "$pkgroot/DEBIAN/md5sums"

arch=$(sed -n 's/^Architecture: //p' "$pkgroot/DEBIAN/control")
deb=$outdir/${package}_${version}_${arch}.deb
mkdir -p "$outdir"
# Same timestamps for the same changelog entry; root ownership without being root.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$root/packaging/debian/changelog" -S Timestamp) \
    dpkg-deb --root-owner-group -Zxz --build "$pkgroot" "$deb" >/dev/null
echo "built $deb"
