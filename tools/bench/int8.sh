#!/usr/bin/env bash
# Host inference latency of a bundle's models, same run: tract fp32 (`--engine fp32`) and the
# int8 core (`--engine int8`) on real images (p50/mean of the `infer_ms` that `scanside screen`
# prints per image), and the onnxruntime peer (fp32 ONNX and the int8 QDQ twin, batch 1, one
# thread) with the ratios.
#   BUNDLE=runs/demo/bundle KEY=runs/demo/keys/demo.pub N=300 bash tools/bench/int8.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${BUNDLE:-runs/demo/bundle}
KEY=${KEY:-runs/demo/keys/demo.pub}
N=${N:-300}
IMAGES=${IMAGES:-${SCANSIDE_DATA:-../shared/data}/ham10000/images}
[ -x target/release/scanside ] || cargo build --release -p scanside-runtime
mapfile -t files < <(find "$IMAGES" -maxdepth 1 -type f | sort | head -n "$N")
for engine in fp32 int8; do
  target/release/scanside screen --bundle "$BUNDLE" --public-key "$KEY" --engine "$engine" "${files[@]}" \
    > "/tmp/scanside-bench-$engine.jsonl"
done
ort=$(python3 tools/bench/onnxruntime_peer.py "$BUNDLE" "$N")
python3 - "$ort" <<'PY'
import json, sys
peer = json.loads(sys.argv[1])
def stats(engine):
    t = sorted(json.loads(l)["timings"]["infer_ms"] for l in open(f"/tmp/scanside-bench-{engine}.jsonl"))
    return len(t), t[len(t) // 2], sum(t) / len(t)
(n, p50_f, mean_f), (_, p50_i, mean_i) = stats("fp32"), stats("int8")
print(f"{n} images; tract fp32 p50 {p50_f:.3f} ms (mean {mean_f:.3f}); int8 core p50 {p50_i:.3f} ms (mean {mean_i:.3f})")
print(f"int8 / fp32 latency: {p50_i / p50_f:.2f}x (p50)")
ort_f = peer["fp32_p50_ms"]
line = f"onnxruntime {peer['onnxruntime']}: fp32 p50 {ort_f:.3f} ms"
if "qdq_int8_p50_ms" in peer:
    line += f", QDQ int8 p50 {peer['qdq_int8_p50_ms']:.3f} ms"
print(line)
print(f"ratios vs onnxruntime fp32: tract fp32 {p50_f / ort_f:.2f}x, scanside int8 {p50_i / ort_f:.2f}x"
      + (f", onnxruntime QDQ {peer['qdq_int8_p50_ms'] / ort_f:.2f}x" if "qdq_int8_p50_ms" in peer else ""))
PY
