#!/usr/bin/env bash
# A bundle of the size people deploy, for the inference benchmarks: ResNet-18 (DEPTH=50 for
# ResNet-50) at width 1 with the ImageNet stem at 224 px, trained for a step or two only (its
# speed, memory and instruction counts do not depend on how well it classifies), exported to
# fp32 ONNX, int8 QDQ ONNX and the int8 blob. Unsigned: benchmark with KEY= (--allow-unsigned).
#   OUT=runs/r18 bash tools/bench/resnet_bundle.sh      # ~15 min on 2 cores; OUT/bundle
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/r18}
DEPTH=${DEPTH:-18}
SIZE=${SIZE:-224}
DATA=${DATA:-${SCANSIDE_DATA:-../shared/data}/ham10000}
cargo build --release -p scanside-trainer
t=target/release/scanside-train
mkdir -p "$OUT"
$t data split --data "$DATA" --out "$OUT/split.json" -q
$t pretrain --split "$OUT/split.json" --out "$OUT/pre" --depth "$DEPTH" --width 1 --stem imagenet \
  --image-size "$SIZE" --max-steps 1 --batch-size 8 -q
$t finetune --split "$OUT/split.json" --pretrained "$OUT/pre" --out "$OUT/ft" --max-steps 2 \
  --batch-size 8 --patience 1 -q
$t export --run "$OUT/ft" --out "$OUT/bundle" --targets onnx,onnx-int8,mcu --flash 64M --ram 64M \
  --calibration-images 16 --int8-val-images 32 --ood none --check-images 4 -q >/dev/null
echo "$OUT/bundle"
