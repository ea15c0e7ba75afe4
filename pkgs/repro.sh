#!/usr/bin/env bash
# Reproducibility of the package layer, as a user would check it:
# `cairn pkg build PKG` in two clones of this checkout at different paths,
# each with an empty cache of its own, must give byte-identical outputs.
#
#   pkgs/repro.sh [PKG...]      default: kernel init e2fsprogs
#
# Every package and its dependencies are built twice from source (the kernel
# takes ~10 min per build on 2 idle cores), so this is not part of ci/test,
# which builds each package once; run it after changing a recipe.
# Env: CAIRN_REPRO_DIR (work directory, default a new temp dir, removed on
# success), SOURCE_DATE_EPOCH (default: profiles/default.toml's).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(kernel init e2fsprogs)
epoch=${SOURCE_DATE_EPOCH:-$(sed -n 's/^source_date_epoch = //p' "$repo/profiles/default.toml")}
work=${CAIRN_REPRO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cairn-repro.XXXXXX")}
log() { printf '==> %s\n' "$*" >&2; }

if [ -n "$(git -C "$repo" status --porcelain)" ]; then
  log "note: uncommitted changes in $repo are not in the clones (they build HEAD)"
fi
# Both clones and the cairn binary are taken first: a commit or a rebuild in
# this checkout while the (long) builds run must not split the two sides.
(cd "$repo" && cargo build --release --locked -q -p builder)
mkdir -p "$work"
cp "$repo/target/release/cairn" "$work/cairn"
cairn=$work/cairn

# Two checkout paths of different lengths and names: a path leaking into an
# output shows up as a difference.
checkouts=("$work/a/cairn" "$work/b/some/deeper/path/checkout")
for i in 0 1; do
  co=${checkouts[$i]}
  rm -rf "$co" "$work/cache-$i"
  mkdir -p "$(dirname "$co")"
  git clone -q "$repo" "$co"
done
[ "$(git -C "${checkouts[0]}" rev-parse HEAD)" = "$(git -C "${checkouts[1]}" rev-parse HEAD)" ] ||
  { echo "the two clones are at different commits" >&2; exit 1; }
log "both checkouts at $(git -C "${checkouts[0]}" rev-parse --short HEAD)"
for i in 0 1; do
  co=${checkouts[$i]}
  for pkg in "${pkgs[@]}"; do
    log "build $((i + 1))/2: cairn pkg build $pkg in $co (empty cache $work/cache-$i)"
    start=$SECONDS
    out=$("$cairn" pkg build "$pkg" --repo "$co" --cache "$work/cache-$i" --source-date-epoch "$epoch")
    (cd "$out" && find . -type f | LC_ALL=C sort | xargs -r sha256sum) >"$work/$pkg.$i.sums"
    log "$pkg built in $((SECONDS - start)) s: $out"
  done
done

status=0
for pkg in "${pkgs[@]}"; do
  if cmp -s "$work/$pkg.0.sums" "$work/$pkg.1.sums"; then
    sed "s/^/  $pkg: /" "$work/$pkg.0.sums"
    echo "ok: $pkg identical from two checkouts with empty caches"
  else
    diff "$work/$pkg.0.sums" "$work/$pkg.1.sums" >&2 || true
    echo "FAIL: $pkg differs between the two checkouts" >&2
    status=1
  fi
done
[ $status -ne 0 ] || [ -n "${CAIRN_REPRO_DIR:-}" ] || rm -rf "$work"
exit $status
