#!/usr/bin/env bash
# The main job (README): builds the trainer and the runtime (release), then runs the demo:
# split, SimCLR pretraining, fine-tuning, evaluation, export and runtime screening on real data.
# Extra arguments go to `scanside-train demo` (e.g. --data DIR, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p scanside-trainer -p scanside-runtime
exec target/release/scanside-train demo --out "${SCANSIDE_DEMO_OUT:-runs/demo}" "$@"
