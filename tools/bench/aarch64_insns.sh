#!/usr/bin/env bash
# Guest instructions per multiply-accumulate of each inference engine on aarch64, counted under
# qemu-aarch64 by a small TCG plugin (tools/qemu_insn/insn_count.c). No ARM hardware is needed,
# and none is measured: QEMU's wall time says nothing about a Cortex-A78's, but the number of
# instructions the kernels issue per MAC is the same on any aarch64 CPU (how fast each one
# retires is what only the device can tell: tools/bench/int8.sh with BIN= measures that on one).
#   BUNDLE=runs/r18/bundle KEY=keys/site.pub bash tools/bench/aarch64_insns.sh
# Each engine runs `scanside bench` on one synthetic input twice, with 1 and with 1 + K timed
# inferences (no warm-up); the difference over K is one inference's count, start-up and
# loading excluded. MACS: the model's multiply-accumulates per inference (default: counted from
# BUNDLE/model.onnx's Conv and Gemm nodes with onnx's shape inference).
# BIN: the aarch64 binary (default: the release build, made when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${BUNDLE:-runs/demo/bundle}
KEY=${KEY-runs/demo/keys/demo.pub}
if [ -n "$KEY" ]; then trust=(--public-key "$KEY"); else trust=(--allow-unsigned); fi
K=${K:-2}
ENGINES=${ENGINES:-fp32 tract int8}
target=aarch64-unknown-linux-gnu
BIN=${BIN:-target/$target/release/scanside}
[ -x "$BIN" ] || cargo build --release -p scanside-runtime --target "$target" --bin scanside
plugin=target/qemu_insn/insn_count.so
mkdir -p "$(dirname "$plugin")"
gcc -O2 -Wall -shared -fPIC -o "$plugin" tools/qemu_insn/insn_count.c
if [ -z "${MACS:-}" ]; then
  MACS=$(python3 - "$BUNDLE/model.onnx" <<'PY'
import sys
import onnx
from onnx import numpy_helper, shape_inference
model = shape_inference.infer_shapes(onnx.load(sys.argv[1]))
g = model.graph
dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(g.value_info) + list(g.output) + list(g.input)}
weights = {t.name: numpy_helper.to_array(t).shape for t in g.initializer}
macs = 0
for n in g.node:
    if n.op_type == "Conv":  # outputs × (input channels per group × kernel area)
        o, k = dims[n.output[0]], weights[n.input[1]]
        macs += o[1] * o[2] * o[3] * k[1] * k[2] * k[3]
    elif n.op_type in ("Gemm", "MatMul"):
        k = weights[n.input[1]]
        macs += k[0] * k[1]
print(macs)
PY
)
fi
echo "model: $BUNDLE/model.onnx, $MACS MACs per inference; binary: $BIN"
count() { # engine runs -> guest instructions of the whole process
  local out; out=$(mktemp)
  qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$plugin,out=$out" "$BIN" bench \
    --bundle "$BUNDLE" "${trust[@]}" --engine "$1" --runs "$2" --warmup 0 >/dev/null
  cat "$out"; rm -f "$out"
}
printf '%-8s %16s %12s\n' engine "insns/inference" "insns/MAC"
for engine in $ENGINES; do
  one=$(count "$engine" 1)
  more=$(count "$engine" $((1 + K)))
  python3 - "$engine" "$one" "$more" "$K" "$MACS" <<'PY'
import sys
engine, one, more, k, macs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
per = (more - one) / k
print(f"{engine:<8} {per:16.4g} {per / macs:12.3f}")
PY
done
