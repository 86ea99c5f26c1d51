#!/usr/bin/env bash
# What the unattended service costs on top of screening: the same N real images through
#   1. `scanside screen --jobs 1`                  (decode + preprocess + infer, JSON on stdout)
#   2. `scanside watch --exit-when-idle`           (+ claim, sha256, atomic result, fsynced audit, move)
#   3. `scanside receive` fed by dcmtk's storescu  (+ DICOM network transfer and durable store)
# and prints images/s for each and the ratios to `screen`.
#
# Usage: tools/bench/service.sh BUNDLE PUBLIC_KEY [N] [IMAGE_DIR]
#   IMAGE_DIR defaults to ../shared/data/ham10000/images (JPEGs); N defaults to 300.
# Needs target/release/scanside and dcmtk (img2dcm, storescu).
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=$1
key=$2
n=${3:-300}
images=${4:-../shared/data/ham10000/images}
bin=target/release/scanside
[ -x "$bin" ] || { echo "build first: cargo build --release -p scanside-runtime --bin scanside" >&2; exit 2; }
command -v storescu >/dev/null || { echo "needs dcmtk (apt install dcmtk)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/jpg" "$work/dcm"
mapfile -t picked < <(ls "$images" | grep -i '\.jpe\?g$' | head -n "$n")
for f in "${picked[@]}"; do cp "$images/$f" "$work/jpg/"; done
count=$(ls "$work/jpg" | wc -l)
# The same pixels as DICOM secondary captures (JPEG baseline inside, as many cameras send).
for f in "$work"/jpg/*; do img2dcm -q "$f" "$work/dcm/$(basename "$f" .jpg).dcm"; done

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):.1f}')"; }

t0=$(now)
"$bin" screen --jobs 1 --bundle "$bundle" --public-key "$key" "$work"/jpg/* > "$work/screen.jsonl"
t1=$(now)
screen_rate=$(rate "$count" "$t0" "$t1")

mkdir -p "$work/in" "$work/out"
cp "$work"/jpg/* "$work/in/"
t0=$(now)
"$bin" watch "$work/in" --out "$work/out" --bundle "$bundle" --public-key "$key" \
  --settle-ms 0 --exit-when-idle > /dev/null
t1=$(now)
watch_rate=$(rate "$count" "$t0" "$t1")
[ "$(ls "$work/out"/*.json | wc -l)" = "$count" ] || { echo "watch: results missing" >&2; exit 1; }

mkdir -p "$work/rin" "$work/rout"
port=$((20000 + RANDOM % 20000))
"$bin" receive --in "$work/rin" --out "$work/rout" --port "$port" --listen 127.0.0.1 \
  --bundle "$bundle" --public-key "$key" --settle-ms 0 --rescan-ms 50 > /dev/null 2> "$work/receive.err" &
pid=$!
for _ in $(seq 100); do echoscu -q 127.0.0.1 "$port" -aec SCANSIDE 2>/dev/null && break; sleep 0.1; done
t0=$(now)
# -xy: propose JPEG baseline, so the instances travel compressed, as cameras send them.
storescu -q -xy -aec SCANSIDE 127.0.0.1 "$port" "$work"/dcm/*.dcm
while [ "$(ls "$work/rout" | grep -c '\.json$')" -lt "$count" ]; do sleep 0.02; done
t1=$(now)
kill -TERM "$pid"; wait "$pid" || true
receive_rate=$(rate "$count" "$t0" "$t1")

python3 - "$count" "$screen_rate" "$watch_rate" "$receive_rate" <<'PY'
import sys
n, screen, watch, receive = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"{n} images (one core each path)")
print(f"screen --jobs 1     {screen:8.1f} images/s  1.00x")
print(f"watch (drop folder) {watch:8.1f} images/s  {watch / screen:.2f}x of screen")
print(f"receive (storescu)  {receive:8.1f} images/s  {receive / screen:.2f}x of screen")
PY
