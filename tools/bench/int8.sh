#!/usr/bin/env bash
# Inference benchmark of a bundle's models against the onnxruntime peer, same images, same run:
# `scanside bench` for fp32 (the direct engine), tract fp32, the int8 core and tract on the QDQ model (one process each, so
# peak RSS is per engine), and onnxruntime (Python, one thread, batch 1) on the fp32 ONNX model and its int8
# QDQ twin (each in its own process). Prints each engine's p50/p99, cold start and peak RSS, and their ratios to
# onnxruntime fp32.
#   BUNDLE=runs/demo/bundle KEY=runs/demo/keys/demo.pub N=300 bash tools/bench/int8.sh
# KEY= (empty) measures an unsigned development bundle (--allow-unsigned).
# BIN: the scanside binary (default target/release/scanside, built when missing). On an aarch64
# board (a Jetson), with this repository, the bundle, Python 3 and `pip install onnxruntime numpy`
# there: copy the cross-built binary (`cargo build --release -p scanside-runtime --target
# aarch64-unknown-linux-gnu`, or the `edge` profile that ships) and run
#   BIN=./scanside BUNDLE=bundle KEY=site.pub IMAGES=some/images bash tools/bench/int8.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${BUNDLE:-runs/demo/bundle}
KEY=${KEY-runs/demo/keys/demo.pub}
if [ -n "$KEY" ]; then trust=(--public-key "$KEY"); else trust=(--allow-unsigned); fi
N=${N:-300}
IMAGES=${IMAGES:-${SCANSIDE_DATA:-../shared/data}/ham10000/images}
BIN=${BIN:-target/release/scanside}
[ -x "$BIN" ] || cargo build --release -p scanside-runtime
echo "machine: $(uname -m), $(grep -m1 -E 'model name|^Model' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
mapfile -t files < <(find "$IMAGES" -maxdepth 1 -type f | sort | head -n 64)
for engine in fp32 tract int8 qdq; do
  "$BIN" bench --bundle "$BUNDLE" "${trust[@]}" --engine "$engine" \
    --runs "$N" "${files[@]}" > "/tmp/scanside-bench-$engine.json"
done
ort=$(python3 tools/bench/onnxruntime_peer.py "$BUNDLE" "$N")
python3 - "$ort" <<'PY'
import json, sys
peer = json.loads(sys.argv[1])
rows = [json.load(open(f"/tmp/scanside-bench-{e}.json"))["engines"][0] for e in ("fp32", "tract", "int8", "qdq")]
base = peer["fp32"]
print(f"{'engine':<28}{'p50 ms':>9}{'p99 ms':>9}{'cold start ms':>15}{'peak RSS MiB':>14}"
      f"{'p50 / ort fp32':>16}{'cold / ort':>12}{'RSS / ort':>11}")
def row(name, r):
    print(f"{name:<28}{r['p50_ms']:9.3f}{r['p99_ms']:9.3f}{r['cold_start_ms']:15.1f}"
          f"{r['peak_rss_kib'] / 1024:14.1f}{r['p50_ms'] / base['p50_ms']:15.2f}x"
          f"{r['cold_start_ms'] / base['cold_start_ms']:11.2f}x{r['peak_rss_kib'] / base['peak_rss_kib']:10.2f}x")
for r in rows:
    row({"fp32": "scanside fp32 (direct)", "tract": "scanside tract fp32", "int8": "scanside int8 core",
         "qdq": "scanside tract QDQ"}[r["engine"]], r)
row(f"onnxruntime {peer['onnxruntime']} fp32", base)
if "qdq_int8" in peer:
    row("onnxruntime QDQ int8", peer["qdq_int8"])
PY
