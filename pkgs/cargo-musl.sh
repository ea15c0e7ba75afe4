#!/usr/bin/env bash
# Builds one binary of this workspace as a static-pie musl binary with the
# rust-musl toolchain package (Debian's rustc 1.96 + -Zbuild-std), in cargo's
# `init` profile (small, LTO, panic=abort). Shared by the recipes of the
# binaries cairn puts in its images (init, cairnd):
#   cargo-musl.sh PACKAGE BIN DEST   (DEST relative to $CAIRN_OUT)
# Reproducible across build directories: every absolute path that could reach
# the binary (this directory, CARGO_HOME's registry, the std source, the repo)
# is remapped to a fixed name.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: cargo-musl.sh PACKAGE BIN DEST" >&2; exit 2; }
package=$1 binname=$2 dest=$3

: "${CAIRN_OUT:?}" "${CAIRN_REPO:?}" "${CAIRN_DEP_RUST_MUSL:?}" "${CAIRN_JOBS:?}" "${HOME:?}"
export TZ=UTC LC_ALL=C

tc=$CAIRN_DEP_RUST_MUSL
# shellcheck source=/dev/null
source "$tc/toolchain.env"
linkdir="$tc/lib"
for f in rcrt1.o crti.o crtn.o crtbeginS.o crtendS.o libc.a libunwind.a; do
  [ -f "$linkdir/$f" ] || { echo "$binname: toolchain link dir $linkdir lacks $f" >&2; exit 1; }
done

work=$(pwd)
export CARGO_HOME="$HOME/.cargo"
mkdir -p "$CARGO_HOME"
# Its parent is this run's HOME, a fresh directory each time.
registry_src="$CARGO_HOME/registry/src"

# RUSTFLAGS would replace, not merge with, the config's rustflags: the whole
# target config is built here, and nothing is taken from the environment.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
remaps="\"--remap-path-prefix=$work=/build\", \"--remap-path-prefix=$registry_src=/cargo/registry/src\""
# cargo names std's sources by the sysroot symlink, not by its target
sysroot_src="$("$RUSTC" --print sysroot)/lib/rustlib/src/rust"
remaps+=", \"--remap-path-prefix=$RUST_SRC=/rustc/src\", \"--remap-path-prefix=$sysroot_src=/rustc/src\""
remaps+=", \"--remap-path-prefix=$CAIRN_REPO=/cairn\""
sed -e "s|@LINKDIR@|$linkdir|" -e "s|^rustflags = \[\(.*\)\]\$|rustflags = [\1, $remaps]|" \
  "$tc/cargo-config.toml" >cargo-config.toml
grep -q -- '--remap-path-prefix' cargo-config.toml || { echo "$binname: no rustflags line in $tc/cargo-config.toml" >&2; exit 1; }

RUSTC_BOOTSTRAP=1 "$CARGO" --config "$work/cargo-config.toml" build \
  --manifest-path "$CAIRN_REPO/Cargo.toml" --locked \
  -Zbuild-std=std,panic_abort --target x86_64-unknown-linux-musl \
  --profile init -p "$package" --bin "$binname" \
  --target-dir "$work/target" -j "$CAIRN_JOBS"

bin="$work/target/x86_64-unknown-linux-musl/init/$binname"
bash "$CAIRN_REPO/ci/check-static" "$bin"
# A leaked build path would make the binary differ per build directory.
for p in "$work" "$HOME" "$CAIRN_REPO" "$RUST_SRC" "$sysroot_src"; do
  if grep -aqF "$p" "$bin"; then
    echo "$binname: $bin contains the build path $p" >&2
    exit 1
  fi
done
mkdir -p "$(dirname "$CAIRN_OUT/$dest")"
cp "$bin" "$CAIRN_OUT/$dest"
