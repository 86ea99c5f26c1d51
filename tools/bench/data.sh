#!/usr/bin/env bash
# Loader benchmark: decode + two SimCLR-style views at 64 px on HAM10000 images, scanside
# (Rust, rayon) against torchvision transforms on PIL (DataLoader, one worker per core), same
# images, same machine, same run. Prints both rates and the ratio.
#   BENCH_PYTHON: a Python with torch + torchvision (pip install -r tools/bench/requirements.txt)
#   SCANSIDE_DATA: folder holding ham10000/ (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${SCANSIDE_DATA:-../shared/data}/ham10000"
PY="${BENCH_PYTHON:-python3}"
IMAGES="${IMAGES:-2000}"
SIZE="${SIZE:-64}"
[ -d "$DATA" ] || { echo "no HAM10000 at $DATA (set SCANSIDE_DATA)" >&2; exit 2; }
"$PY" -c "import torch, torchvision" 2>/dev/null || {
  echo "$PY lacks torch/torchvision: pip install -r tools/bench/requirements.txt, or set BENCH_PYTHON" >&2; exit 2; }
cargo build --release -q -p scanside-trainer --bin scanside-train
ours=$(target/release/scanside-train data bench --data "$DATA" --size "$SIZE" --images "$IMAGES" --repeat 3)
peer=$("$PY" tools/bench/augment_torchvision.py --data "$DATA" --size "$SIZE" --images "$IMAGES" --repeat 3)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "scanside:    $ours"
echo "torchvision: $peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"scanside {a['images_per_second']:.0f} img/s vs torchvision {b['images_per_second']:.0f} img/s: "
      f"ratio {a['images_per_second'] / b['images_per_second']:.2f}x")
PY
