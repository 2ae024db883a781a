#!/usr/bin/env bash
# Installs the C/C++ SDK: headers, static and shared library (with its
# versioned soname links) and a pkg-config file.
#   scripts/install.sh [PREFIX]        (default /usr/local; DESTDIR is honoured)
# Then: cc app.c $(pkg-config --cflags --libs mmoe)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix=${1:-/usr/local}
dest=${DESTDIR:-}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
abi=$(sed -n 's/^#define MMOE_ABI_VERSION \([0-9]*\).*/\1/p' include/mmoe.h)
[ -f target/release/libmmoe.so ] || cargo build --release
install -d "$dest$prefix/include" "$dest$prefix/lib/pkgconfig"
install -m 644 include/mmoe.h include/mmoe.hpp "$dest$prefix/include/"
install -m 644 target/release/libmmoe.a "$dest$prefix/lib/"
install -m 755 target/release/libmmoe.so "$dest$prefix/lib/libmmoe.so.$version"
ln -sf "libmmoe.so.$version" "$dest$prefix/lib/libmmoe.so.$abi"
ln -sf "libmmoe.so.$abi" "$dest$prefix/lib/libmmoe.so"
cat > "$dest$prefix/lib/pkgconfig/mmoe.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: mmoe
Description: Embedded multi-task Mixture-of-Experts ranking engine
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lmmoe
Libs.private: -lpthread -ldl -lm
PC
echo "installed mmoe $version (ABI $abi) into $dest$prefix"
