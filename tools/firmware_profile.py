#!/usr/bin/env python3
"""Per-layer instructions per MAC from the firmware's golden-run log.

    cd firmware/device && SCANSIDE_GOLDEN=DIR cargo run --release 2>&1 | python3 ../../tools/firmware_profile.py

QEMU runs with `-icount shift=0`, so SysTick ticks count instructions; the firmware's
calibration line (N instructions of a counted loop in T ticks) gives instructions per tick. Layer durations are the
differences between the logged layer start times of the first vector.
"""
import re
import sys


def main() -> int:
    log = sys.stdin.read()
    cal = re.search(r"calibration: (\d+) instructions in (\d+) SysTick ticks", log)
    if not cal:
        print("no calibration line in the log", file=sys.stderr)
        return 1
    insn_per_tick = int(cal.group(1)) / int(cal.group(2))
    layers = [
        (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))
        for m in re.finditer(
            r"vector 0 layer (\d+): (\w+) \((\d+) MACs\) at (\d+) ticks", log
        )
    ]
    total = re.search(r"vector 0: output .* (\d+) SysTick ticks", log)
    if not layers or not total:
        print("no per-layer lines for vector 0 (build with the debug log level)", file=sys.stderr)
        return 1
    end = int(total.group(1))
    total_macs = sum(l[2] for l in layers)
    print(f"{'layer':>5} {'op':<16} {'MACs':>10} {'instructions':>13} {'share':>6} {'insn/MAC':>8}")
    for i, (index, op, macs, start) in enumerate(layers):
        stop = layers[i + 1][3] if i + 1 < len(layers) else end
        insn = (stop - start) * insn_per_tick
        per_mac = f"{insn / macs:8.2f}" if macs else f"{'-':>8}"
        print(f"{index:>5} {op:<16} {macs:>10} {insn:>13,.0f} {100 * (stop - start) / end:5.1f}% {per_mac}")
    insn = end * insn_per_tick
    print(f"total: {end} ticks, {insn:,.0f} instructions, {total_macs} MACs, "
          f"{insn / total_macs:.2f} instructions per MAC ({insn_per_tick:.2f} per tick)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
