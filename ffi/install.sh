#!/usr/bin/env bash
# Builds liboxccl and installs it: the shared library (liboxccl.so.VERSION, with the
# liboxccl.so.0 and liboxccl.so links), the static library liboxccl.a, the header as
# include/oxccl/nccl.h (beside, not over, a real NCCL's nccl.h) and lib/pkgconfig/oxccl.pc.
#
#   PREFIX=$HOME/.local ffi/install.sh           # default PREFIX: /usr/local
#   DESTDIR=/tmp/stage PREFIX=/usr ffi/install.sh
#
# Then: cc prog.c $(pkg-config --cflags --libs oxccl)
# (with PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig when PREFIX is not a system prefix).
#
# OXCCL_LIB_DIR=dir installs the libraries already built in dir (liboxccl_ffi.so and
# liboxccl_ffi.a) instead of building them with `cargo build --release`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}

if [ -z "${OXCCL_LIB_DIR:-}" ]; then
  cargo build --release -p oxccl-ffi --manifest-path "$here/Cargo.toml"
  OXCCL_LIB_DIR=${CARGO_TARGET_DIR:-$here/../target}/release
fi
for f in liboxccl_ffi.so liboxccl_ffi.a; do
  if [ ! -f "$OXCCL_LIB_DIR/$f" ]; then
    echo "install.sh: $OXCCL_LIB_DIR/$f not found; build with: cargo build --release -p oxccl-ffi" >&2
    exit 1
  fi
done

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)
libdir=$DESTDIR$PREFIX/lib
incdir=$DESTDIR$PREFIX/include/oxccl
pcdir=$libdir/pkgconfig

install -d "$libdir" "$incdir" "$pcdir"
install -m 755 "$OXCCL_LIB_DIR/liboxccl_ffi.so" "$libdir/liboxccl.so.$version"
ln -sf "liboxccl.so.$version" "$libdir/liboxccl.so.0"
ln -sf liboxccl.so.0 "$libdir/liboxccl.so"
install -m 644 "$OXCCL_LIB_DIR/liboxccl_ffi.a" "$libdir/liboxccl.a"
install -m 644 "$here/include/nccl.h" "$incdir/nccl.h"
# A library built with the `ib` feature calls libibverbs: static links need it too.
verbs=
if grep -qa ibv_get_device_list "$OXCCL_LIB_DIR/liboxccl_ffi.a"; then verbs="-libverbs "; fi
sed -e "s|@PREFIX@|$PREFIX|" -e "s|@VERSION@|$version|" -e "s|@VERBS@|$verbs|" "$here/oxccl.pc.in" >"$pcdir/oxccl.pc"
echo "installed liboxccl $version under $DESTDIR$PREFIX"
