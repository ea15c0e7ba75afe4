#!/usr/bin/env bash
# Builds mke2fs, e2fsck and tune2fs from Debian's e2fsprogs source as static
# musl binaries: init runs them from the rootfs, with no libc beside them.
# Only the bundled libext2fs/libcom_err/libe2p/libuuid/libblkid are linked;
# pkg-config is disabled so nothing from the build host can sneak in.
set -euo pipefail

: "${CAIRN_SRC:?}" "${CAIRN_OUT:?}" "${CAIRN_JOBS:?}" "${SOURCE_DATE_EPOCH:?}"
export TZ=UTC LC_ALL=C

src="$CAIRN_SRC/e2fsprogs"
[ -x "$src/configure" ] || { echo "e2fsprogs: no configure script in $src" >&2; exit 1; }
work=$(pwd)

# Out-of-tree build; both paths are mapped to fixed names so neither the
# source nor the build directory reaches the binaries (__FILE__ in asserts).
mkdir build
cd build
CFLAGS="-O2 -g0 -ffile-prefix-map=$src=/src -ffile-prefix-map=$work=/build"
# --enable-libuuid/--enable-libblkid mean "use the bundled copies": the
# default would pick the host's (glibc-linked) libraries via pkg-config.
PKG_CONFIG=false "$src/configure" \
  CC=musl-gcc CFLAGS="$CFLAGS" LDFLAGS="-static" \
  --prefix=/usr --with-root-prefix="" --sysconfdir=/etc \
  --enable-libuuid --enable-libblkid \
  --disable-nls --disable-fuse2fs --disable-defrag --disable-imager \
  --disable-resizer --disable-debugfs --disable-uuidd --disable-fsck \
  --disable-e2initrd-helper --disable-backtrace --disable-tdb \
  --disable-elf-shlibs --disable-bsd-shlibs --disable-rpath \
  --without-libarchive >configure.log 2>&1 ||
  { tail -30 configure.log >&2; echo "e2fsprogs: configure failed (log above)" >&2; exit 1; }

# Only the libraries and the three programs: the rest (docs, po, tests)
# is not needed and some of it is not musl-clean.
make -j"$CAIRN_JOBS" libs >make.log 2>&1 ||
  { tail -30 make.log >&2; echo "e2fsprogs: make libs failed" >&2; exit 1; }
make -j"$CAIRN_JOBS" -C misc mke2fs tune2fs >>make.log 2>&1 ||
  { tail -30 make.log >&2; echo "e2fsprogs: make misc failed" >&2; exit 1; }
make -j"$CAIRN_JOBS" -C e2fsck e2fsck >>make.log 2>&1 ||
  { tail -30 make.log >&2; echo "e2fsprogs: make e2fsck failed" >&2; exit 1; }

mkdir -p "$CAIRN_OUT/sbin"
for p in misc/mke2fs e2fsck/e2fsck misc/tune2fs; do
  # strip: symbol tables carry nothing init needs; deterministic by itself
  strip --strip-all -o "$CAIRN_OUT/sbin/$(basename "$p")" "$p"
done

if [ -n "${CAIRN_REPO:-}" ] && [ -x "$CAIRN_REPO/ci/check-static" ]; then
  "$CAIRN_REPO/ci/check-static" "$CAIRN_OUT"/sbin/*
fi
for b in "$CAIRN_OUT"/sbin/*; do
  for p in "$src" "$work"; do
    if grep -aqF "$p" "$b"; then
      echo "e2fsprogs: $b contains the build path $p" >&2
      exit 1
    fi
  done
done
