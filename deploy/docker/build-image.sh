#!/usr/bin/env bash
# Build the statically linked `fenceflake` and the FROM-scratch image around it.
#
#   deploy/docker/build-image.sh [IMAGE]          # default IMAGE: fenceflake:latest
#
# FENCEFLAKE_STATIC_BIN=path   use this binary instead of running cargo (it is still
#                              checked to be static).
# FENCEFLAKE_KEEP_DEBUG=1      keep the line tables (default: objcopy --strip-debug).
#
# The docker build context is a temporary directory holding only the Dockerfile, the
# binary and an empty state directory: target/ never goes to the daemon, and FROM scratch
# pulls nothing.
set -euo pipefail

image=${1:-fenceflake:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu

bin=${FENCEFLAKE_STATIC_BIN:-}
if [[ -z $bin ]]; then
    # --target keeps RUSTFLAGS away from build scripts and proc-macros (they must stay
    # dynamic); the glibc target is the only one needed.
    echo "build-image: cargo build --release (static glibc, $target)" >&2
    (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target "$target" -p fenceflake-cli)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$root/$target_dir
    bin=$target_dir/$target/release/fenceflake
fi

# Refuse anything dynamic: a FROM scratch image has no loader and no libc.
desc=$(file -b "$bin")
echo "build-image: $bin: $desc" >&2
case $desc in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "build-image: $bin is not statically linked" >&2; exit 1 ;;
esac
if command -v readelf >/dev/null; then
    if readelf -lW "$bin" | grep -q 'INTERP' || readelf -dW "$bin" | grep -q '(NEEDED)'; then
        echo "build-image: $bin has a program interpreter or NEEDED libraries" >&2
        exit 1
    fi
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/fenceflake-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
# Line tables (the release profile's debug info) are three quarters of the binary; the
# image keeps the symbols (backtraces still name functions) unless FENCEFLAKE_KEEP_DEBUG=1.
if [[ ${FENCEFLAKE_KEEP_DEBUG:-0} != 1 ]] && command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$ctx/fenceflake"
else
    cp "$bin" "$ctx/fenceflake"
fi
chmod 0755 "$ctx/fenceflake"
mkdir "$ctx/var-lib-fenceflake"

echo "build-image: docker build -t $image ($(du -sh "$ctx" | cut -f1) context)" >&2
docker build --quiet --tag "$image" "$ctx" >/dev/null
echo "$image"
