#!/usr/bin/env bash
# Reproducibility of the package layer, as a user would check it:
# `cairn pkg build PKG` in two clones of this checkout at different paths,
# each with an empty cache of its own, must give byte-identical outputs.
#
#   pkgs/repro.sh [PKG...]      default: kernel init e2fsprogs
#   pkgs/repro.sh --against-cache PKG...
#
# Every package and its dependencies are built twice from source (the kernel
# takes ~10 min per build on 2 idle cores); run it after changing a recipe.
# --against-cache builds once: one side is the entry of the shared cache
# ($CAIRN_CACHE or the default, built from this checkout if missing), the
# other a clone at another path with an empty cache, and the two cache keys
# must agree (else this checkout's inputs differ from its HEAD). ci/test
# runs it for init and e2fsprogs (~3 min); the kernel stays a manual run.
# Env: CAIRN_REPRO_DIR (work directory, default a new temp dir, removed on
# success), SOURCE_DATE_EPOCH (default: profiles/default.toml's).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
against_cache=false
if [ "${1:-}" = --against-cache ]; then
  against_cache=true
  shift
  [ $# -gt 0 ] || { echo "usage: $0 --against-cache PKG..." >&2; exit 2; }
fi
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
caches=("$work/cache-0" "$work/cache-1")
first=0
if $against_cache; then
  # Side 0 is this checkout and the shared cache (whatever built its entry).
  checkouts[0]=$repo
  caches[0]=${CAIRN_CACHE:-}
  first=1
fi
for i in 0 1; do
  [ "$i" -ge "$first" ] || continue
  co=${checkouts[$i]}
  rm -rf "$co" "${caches[$i]}"
  mkdir -p "$(dirname "$co")"
  git clone -q "$repo" "$co"
done
[ "$(git -C "${checkouts[0]}" rev-parse HEAD)" = "$(git -C "${checkouts[1]}" rev-parse HEAD)" ] ||
  { echo "the two clones are at different commits" >&2; exit 1; }
log "both checkouts at $(git -C "${checkouts[0]}" rev-parse --short HEAD)"
for i in 0 1; do
  co=${checkouts[$i]}
  cache_args=()
  [ -z "${caches[$i]}" ] || cache_args=(--cache "${caches[$i]}")
  for pkg in "${pkgs[@]}"; do
    log "build $((i + 1))/2: cairn pkg build $pkg in $co (cache ${caches[$i]:-shared})"
    start=$SECONDS
    out=$("$cairn" pkg build "$pkg" --repo "$co" "${cache_args[@]}" --source-date-epoch "$epoch")
    # The output directory is named by the cache key.
    basename "$out" >"$work/$pkg.$i.key"
    (cd "$out" && find . -type f | LC_ALL=C sort | xargs -r sha256sum) >"$work/$pkg.$i.sums"
    log "$pkg built in $((SECONDS - start)) s: $out"
  done
done

status=0
for pkg in "${pkgs[@]}"; do
  if ! cmp -s "$work/$pkg.0.key" "$work/$pkg.1.key"; then
    echo "FAIL: $pkg has cache key $(cat "$work/$pkg.0.key") in ${checkouts[0]} and $(cat "$work/$pkg.1.key") in ${checkouts[1]}: its inputs differ (uncommitted changes?)" >&2
    status=1
    continue
  fi
  if cmp -s "$work/$pkg.0.sums" "$work/$pkg.1.sums"; then
    sed "s/^/  $pkg: /" "$work/$pkg.0.sums"
    if $against_cache; then
      echo "ok: $pkg from an empty cache in ${checkouts[1]} is identical to the shared cache's entry"
    else
      echo "ok: $pkg identical from two checkouts with empty caches"
    fi
  else
    diff "$work/$pkg.0.sums" "$work/$pkg.1.sums" >&2 || true
    echo "FAIL: $pkg differs between the two checkouts" >&2
    status=1
  fi
done
[ $status -ne 0 ] || [ -n "${CAIRN_REPRO_DIR:-}" ] || rm -rf "$work"
exit $status
