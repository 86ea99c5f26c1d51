#!/usr/bin/env bash
# The project's test command (README): formatting, lints, host tests, firmware on QEMU,
# aarch64 cross tests. Prints each step's wall time; stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n--- %s\n' "$*"; STEP_START=$(date +%s); }
done_step() { printf -- '--- ok (%ss)\n' "$(( $(date +%s) - STEP_START ))"; }

# `cargo test` with the harness's summary lines shown and the full log kept in $1. A test that
# cannot run here says why on stderr in a line starting "SKIP"; the harness hides a passing
# test's stderr, so `--show-output` keeps it in the log and the skips are counted and listed.
cargo_test() {
  local log=$1; shift
  local args=("$@")
  if printf '%s\n' "${args[@]}" | grep -qx -- '--'; then args+=(--show-output); else args+=(-- --show-output); fi
  if ! cargo test "${args[@]}" >"$log" 2>&1; then
    grep -E '^(test result:|     Running|error)' "$log" || true
    sed -n '/^failures:$/,$p' "$log" | tail -n 400
    tail -n 60 "$log"
    return 1
  fi
  grep -E '^test result:' "$log" | awk '{p += $4; i += $8} END {print p " tests passed, " i " ignored"}'
  local skips
  skips=$(grep -ciE '^(SKIP|skipped)' "$log" || true)
  echo "$skips skipped checks (a test that could not run something here, and why):"
  grep -iE '^(SKIP|skipped)' "$log" | sort | uniq -c || true
}

step "cargo fmt --check"
cargo fmt --all --check
(cd firmware/device && cargo fmt --check)
done_step

step "the runtime must not depend on burn"
if cargo tree -p scanside-runtime --edges normal,build | grep -q '^.*burn'; then
  echo "scanside-runtime depends on burn:"; cargo tree -p scanside-runtime -i burn || true; exit 1
fi
done_step

step "cargo clippy (workspace, all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings
done_step

step "structure: no import circle in a crate, unsafe only in per-architecture kernels, short functions"
python3 tools/check_structure.py
done_step

step "cargo test --workspace"
fixture=$(mktemp -d)
SCANSIDE_EXPORT_FIXTURE="$fixture/bundle" cargo_test "$fixture/host-tests.log" --workspace
done_step

step "exported ONNX checked by onnx.checker and onnxruntime"
python3 tools/check_onnx.py "$fixture/bundle" "$fixture/bundle/check.json"
done_step

step "DICOM decoder against pydicom: pydicom's test files + pydicom-data, and the generated corpus"
# Every file's outcome is held to its target in tools/dicom_corpus_expected.tsv: a file that
# drops from "equal" to an error, a truncated file that decodes, a panic or a crash fails.
python3 tools/dicom_corpus_make.py "$fixture/dicom-generated" >/dev/null
python3 tools/dicom_corpus.py --scanside target/debug/scanside --out "$fixture/dicom-corpus.md" \
  pydicom generated="$fixture/dicom-generated" | tail -n 4
done_step

step "firmware core builds for thumbv7em-none-eabihf (no_std, with defmt)"
cargo build -p scanside-int8 --target thumbv7em-none-eabihf --features defmt
done_step

step "firmware on QEMU mps2-an386: golden output and status"
(
  cd firmware/device
  cargo clippy --release -- -D warnings
  log=$(mktemp)
  cargo run --release 2>/dev/null | tee "$log"
  while IFS= read -r line; do
    grep -qF -- "$line" "$log" || { echo "firmware output lacks: $line"; exit 1; }
  done < expected.log
  echo "firmware output matches expected.log"
  # The exported test bundle's int8 blob with vectors from the host's int8 engine: the
  # firmware must reproduce every output bit for bit.
  ../../target/debug/scanside mcu-vectors --bundle "$fixture/bundle" --public-key "$fixture/bundle.pub" \
    --out "$fixture/golden" "$fixture/bundle/sample.jpg" >/dev/null
  SCANSIDE_GOLDEN="$fixture/golden" cargo run --release 2>/dev/null | tee "$log" | grep -v ' layer '
  grep -q "PASS: golden model bit-exact with the host int8 engine" "$log" \
    || { echo "the firmware did not reproduce the host's int8 outputs"; exit 1; }
  # Built first, so a build error is not mistaken for the failure exit; QEMU's timeout (124)
  # or a crash of the runner are neither.
  cargo build --release --features panic-demo 2>/dev/null
  status=0
  QEMU_TIMEOUT=60 cargo run --release --features panic-demo >"$log" 2>&1 || status=$?
  if [ "$status" -ne 1 ] || ! grep -q "panic-demo: deliberate panic" "$log"; then
    echo "a panicking firmware must log its panic and exit QEMU with status 1, got $status:"
    tail -n 20 "$log"; exit 1
  fi
  echo "a panicking firmware logs the panic and exits QEMU with status 1 (no hang)"
)
done_step

