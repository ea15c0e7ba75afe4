#!/usr/bin/env bash
# verify-config.sh FRAGMENT CONFIG
# Kconfig silently drops fragment options whose dependencies are unmet, and
# merge_config.sh only warns. Fails listing every fragment line that did not
# land in CONFIG, with what CONFIG has instead.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FRAGMENT CONFIG" >&2; exit 2; }
fragment=$1 config=$2
for f in "$fragment" "$config"; do
  [ -f "$f" ] || { echo "verify-config: $f: no such file" >&2; exit 2; }
done

missing=()
n=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      n=$((n + 1))
      if ! grep -qxF -- "$line" "$config"; then
        opt=${line%%=*}
        have=$(grep -E "^$opt=|^# $opt is not set" "$config" || echo "absent")
        missing+=("$line (config has: $have)")
      fi
      ;;
    "# CONFIG_"*" is not set")
      n=$((n + 1))
      opt=${line#\# }
      opt=${opt%% *}
      if have=$(grep -E "^$opt=" "$config"); then
        missing+=("$line (config has: $have)")
      fi
      ;;
  esac
done <"$fragment"

if [ ${#missing[@]} -gt 0 ]; then
  echo "verify-config: ${#missing[@]} of $n option(s) in $fragment did not land in $config:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "verify-config: all $n options of $(basename "$fragment") are in $(basename "$config")"
