#!/usr/bin/env bash
# SimCLR training throughput: scanside (burn, this build's backend) against PyTorch eager with
# the same ResNet, image size and batch, in the same run. Prints both and the ratio.
#   BENCH_PYTHON: a Python with torch (pip install -r tools/bench/requirements.txt)
#   SCANSIDE_DATA: folder holding ham10000/ (default ../shared/data)
#   SIZE (32), WIDTH (0.25), BATCH (64), STEPS (30); DEVICE=cuda:0 with a --features cuda build
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${SCANSIDE_DATA:-../shared/data}/ham10000"
PY="${BENCH_PYTHON:-python3}"
SIZE="${SIZE:-32}"; WIDTH="${WIDTH:-0.25}"; BATCH="${BATCH:-64}"; STEPS="${STEPS:-30}"
DEVICE="${DEVICE:-cpu}"
[ -d "$DATA" ] || { echo "no HAM10000 at $DATA (set SCANSIDE_DATA)" >&2; exit 2; }
BIN="${SCANSIDE_TRAIN:-target/release/scanside-train}"
if [ -z "${SCANSIDE_TRAIN:-}" ]; then cargo build --release -q -p scanside-trainer --bin scanside-train; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$BIN" data split --data "$DATA" --out "$work/split.json" >/dev/null
ours=$("$BIN" --device "$DEVICE" pretrain --split "$work/split.json" --out "$work/run" --image-size "$SIZE" \
  --width "$WIDTH" --batch-size "$BATCH" --max-steps "$((STEPS + 3))" --health-every 0 --checkpoint-every 0 \
  | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')
tdev=cpu; [[ "$DEVICE" == cuda* ]] && tdev="cuda"
peer=$("$PY" tools/bench/simclr_torch.py --size "$SIZE" --width "$WIDTH" --batch "$BATCH" --steps "$STEPS" --device "$tdev")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); device $DEVICE"
echo "scanside: $ours"
echo "pytorch:  $peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# Both sides leave 3 warm-up steps out (kernel compilation and autotuning on GPUs).
ours = a.get('steady_images_per_second') or a['images_per_second']
print(f"SimCLR step throughput: scanside {ours:.1f} img/s vs PyTorch eager "
      f"{b['images_per_second']:.1f} img/s: ratio {ours / b['images_per_second']:.2f}x")
PY
