#!/usr/bin/env bash
# Cold start and peak memory of two scanside binaries on one bundle, alternated round by round
# so the shared machine's drift hits both alike: `scanside bench` per engine, one process each
# (so peak RSS is that engine's), N timed inferences after the load. Prints every round, then
# per engine and binary the median (min–max) of cold start, peak RSS and p50, the B/A ratio of
# the medians, and the goal of issue 25 for peak RSS (the engine's model file + 32 MiB).
#   A=/tmp/scanside-old B=target/release/scanside BUNDLE=runs/r18/bundle KEY= \
#   ROUNDS=7 N=20 ENGINES=fp32,int8 bash tools/bench/load_ab.sh
# KEY= (empty) for an unsigned bundle. IMAGES: a folder of images (default HAM10000's).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${A:?A=the old scanside binary}" "${B:?B=the new scanside binary}"
BUNDLE=${BUNDLE:-runs/r18/bundle}
KEY=${KEY-runs/demo/keys/demo.pub}
if [ -n "$KEY" ]; then trust=(--public-key "$KEY"); else trust=(--allow-unsigned); fi
ROUNDS=${ROUNDS:-7}; N=${N:-20}; ENGINES=${ENGINES:-fp32,int8}
IMAGES=${IMAGES:-${SCANSIDE_DATA:-../shared/data}/ham10000/images}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mapfile -t files < <(find "$IMAGES" -maxdepth 1 -type f | sort | head -n 16)
echo "machine: $(uname -m), $(grep -m1 -E 'model name|^Model' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
IFS=, read -r -a engines <<<"$ENGINES"
for round in $(seq "$ROUNDS"); do
  order="A B"; [ $((round % 2)) -eq 0 ] && order="B A" # neither binary always goes first
  for side in $order; do
    for engine in "${engines[@]}"; do
      "${!side}" bench --bundle "$BUNDLE" "${trust[@]}" --engine "$engine" --runs "$N" --warmup 2 \
        "${files[@]}" | python3 -c '
import json, sys
e = json.load(sys.stdin)["engines"][0]
print(sys.argv[1], sys.argv[2], e["engine"], e["cold_start_ms"], e["peak_rss_kib"] / 1024, e["p50_ms"])
' "$round" "$side"
    done
  done
done | tee "$work/rounds.txt"
python3 - "$work/rounds.txt" "$BUNDLE" <<'PY'
import json, os, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
manifest = json.load(open(os.path.join(sys.argv[2], "manifest.json")))
files = {"fp32": manifest["model"]["file"], "tract": manifest["model"]["file"]}
if manifest.get("int8"):
    files["int8"] = manifest["int8"]["file"]
    if manifest["int8"].get("qdq_onnx"):
        files["qdq"] = manifest["int8"]["qdq_onnx"]["file"]
def stats(values):
    return statistics.median(values), min(values), max(values)
print(f"{'engine':<7}{'measure':<16}{'A median (min–max)':>26}{'B median (min–max)':>26}{'B / A':>8}")
for engine in dict.fromkeys(r[2] for r in rows):
    for column, name in ((3, "cold start ms"), (4, "peak RSS MiB"), (5, "p50 ms")):
        cells = []
        for side in "AB":
            m, lo, hi = stats([float(r[column]) for r in rows if r[1] == side and r[2] == engine])
            cells.append((m, f"{m:.1f} ({lo:.1f}–{hi:.1f})"))
        print(f"{engine:<7}{name:<16}{cells[0][1]:>26}{cells[1][1]:>26}{cells[1][0] / cells[0][0]:7.2f}x")
    size = os.path.getsize(os.path.join(sys.argv[2], files[engine])) / 2**20
    print(f"{engine:<7}goal: peak RSS ≤ {size:.1f} MiB model file + 32 = {size + 32:.1f} MiB")
PY
