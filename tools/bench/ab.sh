#!/usr/bin/env bash
# Two builds of scanside against each other, alternated round by round so the shared machine's
# drift hits both alike: SimCLR steady img/s (the settings of tools/bench/pretrain.sh), the CPU
# time of one SimCLR step on one thread (the CPU seconds of a 43-step run minus a 3-step run, over
# 40: start-up cancels out, and CPU time moves less than wall time when other jobs share the
# cores), and `scanside bench` p50 for the fp32 and int8 engines on one bundle. Prints every
# round and the median (min–max) per build and measure, and the new/old ratio of the medians.
#   A=old/bin/dir B=new/bin/dir BUNDLE=runs/demo/bundle KEY=runs/demo/keys/demo.pub \
#   ROUNDS=5 bash tools/bench/ab.sh
# Each dir holds scanside-train and scanside. KEY= (empty) for an unsigned bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${A:?A=dir of the old build}" "${B:?B=dir of the new build}"
DATA="${SCANSIDE_DATA:-../shared/data}/ham10000"
BUNDLE=${BUNDLE:-runs/demo/bundle}
KEY=${KEY-runs/demo/keys/demo.pub}
if [ -n "$KEY" ]; then trust=(--public-key "$KEY"); else trust=(--allow-unsigned); fi
ROUNDS=${ROUNDS:-5}; N=${N:-200}
SIZE="${SIZE:-32}"; WIDTH="${WIDTH:-0.25}"; BATCH="${BATCH:-64}"; STEPS="${STEPS:-30}"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mapfile -t files < <(find "$DATA/images" -maxdepth 1 -type f | sort | head -n 64)
"$A/scanside-train" data split --data "$DATA" --out "$work/split.json" >/dev/null

pretrain() { # $1 build dir -> steady img/s
  rm -rf "$work/run"
  "$1/scanside-train" pretrain --split "$work/split.json" --out "$work/run" --image-size "$SIZE" \
    --width "$WIDTH" --batch-size "$BATCH" --max-steps "$((STEPS + 3))" --health-every 0 \
    --checkpoint-every 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["steady_images_per_second"])'
}
cpu_seconds() { # $1 build dir, $2 steps -> user+sys CPU seconds of a one-thread run
  rm -rf "$work/run"
  /usr/bin/time -f "%U %S" -o "$work/time" env RAYON_NUM_THREADS=1 "$1/scanside-train" pretrain \
    --split "$work/split.json" --out "$work/run" --image-size "$SIZE" --width "$WIDTH" \
    --batch-size "$BATCH" --max-steps "$2" --health-every 0 --checkpoint-every 0 >/dev/null
  awk '{print $1 + $2}' "$work/time"
}
step_cpu_ms() { # $1 build dir -> CPU ms of one step
  local short long
  short=$(cpu_seconds "$1" 3); long=$(cpu_seconds "$1" 43)
  python3 -c "print(($long - $short) / 40 * 1000)"
}
p50() { # $1 build dir, $2 engine -> p50 ms
  "$1/scanside" bench --bundle "$BUNDLE" "${trust[@]}" --engine "$2" --runs "$N" "${files[@]}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["engines"][0]["p50_ms"])'
}

for round in $(seq "$ROUNDS"); do
  order="A B"; [ $((round % 2)) -eq 0 ] && order="B A" # neither build always goes first
  for side in $order; do
    dir=${!side}
    echo "$round $side pretrain_img_s $(pretrain "$dir")"
    echo "$round $side step_cpu_ms $(step_cpu_ms "$dir")"
    echo "$round $side fp32_p50_ms $(p50 "$dir" fp32)"
    echo "$round $side int8_p50_ms $(p50 "$dir" int8)"
  done
done | tee "$work/rounds.txt"
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for measure in dict.fromkeys(r[2] for r in rows):
    med = {}
    for side in "AB":
        v = [float(r[3]) for r in rows if r[1] == side and r[2] == measure]
        med[side] = statistics.median(v)
        print(f"{measure:15} {side}: median {med[side]:9.4g} ({min(v):.4g}-{max(v):.4g}) n={len(v)}")
    print(f"{measure:15} B/A: {med['B'] / med['A']:.3f}")
PY
