# shellcheck shell=bash
# Helpers for the assemble sections of ci/bench: running cairn and the peers
# on one input set, and reading comparable sizes out of their outputs.
# Source it after lib.sh; it uses ci/bench's SCRATCH, RUNS, JOBS, EPOCH.

PEERS=${CAIRN_BENCH_PEERS:-$CAIRN_ROOT/../shared/bench}
CAIRN_BIN=$CAIRN_ROOT/target/release/cairn

# assemble_cairn IN OUT CACHE: `cairn assemble` on an inputs.sh set.
assemble_cairn() {
  rm -rf "$2"
  SOURCE_DATE_EPOCH=$EPOCH "$CAIRN_BIN" assemble \
    --kernel "$1/bzImage" --initrd "$1/initramfs.cpio.zst" --rootfs "$1/rootfs" \
    --cmdline "$(cat "$1/cmdline")" --osrel "$1/osrel" --out "$2" --cache "$3"
}

# assemble_peer NAME IN OUT: one peer script; VALIDATE=0 because its checks
# are not part of what a user waits for.
assemble_peer() {
  rm -rf "$3"
  VALIDATE=0 JOBS=$JOBS bash "$PEERS/peer-$1.sh" "$2" "$3"
}

# sb_bytes FILE [OFFSET]: bytes_used from the squashfs superblock at OFFSET,
# i.e. the filesystem without the writer's padding or a verity tail, so the
# three writers' images compare like for like.
sb_bytes() {
  local off=${2:-0} magic
  magic=$(od -An -tx4 -j "$off" -N4 "$1" | tr -d ' ')
  [ "$magic" = 73717368 ] || die "no squashfs superblock in $1 at offset $off (magic $magic)"
  od -An -tu8 -j $((off + 40)) -N8 "$1" | tr -d ' '
}

# part_offset DISK LABEL: byte offset of the GPT partition named LABEL.
part_offset() {
  local n
  n=$(sgdisk -p "$1" | awk -v l="$2" '$1 ~ /^[0-9]+$/ && $NF == l { print $1; exit }')
  [ -n "$n" ] || die "no partition $2 in $1"
  sgdisk -i "$n" "$1" | awk '/^First sector:/ { print $3 * 512 }'
}

# alloc FILE...: bytes allocated on disk (the 2 GiB disks are sparse).
alloc() { du -B1 -c "$@" | tail -1 | cut -f1; }

# record NAME KIND OUT: after a measured run, append NAME's "core" wall time
# (wall minus the peer steps cairn assemble does not do: qcow2 and the ISO,
# from the peer's steps.tsv) to NAME.core and its sizes to NAME.sizes:
# "squashfs image disk_alloc outputs_alloc" ("-" where not separable).
record() {
  local name=$1 kind=$2 out=$3 wall extra sq img disk all
  wall=$(tail -1 "$SCRATCH/$name.times" | cut -d' ' -f1)
  extra=0
  [ -f "$out/steps.tsv" ] &&
    extra=$(awk '$1 == "qcow2" || $1 == "iso" { s += $2 } END { print s + 0 }' "$out/steps.tsv")
  awk -v w="$wall" -v e="$extra" 'BEGIN { printf "%.2f\n", w - e }' >>"$SCRATCH/$name.core"
  case $kind in
    cairn)
      sq=$(sb_bytes "$out/rootfs.img"); img=$(stat -c %s "$out/rootfs.img") ;;
    toolchain)
      sq=$(sb_bytes "$out/rootfs.squashfs")
      img=$(( $(stat -c %s "$out/rootfs.squashfs") + $(stat -c %s "$out/rootfs.verity") )) ;;
    repart)
      sq=$(sb_bytes "$out/disk.raw" "$(part_offset "$out/disk.raw" BOOT-A)"); img=- ;;
    *) die "record: unknown kind $kind" ;;
  esac
  disk=$(alloc "$out/disk.raw")
  all=$(find "$out" -maxdepth 1 -type f ! -name '*.tsv' ! -name '*.json' -print0 | xargs -0 du -B1 -c | tail -1 | cut -f1)
  echo "$sq $img $disk $all" >"$SCRATCH/$name.sizes"
}

# med FILE COL: median of one column.
med() {
  awk -v c="$2" '{ print $c }' "$1" | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# table3 TITLE OURS PEER...: medians and sizes per tool, then OURS/PEER ratios.
table3() {
  local title=$1 ours=$2 n sizes
  shift 2
  printf '\n%s (median of %s runs, %s cores, load average %s)\n' \
    "$title" "$RUNS" "$JOBS" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '  %-22s %8s %8s %8s %12s %12s %12s %12s\n' "" "wall s" "cpu s" "core s" \
    "squashfs B" "image B" "disk alloc" "all alloc"
  for n in "$ours" "$@"; do
    read -r -a sizes <"$SCRATCH/$n.sizes"
    printf '  %-22s %8s %8s %8s %12s %12s %12s %12s\n' "$n" \
      "$(med "$SCRATCH/$n.times" 1)" "$(med "$SCRATCH/$n.times" 2)" \
      "$(med "$SCRATCH/$n.core" 1)" "${sizes[@]}"
  done
  for n in "$@"; do
    awk -v t="$ours/$n" \
      -v aw="$(med "$SCRATCH/$ours.times" 1)" -v bw="$(med "$SCRATCH/$n.times" 1)" \
      -v ac="$(med "$SCRATCH/$ours.times" 2)" -v bc="$(med "$SCRATCH/$n.times" 2)" \
      -v ak="$(med "$SCRATCH/$ours.core" 1)" -v bk="$(med "$SCRATCH/$n.core" 1)" \
      -v as="$(cut -d' ' -f1 "$SCRATCH/$ours.sizes")" -v bs="$(cut -d' ' -f1 "$SCRATCH/$n.sizes")" \
      'BEGIN { printf "  %-22s %8.3f %8.3f %8.3f %12.4f\n", t, aw / bw, ac / bc, ak / bk, as / bs }'
  done
}

# aim LABEL VALUE OP LIMIT: one line saying whether a target from the issue is met.
aim() {
  awk -v l="$1" -v v="$2" -v op="$3" -v lim="$4" 'BEGIN {
    ok = (op == "<=") ? (v <= lim) : (v >= lim)
    printf "  aim %-42s %8.3f %s %s  %s\n", l, v, op, lim, ok ? "MET" : "MISSED" }'
}

# ratio OURS THEIRS FILE_SUFFIX COL: median(OURS) / median(THEIRS).
ratio() {
  awk -v a="$(med "$SCRATCH/$1.$3" "$4")" -v b="$(med "$SCRATCH/$2.$3" "$4")" 'BEGIN { printf "%.4f", a / b }'
}

# peak_rss NAME CMD...: runs CMD once (output to $SCRATCH/NAME.log) and
# writes its peak resident set size in KiB (getrusage's ru_maxrss of the
# waited-for child, as /usr/bin/time -v reports it) to $SCRATCH/NAME.rss.
peak_rss() {
  local name=$1; shift
  python3 - "$SCRATCH/$name.rss" "$@" >"$SCRATCH/$name.log" 2>&1 <<'PY' ||
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=f)
sys.exit(rc)
PY
    { cat "$SCRATCH/$name.log" >&2; die "$name failed"; }
}
