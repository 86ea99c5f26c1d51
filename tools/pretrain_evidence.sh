#!/usr/bin/env bash
# Pretraining evidence on HAM10000 at 64 px: SimCLR and MICLe at the same budget against a
# random-init backbone, scored by weighted 20-NN accuracy and balanced accuracy on val and test
# (`scanside-train probe`). Finished runs are kept (delete runs/ev/NAME to redo one).
#   SEEDS="0 1" EPOCHS=3 bash tools/pretrain_evidence.sh
# A larger budget on a GPU (a `--features cuda` build):
#   RUNS=runs/ev-gpu DEVICE=cuda:0 WIDTH=1 BATCH=256 EPOCHS=100 bash tools/pretrain_evidence.sh
set -euo pipefail
cd "$(dirname "$0")/.."
T=${SCANSIDE_TRAIN:-target/release/scanside-train}
DATA=${SCANSIDE_DATA:-../shared/data}/ham10000
SPLIT=runs/data/ham10000-split.json
SEEDS=${SEEDS:-0}
EPOCHS=${EPOCHS:-3}
RUNS=${RUNS:-runs/ev}
DEVICE=${DEVICE:-cpu}
WIDTH=${WIDTH:-0.125}
BATCH=${BATCH:-64}
[ -x "$T" ] || cargo build --release -p scanside-trainer
mkdir -p "$RUNS" runs/data
[ -f "$SPLIT" ] || "$T" data split --data "$DATA" --out "$SPLIT" --seed 0
for seed in $SEEDS; do
  for method in simclr micle; do
    run=$RUNS/$method-s$seed
    [ "$seed" = 0 ] && run=$RUNS/$method   # the first evidence runs' names
    if [ ! -f "$run/backbone.mpk" ]; then
      "$T" --device "$DEVICE" pretrain --split "$SPLIT" --out "$run" --method "$method" \
        --image-size 64 --width "$WIDTH" --batch-size "$BATCH" --epochs "$EPOCHS" \
        --health-every "$(( EPOCHS > 10 ? EPOCHS / 10 : 1 ))" --seed "$seed" > "$run.json" 2> "$run.err"
    fi
    [ -f "$run.probe.json" ] || "$T" --device "$DEVICE" probe --pretrained "$run" > "$run.probe.json"
    [ -f "$RUNS/random-s$seed.probe.json" ] \
      || "$T" --device "$DEVICE" probe --pretrained "$run" --random-init > "$RUNS/random-s$seed.probe.json"
  done
done
python3 - "$RUNS" <<'PY'
import json, pathlib, sys
rows = []
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.probe.json")):
    r = json.loads(p.read_text())
    cells = {name: (acc, bal) for name, _, acc, bal in r["partitions"]}
    rows.append((p.name.removesuffix(".probe.json"), cells))
print(f"{'run':<14} {'val acc':>8} {'val bal':>8} {'test acc':>9} {'test bal':>9}")
for name, c in rows:
    print(f"{name:<14} {c['val'][0]:8.3f} {c['val'][1]:8.3f} {c['test'][0]:9.3f} {c['test'][1]:9.3f}")
PY
