#!/bin/bash
# Copies the two EFI binaries out of the unpacked .deb.
set -euo pipefail
d="$CAIRN_SRC/efi/usr/lib/systemd/boot/efi"
install -m 0644 "$d/systemd-bootx64.efi" "$CAIRN_OUT/systemd-bootx64.efi"
install -m 0644 "$d/linuxx64.efi.stub" "$CAIRN_OUT/linuxx64.efi.stub"
