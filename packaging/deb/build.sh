#!/usr/bin/env bash
# Builds the Debian package of fieldsync with dpkg-deb alone (no cargo-deb, no network):
#
#   packaging/deb/build.sh            # cargo build --release, then target/debian/fieldsync_*.deb
#
# Environment: FIELDSYNC_BIN=PATH packages an existing (static) binary instead of building one;
# OUT_DIR=DIR puts the .deb there. Prints the path of the .deb on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${OUT_DIR:-$root/target/debian}"

bin="${FIELDSYNC_BIN:-}"
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --locked)
    bin="$root/target/release/fieldsync"
fi
[ -x "$bin" ] || { echo "build.sh: no executable at $bin" >&2; exit 1; }
# The package declares no dependency on a C library: the binary must not need one.
if LC_ALL=C readelf -l "$bin" 2>/dev/null | grep -q "Requesting program interpreter"; then
    echo "build.sh: $bin is dynamically linked; build it with the repository's .cargo/config.toml" >&2
    exit 1
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

install -D -m 0755 "$bin" "$stage/usr/bin/fieldsync"
# A release binary is stripped already; a debug one (tests) shrinks a lot.
strip --strip-debug "$stage/usr/bin/fieldsync" 2>/dev/null || true
install -D -m 0644 "$root/packaging/systemd/fieldsync.service" \
    "$stage/usr/lib/systemd/system/fieldsync.service"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/fieldsync/README.md"
install -D -m 0644 "$here/copyright" "$stage/usr/share/doc/fieldsync/copyright"

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$here/control.in" > "$stage/DEBIAN/control"

mkdir -p "$out"
deb="$out/fieldsync_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
