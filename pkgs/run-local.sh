#!/usr/bin/env bash
# Runs one package recipe the way `cairn pkg build` does, without the engine:
#   pkgs/run-local.sh NAME OUTDIR
# It documents the build contract (docs/design.md, "Package builds"):
# sources fetched, sha256-checked and unpacked into $CAIRN_SRC/<source name>/,
# build.sh run in a fresh empty directory with only the contract's variables
# (plus the recipe's [env] table), outputs left in OUTDIR.
#
# Dependencies are looked up as siblings of OUTDIR: building `init` into
# out/init uses out/rust-musl as CAIRN_DEP_RUST_MUSL.
#
# Knobs (for local use only, not part of the contract):
#   CAIRN_LOCAL_CACHE  where downloads are kept (default ~/.cache/cairn-run-local)
#   CAIRN_WORKDIR      run build.sh here instead of a temp dir, and keep it
#   CAIRN_JOBS         default: nproc
#   SOURCE_DATE_EPOCH  default: the last commit's time
set -euo pipefail

# Everything in main: bash parses a function whole before running it, so
# editing this file during a build cannot change the running build.
main() {

die() { echo "run-local: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 NAME OUTDIR"
name=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe_dir="$repo/pkgs/$name"
[ -f "$recipe_dir/recipe.toml" ] || die "no recipe at $recipe_dir/recipe.toml"
[ -f "$recipe_dir/build.sh" ] || die "no build script at $recipe_dir/build.sh"

mkdir -p "$2"
out=$(cd "$2" && pwd)
[ -z "$(ls -A "$out")" ] || die "OUTDIR $out is not empty"
cache=${CAIRN_LOCAL_CACHE:-$HOME/.cache/cairn-run-local}
mkdir -p "$cache"
jobs=${CAIRN_JOBS:-$(nproc)}
sde=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null)} || die "SOURCE_DATE_EPOCH unset and $repo is not a git checkout"

# The recipe as shell-safe lines: SRC name kind spec sha256 unpack / DEP / HOST / ENV.
recipe_lines=$(python3 - "$recipe_dir/recipe.toml" <<'PY'
import shlex, sys, tomllib
r = tomllib.load(open(sys.argv[1], "rb"))
q = shlex.quote
for s in r.get("source", []):
    if s.get("kind") not in ("deb", "deb-src", "url", "path"):
        sys.exit(f"{sys.argv[1]}: source {s.get('name')!r}: unknown kind {s.get('kind')!r}")
    if s["kind"] != "path" and len(s.get("sha256", "")) != 64:
        sys.exit(f"{sys.argv[1]}: source {s['name']!r}: sha256 missing or not 64 hex digits")
    print("SRC", q(s["name"]), q(s["kind"]), q(s["spec"]), q(s.get("sha256", "-")),
          "true" if s.get("unpack", True) else "false")
for d in r.get("depends", []):
    print("DEP", q(d))
for h in r.get("host_packages", []):
    print("HOST", q(h))
for k, v in r.get("env", {}).items():
    print("ENV", q(k), q(str(v)))
PY
) || die "cannot parse $recipe_dir/recipe.toml"

# Host packages are the engine's business to install; here we only insist
# they are present. A pin "pkg=version" must match exactly.
while read -r kind a _; do
  [ "$kind" = HOST ] || continue
  eval "set -- $a"; spec=$1
  pkg=${spec%%=*}
  have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
  case "$have" in "install ok installed "*) ;; *) die "host package $pkg is not installed" ;; esac
  if [ "$spec" != "$pkg" ] && [ "${have##* }" != "${spec#*=}" ]; then
    die "host package $pkg is ${have##* }, recipe pins ${spec#*=}"
  fi
done <<<"$recipe_lines"

check_sha() { # FILE WANT
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "$1: sha256 $got, recipe pins $2"
}

