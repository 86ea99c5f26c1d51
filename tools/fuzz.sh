#!/usr/bin/env bash
# Runs every fuzz target (runtime: decode, jpegls, manifest, command, pdu; int8 core: blob,
# vectors) for RUNS executions each (default 10 million), one after another, each on one core,
# and prints a line per target: executions, seconds, coverage, corpus size, and whether it found
# a crash. Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept its nightly flags; `-s none`: no sanitizer runtime (the code under test is safe
# Rust outside the kernels; panics, overflows — debug assertions are on — and hangs are caught).
#   RUNS=10000000 bash tools/fuzz.sh [TARGET...]      logs: target/fuzz-logs/TARGET.log
# MAX_TIME=SECONDS stops each target after that long instead (whichever comes first).
# UNIT_TIMEOUT=SECONDS (default 30) is libFuzzer's wall-clock limit per input: on a shared,
# busy machine a fuzzer at low priority waits for the CPU, and an instrumented build decoding a
# 30-megapixel JPEG (0.9 s in the release binary) passed 10 s that way.
# FUZZ_FLAGS adds libFuzzer flags, e.g. FUZZ_FLAGS=-max_len=4096 (shorter inputs: many more
# executions per second for the decoders, at the cost of large images, which the corpus tests
# cover).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10000000}
limits=(-runs="$RUNS")
[ -z "${MAX_TIME:-}" ] || limits+=(-max_total_time="$MAX_TIME")
# shellcheck disable=SC2206 # word splitting of the extra flags is intended
[ -z "${FUZZ_FLAGS:-}" ] || limits+=($FUZZ_FLAGS)
export RUSTC_BOOTSTRAP=1
logs=$PWD/target/fuzz-logs
mkdir -p "$logs"
seeds=$(mktemp -d); trap 'rm -rf "$seeds"' EXIT
generated="$seeds/generated"
python3 tools/dicom_corpus_make.py "$generated" >/dev/null
python3 tools/fuzz_seeds.py "$seeds/runtime" "$generated" >/dev/null
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode jpegls manifest command pdu blob vectors)
for t in "${targets[@]}"; do
  case $t in
    blob|vectors) dir=firmware/fuzz; seed=seeds ;;
    *) dir=runtime/fuzz; seed="$seeds/runtime/$t" ;;
  esac
  mkdir -p "$dir/corpus/$t"
  status=0
  (cd "$dir" && cargo fuzz run --fuzz-dir . "$t" -s none "corpus/$t" "$seed" -- "${limits[@]}" \
    -rss_limit_mb=2048 -timeout="${UNIT_TIMEOUT:-30}" -print_final_stats=1) >"$logs/$t.log" 2>&1 || status=$?
  runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second|number_of_executed_units: *[0-9]+' "$logs/$t.log" | tail -n 1 || true)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$logs/$t.log" | tail -n 1 || true)
  if [ "$status" -eq 0 ]; then verdict="no crash"
  elif grep -aq "error: could not compile" "$logs/$t.log"; then verdict="BUILD FAILED (see $logs/$t.log)"
  # Ctrl-C (or kill -INT) stops libFuzzer with its interrupt exit code: not a finding.
  elif grep -aq "libFuzzer: run interrupted" "$logs/$t.log"; then verdict="stopped early (interrupted), no crash"
  else verdict="FOUND A CRASH (exit $status; see $logs/$t.log)"; fi
  echo "$t: ${runs:-no final stats}; $cov; $verdict"
done
