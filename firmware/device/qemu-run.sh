#!/usr/bin/env bash
# Cargo runner: boots the ELF on QEMU's Cortex-M4F board and decodes its defmt log.
# The firmware ends through semihosting exit, so QEMU's exit status is the firmware's verdict;
# pipefail carries it through defmt-print. The timeout turns a hang into a failure.
set -euo pipefail
elf="$1"
# -icount shift=0: one executed instruction = 1 ns of virtual time (deterministic timing; the
# firmware converts SysTick ticks to instruction counts).
timeout "${QEMU_TIMEOUT:-60}" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic -icount shift=0 \
  -semihosting-config enable=on,target=native -kernel "$elf" \
  | defmt-print -e "$elf"
