#!/usr/bin/env bash
# Cargo runner: boots the ELF on QEMU's Cortex-M4F board and decodes its defmt log.
# The firmware ends through semihosting exit, so QEMU's exit status is the firmware's verdict;
# pipefail carries it through defmt-print. The timeout turns a hang into a failure.
set -euo pipefail
elf="$1"
timeout "${QEMU_TIMEOUT:-60}" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
  -semihosting-config enable=on,target=native -kernel "$elf" \
  | defmt-print -e "$elf"
