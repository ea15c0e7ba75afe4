#!/usr/bin/env bash
# Tests for the package recipes and ci/check-static.
#   pkgs/test.sh                 quick checks (seconds): bad inputs rejected
#   pkgs/test.sh build PKG...    build each PKG twice in different directories,
#                                require identical bytes, run the results
#                                (kernel: ~10-25 min; init: 2-6; e2fsprogs: 1-4)
#   pkgs/test.sh check PKG DIR   only the checks on an existing output DIR
#   pkgs/test.sh boot KDIR IDIR  boot kernel output KDIR with init output IDIR
#                                under QEMU (TCG, ~10-40 s)
# Needs: binutils, file, musl-tools, python3, util-linux (unshare), dpkg-dev.
# A missing tool is a failure, not a skip: CI installs them.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cairn-pkgs-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pass=0
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; pass=$((pass + 1)); }
for tool in readelf file musl-gcc python3 unshare chroot dpkg-source sha256sum; do
  command -v "$tool" >/dev/null || fail "$tool not installed"
done

# expect_fail PATTERN CMD...: CMD must fail and say PATTERN on stderr.
expect_fail() {
  local pattern=$1
  shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then
    fail "expected failure: $*"
  fi
  grep -qE -- "$pattern" "$tmp/err" || { cat "$tmp/err" >&2; fail "$* failed without saying /$pattern/"; }
}

# Runs BIN with ARGS inside an empty root holding only BIN (and FILES):
# proves it needs no loader, libc or /etc.
run_in_empty_root() { # ROOT BIN ARGS...
  local root=$1 bin=$2
  shift 2
  unshare -r chroot "$root" "$bin" "$@"
}