step "aarch64: runtime and core tests under qemu-aarch64, then the binary screens like x86"
# The whole suite, CLI and service tests included: they start the aarch64 `scanside` through
# qemu-aarch64 (SCANSIDE_TEST_RUNNER; without binfmt_misc the emulated tests could not exec it).
SCANSIDE_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
  cargo_test "$fixture/aarch64-tests.log" -p scanside-runtime -p scanside-int8 --target aarch64-unknown-linux-gnu
cargo build -p scanside-runtime --target aarch64-unknown-linux-gnu --bin scanside
native=$(target/debug/scanside screen --bundle "$fixture/bundle" --public-key "$fixture/bundle.pub" \
  "$fixture/bundle/sample.jpg")
cross=$(qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/scanside \
  screen --bundle "$fixture/bundle" --public-key "$fixture/bundle.pub" "$fixture/bundle/sample.jpg")
python3 - "$native" "$cross" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
diff = max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"])
print(f"x86-64 vs aarch64 (qemu): top class {a['top_class']} / {b['top_class']}, max |prob diff| {diff:.2e}")
sys.exit(0 if a["top_class"] == b["top_class"] and diff <= 1e-5 and a["model_verified"] and b["model_verified"] else 1)
PY
# fp32 runs on the direct engine's NEON kernels there, not on tract (bench names a fall-back).
note=$(qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/scanside \
  bench --engine fp32 --runs 1 --warmup 0 --bundle "$fixture/bundle" --public-key "$fixture/bundle.pub" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["engines"][0].get("engine_note", ""))')
[ -z "$note" ] || { echo "aarch64 fp32 fell back to tract: $note"; exit 1; }
echo "aarch64 fp32 ran on the direct engine (NEON)"
# The int8 engine is integer arithmetic: identical logits on both architectures.
native=$(target/debug/scanside screen --engine int8 --bundle "$fixture/bundle" \
  --public-key "$fixture/bundle.pub" "$fixture/bundle/sample.jpg")
cross=$(qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/scanside \
  screen --engine int8 --bundle "$fixture/bundle" --public-key "$fixture/bundle.pub" "$fixture/bundle/sample.jpg")
python3 - "$native" "$cross" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print(f"int8 x86-64 vs aarch64 (qemu): logits {a['logits']} / {b['logits']}")
sys.exit(0 if a["logits"] == b["logits"] and a["engine"] == b["engine"] == "int8" else 1)
PY
# The README promises glibc >= 2.35 on the device (JetPack 6): a newer symbol breaks that.
newest=$(aarch64-linux-gnu-objdump -T target/aarch64-unknown-linux-gnu/debug/scanside \
  | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
promised=$(grep -o 'glibc ≥ [0-9.]*' README.md | head -n 1 | grep -o '[0-9][0-9.]*')
echo "newest glibc symbol version the aarch64 binary needs: $newest (README promises $promised)"
if [ "$(printf '%s\n' "GLIBC_$promised" "$newest" | sort -V | tail -n 1)" != "GLIBC_$promised" ]; then
  echo "the aarch64 binary needs $newest, newer than the README's glibc $promised"; exit 1
fi
done_step

step "release: the split measurements behind the tolerances, then the demo on the shared data"
# The two measurements are slow in debug builds (thousands of splits), so they run here.
cargo_test "$fixture/release-tests.log" --release -p scanside-trainer --lib -- --ignored
data="${SCANSIDE_DATA:-../shared/data}/ham10000"
if [ -f "$data/metadata.csv" ]; then
  out="$fixture/demo"
  SCANSIDE_DEMO_OUT="$out" bash tools/demo.sh --data "$data" | tee "$fixture/demo.txt"
  python3 tools/check_demo.py "$out/summary.json" "$fixture/demo.txt"
else
  echo "SKIPPED the demo: no HAM10000 at $data (set SCANSIDE_DATA)"
fi
rm -rf "$fixture"
done_step

echo
echo "all checks passed"
