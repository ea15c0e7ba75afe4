#!/usr/bin/env bash
# Builds a bzImage from Debian's linux-source-6.1 with everything built in:
# allnoconfig + fragment.config, then checks the fragment actually landed.
# Reproducible: the KBUILD_* stamps are fixed and TZ/LC_ALL are pinned
# (a non-UTC TZ changes the built-in initramfs header).
set -euo pipefail

: "${CAIRN_SRC:?}" "${CAIRN_OUT:?}" "${CAIRN_JOBS:?}" "${SOURCE_DATE_EPOCH:?}"
export TZ=UTC LC_ALL=C

tarball="$CAIRN_SRC/linux-source/${LINUX_TARBALL:-usr/src/linux-source-6.1.tar.xz}"
want="${LINUX_TARBALL_SHA256:-4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693}"
got=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "kernel: $tarball sha256 $got, recipe pins $want" >&2
  exit 1
fi
fragment="$CAIRN_SRC/fragment/fragment.config"
[ -f "$fragment" ] || fragment="$CAIRN_SRC/fragment"

tar -xf "$tarball"
cd linux-source-6.1

export ARCH=x86_64
export KBUILD_BUILD_TIMESTAMP
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %e %H:%M:%S UTC %Y')
export KBUILD_BUILD_USER=cairn KBUILD_BUILD_HOST=cairn KBUILD_BUILD_VERSION=1
export LOCALVERSION=

make -s allnoconfig
# -m: merge only; olddefconfig then gives every newly visible option its
# Kconfig default (alldefconfig would reset allnoconfig's choices).
scripts/kconfig/merge_config.sh -m .config "$fragment" >merge.log
make -s olddefconfig

# Kconfig silently drops options whose dependencies are unmet: list them all.
verify="$CAIRN_SRC/verify/verify-config.sh"
[ -f "$verify" ] || verify="$CAIRN_SRC/verify"
bash "$verify" "$fragment" .config

make -s -j"$CAIRN_JOBS" bzImage

cp arch/x86/boot/bzImage "$CAIRN_OUT/bzImage"
cp .config "$CAIRN_OUT/config"
