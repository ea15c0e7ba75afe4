#!/usr/bin/env bash
# verify-config.sh FRAGMENT CONFIG
# Kconfig silently drops fragment options whose dependencies are unmet, and
# merge_config.sh only warns. This checks every setting of FRAGMENT against
# the final CONFIG and fails (exit 1) listing each one that did not land,
# with what CONFIG has instead. Lines it understands:
#   CONFIG_X=y / =<number> / ="string"   CONFIG must have exactly that line
#   CONFIG_X=n, # CONFIG_X is not set    CONFIG must not set X (absent or
#                                        "is not set"; absent = invisible in
#                                        this tree, listed as a note)
# Any other line that mentions CONFIG_ outside a plain comment is an error
# (a typo there would otherwise check nothing), and so is an option given
# twice with different values.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FRAGMENT CONFIG" >&2; exit 2; }
fragment=$1 config=$2
for f in "$fragment" "$config"; do
  [ -f "$f" ] || { echo "verify-config: $f: no such file" >&2; exit 2; }
done

# what CONFIG says about option $1: its line, or "absent"
have() {
  grep -E "^$1=|^# $1 is not set\$" "$config" || echo "absent"
}

missing=() bad=() absent=()
declare -A want=()
n=0 lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  opt="" value=""
  if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    opt=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    [ "$value" = n ] && value="is not set"
  elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    opt=${BASH_REMATCH[1]} value="is not set"
  elif [[ $line =~ ^[[:space:]]*$ ]] || { [[ $line =~ ^# ]] && ! [[ $line =~ ^#[[:space:]]*CONFIG_[A-Za-z0-9_]+([[:space:]]|=|$) ]]; }; then
    continue # blank line or prose comment
  else
    bad+=("line $lineno: not a setting this script can check: '$line'")
    continue
  fi
  if [ -n "${want[$opt]+x}" ]; then
    if [ "${want[$opt]}" != "$value" ]; then
      bad+=("line $lineno: $opt given twice (${want[$opt]} and $value)")
    fi
    continue
  fi
  want[$opt]=$value
  n=$((n + 1))
  got=$(have "$opt")
  if [ "$value" = "is not set" ]; then
    case "$got" in
      absent) absent+=("$opt") ;;
      "# $opt is not set") ;;
      *) missing+=("$opt: fragment wants it not set; $(basename "$config") has: $got") ;;
    esac
  elif [ "$got" != "$opt=$value" ]; then
    missing+=("$opt: fragment wants $opt=$value; $(basename "$config") has: $got")
  fi
done <"$fragment"

status=0
if [ ${#bad[@]} -gt 0 ]; then
  echo "verify-config: ${#bad[@]} line(s) of $fragment cannot be checked:" >&2
  printf '  %s\n' "${bad[@]}" >&2
  status=1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "verify-config: ${#missing[@]} of $n option(s) in $fragment did not land in $config" \
    "(unmet Kconfig dependencies, or a choice/select overrode them):" >&2
  printf '  %s\n' "${missing[@]}" >&2
  status=1
fi
[ $status -eq 0 ] || exit $status

if [ ${#absent[@]} -gt 0 ]; then
  echo "verify-config: note: ${#absent[@]} option(s) wanted off are not even visible in this tree" \
    "(off by construction): ${absent[*]}"
fi
echo "verify-config: all $n options of $(basename "$fragment") are in $(basename "$config")"
