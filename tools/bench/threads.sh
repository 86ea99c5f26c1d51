#!/usr/bin/env bash
# Threads within one inference: every engine at 1, 2, … threads against onnxruntime with the same
# intra_op_num_threads, measured in the same round and alternated round by round (thread counts
# and engines in a different order each round) so the shared machine's drift hits all alike.
# `scanside bench --threads T` per engine (one process each); onnxruntime through
# tools/bench/onnxruntime_peer.py (fp32 and QDQ int8, one process each). Prints every round, then
# per engine and thread count the median (min–max) p50, the median of the per-round ratios to
# onnxruntime fp32 at the same thread count, and the speed-up over one thread.
#   BUNDLE=runs/r18/bundle KEY= ROUNDS=5 N=30 THREADS="1 2" bash tools/bench/threads.sh
# KEY= (empty) for an unsigned bundle. BIN: the scanside binary (default target/release/scanside).
# On a Jetson (all its cores: THREADS="1 2 4 6"), with the cross-built binary and
# `pip install onnxruntime numpy`: BIN=./scanside BUNDLE=bundle KEY=site.pub bash tools/bench/threads.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${BUNDLE:-runs/r18/bundle}
KEY=${KEY-runs/demo/keys/demo.pub}
if [ -n "$KEY" ]; then trust=(--public-key "$KEY"); else trust=(--allow-unsigned); fi
ROUNDS=${ROUNDS:-5}; N=${N:-30}; THREADS=${THREADS:-"1 $(nproc)"}
ENGINES=${ENGINES:-fp32,tract,int8}
IMAGES=${IMAGES:-${SCANSIDE_DATA:-../shared/data}/ham10000/images}
BIN=${BIN:-target/release/scanside}
[ -x "$BIN" ] || cargo build --release -p scanside-runtime
python3 -c 'import onnxruntime, numpy' 2>/dev/null \
  || { echo "threads.sh: the peer needs onnxruntime and numpy (pip install onnxruntime numpy)" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mapfile -t files < <(find "$IMAGES" -maxdepth 1 -type f | sort | head -n 16)
echo "machine: $(uname -m), $(grep -m1 -E 'model name|^Model' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
read -r -a counts <<<"$THREADS"
IFS=, read -r -a engines <<<"$ENGINES,ort"
for round in $(seq "$ROUNDS"); do
  order=("${counts[@]}"); sides=("${engines[@]}")
  if [ $((round % 2)) -eq 0 ]; then # neither the thread counts nor the engines always go first
    mapfile -t order < <(printf '%s\n' "${counts[@]}" | tac)
    mapfile -t sides < <(printf '%s\n' "${engines[@]}" | tac)
  fi
  for t in "${order[@]}"; do
    for engine in "${sides[@]}"; do
      if [ "$engine" = ort ]; then
        python3 tools/bench/onnxruntime_peer.py "$BUNDLE" "$N" "$t" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(sys.argv[1], sys.argv[2], "ort_fp32", r["fp32"]["p50_ms"])
if "qdq_int8" in r:
    print(sys.argv[1], sys.argv[2], "ort_qdq", r["qdq_int8"]["p50_ms"])
' "$round" "$t"
      else
        "$BIN" bench --bundle "$BUNDLE" "${trust[@]}" --engine "$engine" --runs "$N" --warmup 3 \
          --threads "$t" "${files[@]}" | python3 -c '
import json, sys
e = json.load(sys.stdin)["engines"][0]
print(sys.argv[1], sys.argv[2], e["engine"], e["p50_ms"])
' "$round" "$t"
      fi
    done
  done
done | tee "$work/rounds.txt"
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
p50 = {(r[0], int(r[1]), r[2]): float(r[3]) for r in rows}
rounds = sorted({r[0] for r in rows}, key=int)
counts = sorted({int(r[1]) for r in rows})
names = list(dict.fromkeys(r[2] for r in rows))
def spread(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"
print(f"{'engine':<10}{'threads':>8}{'p50 ms median (min–max)':>28}"
      f"{'/ ort fp32 (min–max)':>24}{'speed-up vs 1 (min–max)':>26}")
for name in names:
    for t in counts:
        here = [p50[(r, t, name)] for r in rounds if (r, t, name) in p50]
        vs_ort = [p50[(r, t, name)] / p50[(r, t, "ort_fp32")] for r in rounds
                  if (r, t, name) in p50 and (r, t, "ort_fp32") in p50]
        gain = [p50[(r, counts[0], name)] / p50[(r, t, name)] for r in rounds
                if (r, t, name) in p50 and (r, counts[0], name) in p50]
        print(f"{name:<10}{t:>8}{spread(here):>28}{spread(vs_ort) + 'x':>24}{spread(gain) + 'x':>26}")
PY
