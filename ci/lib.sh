# Shared helpers for the ci/ scripts. Source it; do not run it.
set -euo pipefail
CAIRN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CAIRN_ROOT
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
