#!/usr/bin/env bash
# Assembles the toolchain init is built with: Debian's rustc 1.96 (with std
# source for -Zbuild-std) targeting x86_64-unknown-linux-musl, and the
# self-contained link directory rustc expects for that target.
#
# Outputs:
#   lib/               crt objects, musl libc.a, gcc crtbegin/crtend, libunwind.a
#   toolchain.env      RUSTC, CARGO, RUST_SRC and versions (shell-sourceable)
#   cargo-config.toml  [target] snippet; @LINKDIR@ stands for this lib/ path,
#                      since the output directory moves once cached
#   identity           versions + sha256 of every file above: the cache key
#                      of anything built with this toolchain
set -euo pipefail

: "${CAIRN_SRC:?}" "${CAIRN_OUT:?}" "${CAIRN_REPO:?}"
export TZ=UTC LC_ALL=C

recipe="$CAIRN_REPO/pkgs/rust-musl/recipe.toml"
# The host packages are not fetched sources, so the pins are enforced here.
mapfile -t pins < <(python3 -c '
import sys, tomllib
for p in tomllib.load(open(sys.argv[1], "rb"))["host_packages"]:
    if "=" in p: print(p)
' "$recipe")
bad=()
for pin in "${pins[@]}"; do
  pkg=${pin%%=*} want=${pin#*=}
  have=$(dpkg-query -W -f='${Status}|${Version}' "$pkg" 2>/dev/null || true)
  case "$have" in
    "install ok installed|$want") ;;
    "install ok installed|"*) bad+=("$pkg: installed ${have#*|}, pinned $want") ;;
    *) bad+=("$pkg: not installed, pinned $want") ;;
  esac
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "rust-musl: host toolchain does not match the pins in $recipe:" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi

RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
RUST_SRC=$(readlink -f /usr/lib/rustlib/src/rust)
[ -f "$RUST_SRC/library/std/Cargo.toml" ] || { echo "rust-musl: no std source at $RUST_SRC" >&2; exit 1; }
musl_lib=/usr/lib/x86_64-linux-musl
gcc_lib=/usr/lib/gcc/x86_64-linux-gnu/12

lib="$CAIRN_OUT/lib"
mkdir -p "$lib"
for f in rcrt1.o crt1.o Scrt1.o crti.o crtn.o libc.a; do
  cp "$musl_lib/$f" "$lib/"
done
for f in crtbegin.o crtbeginS.o crtbeginT.o crtend.o crtendS.o; do
  cp "$gcc_lib/$f" "$lib/"
done

# libunwind.a + the shim, in a fresh archive with deterministic headers (D):
# no timestamps, uids or modes from this machine.
shim_src="$CAIRN_SRC/shim/fprintf_chk.c"
[ -f "$shim_src" ] || shim_src="$CAIRN_SRC/shim"
mkdir unwind
cp "$CAIRN_SRC/libunwind/usr/lib/x86_64-linux-gnu/libunwind.a" unwind/libunwind.a
musl-gcc -O2 -fPIC -fno-stack-protector -g0 -c "$shim_src" -o unwind/fprintf_chk.o
ar rcsD unwind/libunwind.a unwind/fprintf_chk.o
if nm -u unwind/libunwind.a 2>/dev/null | grep -q '__fprintf_chk' &&
  ! nm --defined-only unwind/libunwind.a 2>/dev/null | grep -q ' T __fprintf_chk$'; then
  echo "rust-musl: __fprintf_chk still undefined in libunwind.a" >&2
  exit 1
fi
cp unwind/libunwind.a "$lib/libunwind.a"

rust_version=$("$RUSTC" --version)
cargo_version=$("$CARGO" --version)
{
  echo "RUSTC=$RUSTC"
  echo "CARGO=$CARGO"
  echo "RUST_SRC=$RUST_SRC"
  echo "RUST_TARGET=x86_64-unknown-linux-musl"
  printf 'RUST_VERSION=%q\n' "$rust_version"
  printf 'CARGO_VERSION=%q\n' "$cargo_version"
  echo "MUSL_VERSION=$(dpkg-query -W -f='${Version}' musl-dev)"
} >"$CAIRN_OUT/toolchain.env"

cat >"$CAIRN_OUT/cargo-config.toml" <<'TOML'
# Static-pie musl binaries from Debian's rustc with -Zbuild-std.
# linker = "cc": musl-gcc would silently produce a dynamic PIE
# (INTERP /lib/ld-musl-x86_64.so.1).
[build]
rustc = "/usr/bin/rustc"
target = "x86_64-unknown-linux-musl"

[target.x86_64-unknown-linux-musl]
linker = "cc"
rustflags = ["-C", "link-self-contained=yes", "-L", "native=@LINKDIR@"]
TOML

{
  echo "rustc-web $(dpkg-query -W -f='${Version}' rustc-web)"
  echo "cargo-web $(dpkg-query -W -f='${Version}' cargo-web)"
  echo "rust-web-src $(dpkg-query -W -f='${Version}' rust-web-src)"
  echo "musl-dev $(dpkg-query -W -f='${Version}' musl-dev)"
  echo "gcc-12 $(dpkg-query -W -f='${Version}' gcc-12)"
  echo "rustc $rust_version"
  echo "rustc-sha256 $(sha256sum "$(readlink -f "$RUSTC")" | cut -d' ' -f1)"
  echo "libstd-src-sha256 $(cd "$RUST_SRC/library" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  (cd "$CAIRN_OUT" && find lib cargo-config.toml toolchain.env -type f | sort | xargs sha256sum)
} >"$CAIRN_OUT/identity"