# A private sources list with deb-src entries, so the machine's is untouched.
srclist_dir="$cache/apt-src"
apt_src_opts=(-o "Dir::Etc::SourceList=$srclist_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$srclist_dir/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
apt_src_ready=false
apt_src_update() {
  $apt_src_ready && return
  mkdir -p "$srclist_dir/lists/partial"
  cat >"$srclist_dir/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
  apt-get "${apt_src_opts[@]}" update -qq >/dev/null
  apt_src_ready=true
}

work_root=$(mktemp -d "${TMPDIR:-/tmp}/cairn-pkg-$name.XXXXXX")
trap 'rm -rf "$work_root"' EXIT
src="$work_root/src"
home="$work_root/home"
mkdir -p "$src" "$home"

while read -r kind rest; do
  [ "$kind" = SRC ] || continue
  eval "set -- $rest"; sname=$1 skind=$2 spec=$3 sha=$4 unpack=$5
  dest="$src/$sname"
  mkdir -p "$dest"
  case "$skind" in
    deb)
      pkg=${spec%%=*} ver=${spec#*=}
      glob="$cache/${pkg}_${ver//:/%3a}_*.deb"
      deb=$(compgen -G "$glob" | head -n1 || true)
      if [ -z "$deb" ]; then
        (cd "$cache" && apt-get download -q "$spec" >/dev/null 2>&1) || die "apt-get download $spec failed"
        deb=$(compgen -G "$glob" | head -n1 || true)
        [ -n "$deb" ] || die "apt-get download $spec left no file matching $glob"
      fi
      check_sha "$deb" "$sha"
      if $unpack; then dpkg-deb -x "$deb" "$dest"; else cp "$deb" "$dest/"; fi
      ;;
    deb-src)
      # sha256 pins the .dsc; dpkg-source checks every file the .dsc lists.
      pkg=${spec%%=*} ver=${spec#*=}
      d="$cache/deb-src/$pkg-$ver"
      if [ ! -f "$d/${pkg}_${ver#*:}.dsc" ]; then
        apt_src_update
        mkdir -p "$d"
        (cd "$d" && apt-get "${apt_src_opts[@]}" source -q --download-only "$spec" >/dev/null 2>&1) ||
          die "apt-get source --download-only $spec failed"
      fi
      check_sha "$d/${pkg}_${ver#*:}.dsc" "$sha"
      if $unpack; then
        rmdir "$dest"
        # The .dsc signature cannot be checked without Debian's maintainer
        # keys; the sha256 pin above is the trust anchor, so only failures
        # are shown.
        dpkg-source --no-copy -x "$d/${pkg}_${ver#*:}.dsc" "$dest" >"$work_root/dpkg-source.log" 2>&1 ||
          { cat "$work_root/dpkg-source.log" >&2; die "dpkg-source -x ${pkg}_${ver#*:}.dsc failed"; }
      else
        cp "$d"/* "$dest/"
      fi
      ;;
    url)
      # kept in the cache only once verified
      f="$cache/url-$sha"
      if [ ! -f "$f" ]; then
        curl -fsSL -o "$f.part" "$spec" || die "download $spec failed"
        check_sha "$f.part" "$sha"
        mv "$f.part" "$f"
      fi
      base=$(basename "${spec%%\?*}")
      if $unpack; then tar -xf "$f" -C "$dest"; else cp "$f" "$dest/$base"; fi
      ;;
    path)
      [ -e "$repo/$spec" ] || die "source $sname: $repo/$spec does not exist"
      if [ -d "$repo/$spec" ]; then cp -a "$repo/$spec/." "$dest/"; else cp -a "$repo/$spec" "$dest/"; fi
      ;;
  esac
done <<<"$recipe_lines"

env_args=(
  "CAIRN_SRC=$src" "CAIRN_OUT=$out" "CAIRN_REPO=$repo" "CAIRN_JOBS=$jobs"
  "SOURCE_DATE_EPOCH=$sde" "TZ=UTC" "LC_ALL=C"
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$home"
)
while read -r kind rest; do
  case "$kind" in
    DEP)
      eval "set -- $rest"
      dep_out="$(dirname "$out")/$1"
      [ -d "$dep_out" ] || die "dependency $1: no output at $dep_out (build it first)"
      var=$(echo "$1" | tr 'a-z-' 'A-Z_')
      env_args+=("CAIRN_DEP_$var=$(readlink -f "$dep_out")")
      ;;
    ENV)
      eval "set -- $rest"
      env_args+=("$1=$2")
      ;;
  esac
done <<<"$recipe_lines"

if [ -n "${CAIRN_WORKDIR:-}" ]; then
  mkdir -p "$CAIRN_WORKDIR"
  work=$(cd "$CAIRN_WORKDIR" && pwd)
  [ -z "$(ls -A "$work")" ] || die "CAIRN_WORKDIR $work is not empty"
else
  work="$work_root/build"
  mkdir -p "$work"
fi

# bash reads a script as it runs it: a build.sh edited during a long build
# would run half old, half new. Run a snapshot.
cp "$recipe_dir/build.sh" "$work_root/build.sh"
echo "run-local: building $name in $work" >&2
(cd "$work" && env -i "${env_args[@]}" bash "$work_root/build.sh")
echo "run-local: $name outputs in $out:" >&2
(cd "$out" && find . -type f | sort | xargs sha256sum) >&2
}
main "$@"
