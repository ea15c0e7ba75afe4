#!/usr/bin/env bash
# cairnd: the node API daemon, static musl (pkgs/cargo-musl.sh).
set -euo pipefail
exec bash "${CAIRN_REPO:?}/pkgs/cargo-musl.sh" api cairnd usr/bin/cairnd