quick() {
  # --- the recipes of our binaries (init, cairnd) cover every crate of ours
  # they link (a workspace crate missing from a recipe's path sources would
  # let a change to it reuse a stale cached binary)
  local linked listed pkg crate_name
  for pair in init:init cairnd:api; do
    pkg=${pair%%:*} crate_name=${pair#*:}
    linked=$(cd "$repo" && cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu \
      | python3 -c 'import json,sys
m=json.load(sys.stdin); ws=set(m["workspace_members"])
by={p["id"]:p for p in m["packages"]}
nodes={n["id"]:n for n in m["resolve"]["nodes"]}
root=[i for i in ws if by[i]["name"]==sys.argv[2]][0]
seen=set(); todo=[root]
while todo:
    i=todo.pop()
    if i in seen: continue
    seen.add(i)
    todo += [d["pkg"] for d in nodes[i]["deps"] if any(k["kind"] is None for k in d["dep_kinds"])]
import os
print("\n".join(sorted(os.path.relpath(os.path.dirname(by[i]["manifest_path"]), sys.argv[1]) for i in seen if i in ws)))' "$repo" "$crate_name") \
      || fail "cargo metadata failed"
    listed=$(python3 -c 'import sys,tomllib
r=tomllib.load(open(sys.argv[1],"rb"))
print("\n".join(sorted(s["spec"] for s in r["source"] if s["kind"]=="path")))' "$repo/pkgs/$pkg/recipe.toml")
    for crate in $linked; do
      grep -qx "$crate" <<<"$listed" || fail "pkgs/$pkg/recipe.toml: $pkg links workspace crate $crate but its sources do not list it"
    done
    grep -qx "pkgs/cargo-musl.sh" <<<"$listed" || fail "pkgs/$pkg/recipe.toml: does not list pkgs/cargo-musl.sh, the script that builds it"
    ok "$pkg's recipe lists every workspace crate it links ($(echo $linked | tr '\n' ' ')) and pkgs/cargo-musl.sh"
  done

  # --- ci/check-static -------------------------------------------------
  printf '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n' >"$tmp/hi.c"
  musl-gcc -static -O2 -o "$tmp/hi-static" "$tmp/hi.c"
  # musl-gcc's specs turn -static-pie into a dynamic PIE with an INTERP of
  # /lib/ld-musl-x86_64.so.1 (the trap the notes describe); so does no flag.
  musl-gcc -static-pie -O2 -o "$tmp/hi-fake-static-pie" "$tmp/hi.c"
  musl-gcc -O2 -o "$tmp/hi-dynamic" "$tmp/hi.c"
  "$repo/ci/check-static" "$tmp/hi-static" >/dev/null || fail "check-static rejected a static musl binary"
  ok "check-static accepts a static musl binary (static-pie: see build init)"
  expect_fail 'INTERP.*ld-musl' "$repo/ci/check-static" "$tmp/hi-fake-static-pie"
  expect_fail 'INTERP' "$repo/ci/check-static" "$tmp/hi-dynamic"
  expect_fail 'NEEDED' "$repo/ci/check-static" /bin/sh
  ok "check-static rejects dynamic binaries (musl-gcc -static-pie, musl-gcc default, /bin/sh)"
  expect_fail 'not an ELF' "$repo/ci/check-static" "$tmp/hi.c"
  expect_fail 'no such file' "$repo/ci/check-static" "$tmp/absent"
  expect_fail 'INTERP' "$repo/ci/check-static" "$tmp/hi-static" "$tmp/hi-dynamic"
  ok "check-static rejects non-ELF, missing files, and a bad binary among good ones"
  mkdir "$tmp/root"
  cp "$tmp/hi-static" "$tmp/root/hi"
  [ "$(run_in_empty_root "$tmp/root" /hi)" = hi ] || fail "static hello did not run in an empty root"
  cp "$tmp/hi-dynamic" "$tmp/root/hi"
  if run_in_empty_root "$tmp/root" /hi >/dev/null 2>&1; then fail "a dynamic binary ran in the empty root"; fi
  ok "empty-root runner works"

  # --- kernel fragment verification -------------------------------------
  local v="$repo/pkgs/kernel/verify-config.sh"
  printf 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S="x y"\nCONFIG_N=-1\n' >"$tmp/frag"
  printf 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S="x y"\nCONFIG_N=-1\nCONFIG_OTHER=y\n' >"$tmp/good.config"
  bash "$v" "$tmp/frag" "$tmp/good.config" >/dev/null || fail "verify-config rejected a matching config"
  printf 'CONFIG_S="x y"\nCONFIG_B=y\nCONFIG_N=0\n' >"$tmp/bad.config"
  expect_fail '3 of 4 option' bash "$v" "$tmp/frag" "$tmp/bad.config"
  grep -q 'CONFIG_A: fragment wants CONFIG_A=y; bad.config has: absent' "$tmp/err" || fail "verify-config did not name the absent CONFIG_A"
  grep -q 'CONFIG_B: fragment wants it not set; bad.config has: CONFIG_B=y' "$tmp/err" || fail "verify-config did not name CONFIG_B=y"
  grep -q 'CONFIG_N: fragment wants CONFIG_N=-1; bad.config has: CONFIG_N=0' "$tmp/err" || fail "verify-config did not name CONFIG_N"
  # a line it cannot read, or an option given twice with different values,
  # is an error of the fragment itself
  printf 'CONFIG_A=y
CONFIG_A=n
' >"$tmp/twice"
  expect_fail 'CONFIG_A' bash "$v" "$tmp/twice" "$tmp/good.config"
  printf 'CONFIG_A=y
CONFIG_ oops
' >"$tmp/garbled"
  expect_fail 'oops' bash "$v" "$tmp/garbled" "$tmp/good.config"
  ok "kernel verify-config lists each option that did not land, with the value found, and refuses a garbled or contradictory fragment"
  # every option in the real fragment must be written as Kconfig prints it,
  # or verify-config could never match it
  local bad_lines
  bad_lines=$(grep -vE '^(#.*|CONFIG_[A-Z0-9_]+=(y|-?[0-9]+|"[^"]*")|)$' "$repo/pkgs/kernel/fragment.config" || true)
  [ -z "$bad_lines" ] || fail "fragment.config lines not in Kconfig's form: $bad_lines"
  ok "fragment.config is in Kconfig's canonical form"

  # --- run-local / recipe pins ---------------------------------------------
  local fake="$tmp/fakerepo"
  mkdir -p "$fake/pkgs/bad" "$fake/ci"
  cp "$repo/pkgs/run-local.sh" "$fake/pkgs/"
  cp "$repo/ci/check-static" "$fake/ci/"
  echo 'echo built >"$CAIRN_OUT/x"' >"$fake/pkgs/bad/build.sh"
  printf 'data\n' >"$fake/pkgs/bad/data"
  local sha
  sha=$(sha256sum "$fake/pkgs/bad/data" | cut -d' ' -f1)
  cat >"$fake/pkgs/bad/recipe.toml" <<EOF
name = "bad"
version = "1"
[[source]]
name = "d"
kind = "url"
spec = "file://$fake/pkgs/bad/data"
sha256 = "$(printf '0%.0s' $(seq 64))"
unpack = false
EOF
  expect_fail 'sha256 [0-9a-f]{64}, recipe pins 0{64}' env CAIRN_LOCAL_CACHE="$tmp/cache" SOURCE_DATE_EPOCH=1 "$fake/pkgs/run-local.sh" bad "$tmp/o1"
  ok "run-local refuses a source whose sha256 differs from the pin"
  sed -i "s/^sha256 = .*/sha256 = \"$sha\"/" "$fake/pkgs/bad/recipe.toml"
  env CAIRN_LOCAL_CACHE="$tmp/cache" SOURCE_DATE_EPOCH=1 "$fake/pkgs/run-local.sh" bad "$tmp/o2" 2>/dev/null
  [ "$(cat "$tmp/o2/x")" = built ] || fail "run-local did not run build.sh with a matching pin"
  ok "run-local runs build.sh when the pin matches"
  sed -i 's/^kind = "url"/kind = "git"/' "$fake/pkgs/bad/recipe.toml"
  expect_fail "unknown kind 'git'" env CAIRN_LOCAL_CACHE="$tmp/cache" SOURCE_DATE_EPOCH=1 "$fake/pkgs/run-local.sh" bad "$tmp/o3"
  ok "run-local rejects an unknown source kind"
  # the contract's environment and nothing else
  cat >"$fake/pkgs/bad/recipe.toml" <<'EOF'
name = "bad"
version = "1"
EOF
  echo 'env | cut -d= -f1 | sort >"$CAIRN_OUT/env"; pwd >"$CAIRN_OUT/pwd"; ls -A >"$CAIRN_OUT/ls"' >"$fake/pkgs/bad/build.sh"
  env FOO=leak SOURCE_DATE_EPOCH=1 "$fake/pkgs/run-local.sh" bad "$tmp/o4" 2>/dev/null
  local want="CAIRN_JOBS CAIRN_OUT CAIRN_REPO CAIRN_SRC HOME LC_ALL PATH PWD SHLVL SOURCE_DATE_EPOCH TZ _"
  [ "$(tr '\n' ' ' <"$tmp/o4/env" | sed 's/ $//')" = "$want" ] ||
    fail "build.sh environment: $(tr '\n' ' ' <"$tmp/o4/env"), want $want"
  [ ! -s "$tmp/o4/ls" ] || fail "build.sh did not start in an empty directory"
  ok "build.sh sees only the contract's environment, in an empty directory"

  # --- rust-musl refuses a toolchain other than the pinned one ---------------
  mkdir -p "$fake/pkgs/rust-musl"
  sed 's/^  "rustc-web=[^"]*"/  "rustc-web=0.0-not-installed"/' "$repo/pkgs/rust-musl/recipe.toml" >"$fake/pkgs/rust-musl/recipe.toml"
  mkdir -p "$tmp/rm/src" "$tmp/rm/out" "$tmp/rm/work"
  expect_fail 'rustc-web: installed .*, pinned 0.0-not-installed' \
    bash -c "cd '$tmp/rm/work' && CAIRN_SRC='$tmp/rm/src' CAIRN_OUT='$tmp/rm/out' CAIRN_REPO='$fake' bash '$repo/pkgs/rust-musl/build.sh'"
  ok "rust-musl fails when an installed host package differs from its pin"

  # --- `check` refuses what it cannot check ----------------------------------
  mkdir -p "$tmp/unknown-out"
  expect_fail "no checks for package 'no-such-pkg'" bash "$repo/pkgs/test.sh" check no-such-pkg "$tmp/unknown-out"
  expect_fail 'no such directory' bash "$repo/pkgs/test.sh" check init "$tmp/absent-out"
  ok "check fails for a package it has no checks for, and for a missing output directory"
}

# build_twice PKG: two builds, different directory names, same bytes.
build_twice() {
  local pkg=$1 i
  for i in 1 2; do
    mkdir -p "$tmp/b$i"
    local dep
    for dep in $(python3 -c 'import sys,tomllib;print(" ".join(tomllib.load(open(sys.argv[1],"rb")).get("depends",[])))' "$repo/pkgs/$pkg/recipe.toml"); do
      [ -d "${CAIRN_TEST_DEPS:-}/$dep" ] || fail "$pkg needs $dep: set CAIRN_TEST_DEPS to a directory holding its output"
      ln -sfn "$CAIRN_TEST_DEPS/$dep" "$tmp/b$i/$dep"
    done
    CAIRN_WORKDIR="$tmp/work-$i-$pkg-$RANDOM" SOURCE_DATE_EPOCH=1767225600 \
      "$repo/pkgs/run-local.sh" "$pkg" "$tmp/b$i/$pkg" 2>"$tmp/build-$pkg-$i.log" ||
      { tail -40 "$tmp/build-$pkg-$i.log" >&2; fail "$pkg build $i"; }
  done
  (cd "$tmp/b1/$pkg" && find . -type f | sort | xargs sha256sum) >"$tmp/sums1"
  (cd "$tmp/b2/$pkg" && find . -type f | sort | xargs sha256sum) >"$tmp/sums2"
  diff "$tmp/sums1" "$tmp/sums2" >&2 || fail "$pkg: two builds differ"
  sed "s/^/  $pkg: /" "$tmp/sums1"
  ok "$pkg: two builds in different directories are identical"
}

CHECKED_PKGS="kernel rust-musl init cairnd e2fsprogs systemd-boot"
check_built() { # PKG [OUTDIR]
  local pkg=$1 out=${2:-$tmp/b1/$1}
  case "$pkg" in
    kernel)
      file -b "$out/bzImage" | grep -q 'Linux kernel x86 boot executable bzImage' || fail "bzImage: $(file -b "$out/bzImage")"
      bash "$repo/pkgs/kernel/verify-config.sh" "$repo/pkgs/kernel/fragment.config" "$out/config" >/dev/null
      ok "kernel: bzImage is a bzImage and its config carries the fragment"
      ;;
    rust-musl)
      for f in rcrt1.o crt1.o Scrt1.o crti.o crtn.o libc.a crtbeginS.o crtendS.o libunwind.a; do
        [ -f "$out/lib/$f" ] || fail "rust-musl: lib/$f missing"
      done
      nm "$out/lib/libunwind.a" 2>/dev/null | grep -q ' T __fprintf_chk$' || fail "rust-musl: libunwind.a has no __fprintf_chk"
      ok "rust-musl: link dir complete, libunwind.a carries the __fprintf_chk shim"
      ;;
    init)
      "$repo/ci/check-static" "$out/init" >/dev/null
      mkdir -p "$tmp/init-root"
      cp "$out/init" "$tmp/init-root/init"
      run_in_empty_root "$tmp/init-root" /init --version | grep -qE '^cairn-init [0-9]' || fail "init --version in an empty root"
      ok "init: static-pie, prints its version in an empty root"
      ;;
    cairnd)
      "$repo/ci/check-static" "$out/usr/bin/cairnd" >/dev/null
      mkdir -p "$tmp/cairnd-root"
      cp "$out/usr/bin/cairnd" "$tmp/cairnd-root/cairnd"
      run_in_empty_root "$tmp/cairnd-root" /cairnd --version | grep -qE '^cairnd [0-9]' || fail "cairnd --version in an empty root"
      # Without its identity it must refuse to start, naming the file.
      if run_in_empty_root "$tmp/cairnd-root" /cairnd --secrets /nonexistent 2>"$tmp/cairnd-err"; then
        fail "cairnd started without secrets"
      fi
      grep -q '/nonexistent/ca.crt' "$tmp/cairnd-err" || fail "cairnd's error does not name the missing file: $(cat "$tmp/cairnd-err")"
      ok "cairnd: static-pie, prints its version in an empty root, refuses to start without its identity"
      ;;
    e2fsprogs)
      "$repo/ci/check-static" "$out"/sbin/* >/dev/null
      mkdir -p "$tmp/e2-root/sbin" "$tmp/e2-root/tmp-in-root"
      cp "$out"/sbin/* "$tmp/e2-root/sbin/"
      truncate -s 64M "$tmp/e2-root/tmp-in-root/img"
      run_in_empty_root "$tmp/e2-root" /sbin/mke2fs -q -F -t ext4 -L STATE /tmp-in-root/img 2>/dev/null ||
        fail "mke2fs failed in an empty root"
      run_in_empty_root "$tmp/e2-root" /sbin/e2fsck -fn /tmp-in-root/img >/dev/null 2>&1 || fail "our e2fsck rejects our mke2fs output"
      # the independent check: the host's e2fsprogs
      e2fsck -fn "$tmp/e2-root/tmp-in-root/img" >/dev/null 2>&1 || fail "host e2fsck rejects our mke2fs output"
      dumpe2fs -h "$tmp/e2-root/tmp-in-root/img" 2>/dev/null | grep -q 'metadata_csum' || fail "no metadata_csum"
      # a corrupted superblock must be found, not passed
      printf '\xff\xff\xff\xff' | dd of="$tmp/e2-root/tmp-in-root/img" bs=1 seek=$((1024 + 0x58)) conv=notrunc status=none
      if run_in_empty_root "$tmp/e2-root" /sbin/e2fsck -fn /tmp-in-root/img >/dev/null 2>&1; then
        fail "our e2fsck passed a corrupted superblock"
      fi
      for b in "$out"/sbin/*; do
        if strings "$b" | grep -E "$tmp|/work/|/root/|/home/" >&2; then fail "$b leaks a build path"; fi
      done
      ok "e2fsprogs: static, formats and checks ext4 (metadata_csum) in an empty root, host e2fsck agrees, corruption caught"
      ;;
    systemd-boot)
      for f in systemd-bootx64.efi linuxx64.efi.stub; do
        file -b "$out/$f" | grep -q 'PE32+ executable (EFI application) x86-64' || fail "systemd-boot: $f: $(file -b "$out/$f")"
      done
      ok "systemd-boot: the boot manager and the UKI stub are x86-64 EFI applications"
      ;;
    *)
      # A check that checks nothing must not pass.
      fail "no checks for package '$pkg' (known: $CHECKED_PKGS)"
      ;;
  esac
}

if [ "${1:-}" = build ]; then
  shift
  [ $# -ge 1 ] || fail "usage: $0 build PKG..."
  for pkg in "$@"; do
    build_twice "$pkg"
    check_built "$pkg"
  done
elif [ "${1:-}" = boot ]; then
  # The kernel and init together: bzImage + a zstd initramfs holding only
  # init must reach init's version line, then panic (init exits) and, with
  # PANIC_TIMEOUT=-1, reboot at once, which -no-reboot turns into an exit.
  [ $# -eq 3 ] || fail "usage: $0 boot KERNEL_OUTDIR INIT_OUTDIR"
  for t in qemu-system-x86_64 cpio zstd; do command -v "$t" >/dev/null || fail "$t not installed"; done
  mkdir -p "$tmp/initramfs/dev"
  cp "$3/init" "$tmp/initramfs/init"
  (cd "$tmp/initramfs" && find . | sort | cpio -o -H newc --quiet | zstd -q -19 >"$tmp/initrd.zst")
  timeout 300 qemu-system-x86_64 -machine q35 -m 256 -nographic -no-reboot \
    -kernel "$2/bzImage" -initrd "$tmp/initrd.zst" -append console=ttyS0 >"$tmp/boot.log" 2>&1 ||
    { tail -20 "$tmp/boot.log" >&2; fail "qemu did not exit by itself (no reboot on panic?)"; }
  grep -aq '^cairn-init [0-9]' "$tmp/boot.log" || { tail -20 "$tmp/boot.log" >&2; fail "init did not print its version"; }
  grep -aq 'Kernel panic - not syncing: Attempted to kill init' "$tmp/boot.log" || fail "no panic after init exited"
  ok "kernel boots the zstd initramfs, runs static init, reboots on panic"
elif [ "${1:-}" = check ]; then
  [ $# -eq 3 ] || fail "usage: $0 check PKG OUTDIR"
  [ -d "$3" ] || fail "$3: no such directory"
  check_built "$2" "$(cd "$3" && pwd)"
else
  quick
fi
echo "pkgs/test.sh: $pass checks passed"
