#!/usr/bin/env bash
# init: PID 1, static musl (the shared recipe is pkgs/cargo-musl.sh).
set -euo pipefail
exec bash "${CAIRN_REPO:?}/pkgs/cargo-musl.sh" init init init
