#!/usr/bin/env bash
# Exports the ONNX classifiers a user would bring and screens them: the measurement behind
# docs/import.md. Writes the models with tools/onnx_models.py (PYTHON with torch and
# torchvision exports them with torch.onnx.export; without, the onnx helper API writes them),
# exports each with `scanside-train export --onnx` (calibrated on DATA, compared with fp32 on
# DATA's other images, TensorRT profile), screens one image on every engine with
# `scanside screen`, and prints one markdown table row per model.
#
#   tools/bench/import.sh OUT DATA [EXPORTER]     e.g. runs/import ../shared/data/ham10000
# Environment: PYTHON (python3), BIN (target/debug), SIZE (64), MODELS, CLASSES (HAM10000's).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT}; data=${2:?DATA}; exporter=${3:-torchscript}
PYTHON=${PYTHON:-python3}; BIN=${BIN:-target/debug}; SIZE=${SIZE:-64}
MODELS=${MODELS:-resnet18,resnet50,mobilenet_v2,mobilenet_v3_small}
CLASSES=${CLASSES:-akiec,bcc,bkl,df,mel,nv,vasc}
mkdir -p "$out"
"$PYTHON" tools/onnx_models.py --out "$out/models" --size "$SIZE" --classes "$(tr ',' '\n' <<<"$CLASSES" | wc -l)" \
  --models "$MODELS" --exporter "$exporter" 2>/dev/null > "$out/models.jsonl"
[ -f "$out/site.key" ] || "$BIN/scanside-train" keygen --out "$out/site" >/dev/null
image=$(find "$data" -name '*.jpg' -o -name '*.png' | sort | head -n 1 || true)  # head closes the pipe early
for model in ${MODELS//,/ }; do
  start=$(date +%s)
  rc=0
  "$BIN/scanside-train" export --onnx "$out/models/$model.onnx" --classes "$CLASSES" --preprocess imagenet \
    --calibration-data "$data" --calibration-images 64 --int8-val-images 64 \
    --targets onnx,mcu,tensorrt --out "$out/$model" --sign-key "$out/site.key" \
    > "$out/$model.export.json" 2> "$out/$model.export.err" || rc=$?
  echo $(( $(date +%s) - start )) > "$out/$model.seconds"
  echo "$rc" > "$out/$model.rc"
  for engine in fp32 tract int8 qdq; do
    "$BIN/scanside" screen --engine "$engine" --bundle "$out/$model" --public-key "$out/site.pub" "$image" \
      > "$out/$model.screen-$engine.json" 2> "$out/$model.screen-$engine.err" || true
  done
done
"$PYTHON" - "$out" "$MODELS" <<'PY'
import json, struct, sys, os
out, models = sys.argv[1], sys.argv[2].split(",")
sources = {json.loads(l)["model"]: json.loads(l) for l in open(f"{out}/models.jsonl") if l.startswith("{")}
print("| model | written by | ONNX nodes → layers | export | import vs tract | int8 method | fp32 / int8 top-1 | agreement | fp32 / int8 macro AUC | blob / arena | screened (engines) | int8 vs QDQ (tract) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
    src = sources[m]
    rc = int(open(f"{out}/{m}.rc").read())
    secs = float(open(f"{out}/{m}.seconds").read())
    screens = {}
    for e in ("fp32", "tract", "int8", "qdq"):
        try:
            screens[e] = json.load(open(f"{out}/{m}.screen-{e}.json"))
        except (ValueError, OSError):
            pass
    engines = ", ".join(f"{e} {s['top_class']}" for e, s in screens.items())
    if rc != 0:
        err = open(f"{out}/{m}.export.err").read().strip().splitlines()[-1]
        print(f"| {m} | {src['source']} | {src['nodes']} → – | exit {rc} ({secs:.0f} s) | – | {err[err.find('no kernel'):][:150]} | – | – | – | – | {engines} | – |")
        continue
    r = json.load(open(f"{out}/{m}.export.json"))
    best = r["int8"]["methods"][0]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    f3 = lambda v: "–" if v is None else f"{v:.3f}"
    steps = "–"
    if "int8" in screens and "qdq" in screens:
        blob = open(f"{out}/{m}/model.i8", "rb").read()
        (oi,) = struct.unpack_from("<H", blob, 34)
        (step,) = struct.unpack_from("<f", blob, 40 + 16 * oi + 12)
        d = max(abs(a - b) for a, b in zip(screens["int8"]["logits"], screens["qdq"]["logits"]))
        steps = f"{d / step:.1f} steps"
    print(f"| {m} | {src['source']} | {r['onnx_nodes']} → {r['graph_layers']} | {secs:.0f} s | {r['import_max_abs_logit_diff']:.1e} | "
          f"{best['method']} | {pct(best['fp32_top1'])} / {pct(best['int8_top1'])} | {pct(best['top1_agreement'])} | "
          f"{f3(best['fp32_macro_auc'])} / {f3(best['int8_macro_auc'])} | {r['int8']['blob_bytes'] / 1e6:.1f} MB / {r['int8']['arena_bytes'] // 1024} KiB | {engines} | {steps} |")
PY
