#!/usr/bin/env python3
"""Compares scanside's DICOM decoder with pydicom (+ pylibjpeg plugins) and checks the outcome
of every file against a committed list of expectations.

Corpora (positional arguments; default: `pydicom`):
  pydicom          every file pydicom's test-data API lists: pydicom's bundled test files plus the
                   PyPI package `pydicom-data`; files are named pydicom/<path in its data folder>
  LABEL=DIR        every file under DIR, named LABEL/<path under DIR> (e.g. generated=$tmp/gen for
                   the output of tools/dicom_corpus_make.py)
  DIR              the same with LABEL = the folder's name

For each file, pydicom decodes the first frame and applies the modality LUT (monochrome) or the
palette (PALETTE COLOR); YBR is converted to RGB. `scanside inspect --values` writes the same
quantity from our decoder. Each file gets one outcome:

  equal            identical values
  within tol.      lossless: max |diff| <= 0.1 % of pydicom's value range (float rescale
                   rounding); lossy codecs (JPEG baseline/extended/progressive, JPEG 2000 and
                   HTJ2K lossy): max |diff| <= 3 % and mean |diff| <= 0.5 % of the range (IDCT
                   and upsampling differ between libjpeg and jpeg-decoder)
  clear error      scanside refuses with an error message; pydicom decodes it
  both refuse      neither decodes it (no pixel data, or broken)
  only scanside    pydicom fails where scanside decodes
  DIFFERS          decoded, but not the same image (a bug to chase)
  PANIC            scanside panicked
  CRASH            scanside died from a signal (stack overflow, abort, segfault)
  TIMEOUT          scanside ran longer than --timeout seconds

The expectations file (tools/dicom_corpus_expected.tsv; --expect, may be given more than once)
holds one row per file: `file<TAB>target<TAB>baseline<TAB>note`. `target` is what a correct
decoder gives; `baseline` what the runtime gave when the row was written (informational; the
`--against baseline` ratchet). A target accepts these outcomes:

  equal            equal
  within tol.      equal, within tol.
  only scanside    only scanside, equal, within tol. (pydicom learned to decode it)
  clear error      clear error, both refuse       (must refuse: truncated/corrupt input is never
  both refuse      both refuse, clear error        filled in; decoding it fails the run)
  decode or refuse equal, within tol., only scanside, clear error, both refuse
  DIFFERS          DIFFERS, within tol., equal    (only with a note tracing the difference,
                                                   e.g. to a pydicom bug)

The run fails (exit 1) on any PANIC, CRASH or TIMEOUT; on an outcome its row does not accept
(a file dropping from "equal" to "clear error", a truncated file decoded); on a DIFFERS or VOI
difference without a note; on a file with no row, and on a row whose file is missing from a corpus
that was run. Every failure is listed. --report-only writes the same report and exits 0: the
worklist of a decoder that is not there yet.

Usage:
  python3 tools/dicom_corpus.py --scanside target/release/scanside [--out docs/dicom-corpus.md]
  python3 tools/dicom_corpus_make.py "$tmp/gen"
  python3 tools/dicom_corpus.py --scanside target/release/scanside pydicom generated="$tmp/gen"
Set-up: pip install pydicom pydicom-data pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle
"""
import argparse
import collections
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

try:
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
except ImportError as e:  # pragma: no cover
    sys.exit(f"dicom_corpus: {e}; pip install pydicom pydicom-data pylibjpeg "
             "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_EXPECT = os.path.join(HERE, "dicom_corpus_expected.tsv")

# Max |difference| of the 0..1 VOI output that counts as agreeing.
VOI_TOLERANCE = 1e-3

ORDER = ["equal", "within tol.", "clear error", "both refuse", "only scanside", "DIFFERS",
         "PANIC", "CRASH", "TIMEOUT"]
NEVER = {"PANIC", "CRASH", "TIMEOUT"}
ACCEPTS = {
    "equal": {"equal"},
    "within tol.": {"equal", "within tol."},
    "only scanside": {"only scanside", "equal", "within tol."},
    "clear error": {"clear error", "both refuse"},
    "both refuse": {"both refuse", "clear error"},
    "decode or refuse": {"equal", "within tol.", "only scanside", "clear error", "both refuse"},
    "DIFFERS": {"DIFFERS", "within tol.", "equal"},
}
LOSSY = ("JPEG Baseline", "JPEG Extended", "JPEG Full Progression", "JPEG Spectral Selection",
         "JPEG Successive Approximation")
LOSSY_EXACT = {"JPEG 2000 Image Compression", "High-Throughput JPEG 2000 Image Compression",
               "JPEG 2000 Part 2 Multi-component Image Compression"}


def windowed_reference(ds, arr):
    """pydicom's VOI output for a monochrome frame on a 0..1 scale (VOI LUT preferred to the
    window, as our `file` policy does), or None when the file has neither."""
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        return apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float64) / (2 ** bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # apply_windowing maps onto the stored range (after rescale); bring that to 0..1.
    bits = int(ds.BitsStored)
    lo, hi = (0, 2 ** bits - 1) if int(ds.PixelRepresentation) == 0 \
        else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        lo = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hi = hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = apply_voi_lut(arr.astype(np.float64), ds, prefer_lut=True)
    return (out - lo) / (hi - lo)


def header(path):
    """Transfer syntax name, photometric interpretation and bits (allocated/stored), for the
    table and the worklist; '?' where pydicom cannot read them."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001
        return "?", "?", "?"
    try:
        ts = str(ds.file_meta.TransferSyntaxUID.name)
    except Exception:  # noqa: BLE001
        ts = "?"
    try:
        pi = str(ds.get("PhotometricInterpretation", "") or "-")
        bits = f"{ds.get('BitsAllocated', '-')}/{ds.get('BitsStored', '-')}"
        if str(ds.get("SamplesPerPixel", 1) or 1) not in ("1", "1.0"):
            bits += f"x{ds.SamplesPerPixel}"
    except Exception:  # noqa: BLE001 - a malformed value: show what can be shown
        pi, bits = "?", "?"
    return ts, pi, bits


def reference(path):
    """pydicom's first frame before windowing, or (None, reason), and its VOI output (None
    when pydicom has none to give)."""
    try:
        return _reference(path)
    except Exception as e:  # noqa: BLE001 - pydicom tripped over a malformed attribute
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}", None


def _reference(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any failure is a row in the table
        return None, f"unreadable: {type(e).__name__}", None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None, "no pixel data", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}", None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    pi = str(getattr(ds, "PhotometricInterpretation", ""))
    try:
        if pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        elif spp == 1:
            arr = apply_modality_lut(arr, ds)
            # Enhanced objects carry rescale in the functional groups (PS3.3 C.7.6.16.2.9), the
            # first frame's own group before the shared one; apply_modality_lut reads neither.
            if "RescaleIntercept" not in ds:
                for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
                    seq = getattr(ds, groups, None)
                    if seq and "PixelValueTransformationSequence" in seq[0]:
                        t = seq[0].PixelValueTransformationSequence[0]
                        arr = arr * float(t.RescaleSlope) + float(t.RescaleIntercept)
                        break
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}", None
    windowed = None
    if spp == 1 and pi in ("MONOCHROME1", "MONOCHROME2"):
        try:
            windowed = windowed_reference(ds, arr)
        except Exception:  # noqa: BLE001 - pydicom cannot window it: nothing to compare
            windowed = None
    return np.asarray(arr, dtype=np.float64), None, windowed


def ours(scanside, path, out_dir, timeout):
    """scanside's values, or (None, message, None); the message starts with PANIC, CRASH or
    TIMEOUT when the process did not end with an error of its own."""
    try:
        proc = subprocess.run([scanside, "inspect", "--values", out_dir, path],
                              capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return None, f"TIMEOUT: no answer within {timeout} s", None
    if proc.returncode != 0:
        stderr = proc.stderr.replace(path, os.path.basename(path))
        lines = [l for l in stderr.splitlines() if "error:" in l or "panicked" in l]
        if "panicked" in stderr:
            # The panic line and the message that follows it (the message may be on the next line).
            at = next(i for i, l in enumerate(stderr.splitlines()) if "panicked" in l)
            msg = " ".join(l.strip() for l in stderr.splitlines()[at:at + 2])
            return None, "PANIC: " + msg[:300], None
        if proc.returncode < 0 or "overflowed its stack" in stderr or "fatal runtime error" in stderr:
            tail = " ".join(l.strip() for l in stderr.strip().splitlines()[-2:])
            return None, f"CRASH: signal {-proc.returncode}: {tail[:300]}", None
        message = lines[0].replace("scanside: error: ", "") if lines else stderr.strip()[-200:]
        return None, message, None
    report = json.loads(proc.stdout.splitlines()[0])
    dicom = report.get("dicom")
    if not dicom:
        return None, "not read as DICOM", None
    h, w, c = dicom["dims"]
    shape = (h, w) if c == 1 else (h, w, c)
    values = np.fromfile(dicom["values"], dtype="<f4").astype(np.float64).reshape(shape)
    windowed = np.fromfile(dicom["windowed"], dtype="<f4").astype(np.float64).reshape(shape)
    if report["source"].get("photometric") == "MONOCHROME1":
        windowed = 1.0 - windowed  # ours is inverted for the model; pydicom's VOI is not
    return values, None, (windowed, report["source"].get("windowing", ""))


def corpus_files(specs):
    """(name, path) for every file of the corpora named on the command line, and the labels."""
    out, labels = [], []
    for spec in specs:
        if spec == "pydicom":
            labels.append("pydicom")
            for path in sorted(set(get_testdata_files())):
                if not_an_image(path):
                    continue
                root = path.split(os.sep + "test_files" + os.sep)[-1] if "test_files" in path \
                    else os.path.basename(path)
                if os.sep + "data_store" + os.sep in path:
                    root = path.split(os.sep + "data_store" + os.sep + "data" + os.sep)[-1]
                out.append(("pydicom/" + root, path))
            continue
        label, _, folder = spec.rpartition("=")
        folder = os.path.abspath(folder)
        label = label or os.path.basename(folder.rstrip(os.sep))
        if not os.path.isdir(folder):
            sys.exit(f"dicom_corpus: {folder}: not a folder")
        labels.append(label)
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in sorted(names):
                if n.startswith(".") or n.endswith((".md", ".tsv")):
                    continue
                path = os.path.join(root, n)
                if not_an_image(path):
                    continue
                out.append((label + "/" + os.path.relpath(path, folder), path))
    return out, labels


def not_an_image(path):
    """Folders (pydicom lists some among its test files) and media directories named DICOMDIR:
    scanside's front doors walk and follow those (runtime/src/inputs.rs, tested there); this
    comparison is of single image files."""
    return os.path.isdir(path) or os.path.basename(path).upper() == "DICOMDIR"


def read_expectations(paths):
    rows = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip() or line.startswith("#"):
                    continue
                cols = line.split("\t") + ["", "", ""]
                name, target, baseline, note = cols[0], cols[1], cols[2], cols[3]
                if target not in ACCEPTS:
                    sys.exit(f"{path}:{n}: unknown target {target!r} (one of {sorted(ACCEPTS)})")
                if target == "DIFFERS" and not note:
                    sys.exit(f"{path}:{n}: a DIFFERS target needs a note tracing the difference")
                rows[name] = {"target": target, "baseline": baseline, "note": note}
    return rows


def compare(scanside, name, path, tmp, timeout):
    ref, ref_err, ref_windowed = reference(path)
    got, our_err, got_windowed = ours(scanside, path, tmp, timeout)
    # The VOI step (window or VOI LUT), where both decoded and pydicom has one to give.
    voi = None
    if ref_windowed is not None and got_windowed is not None \
            and ref_windowed.shape == got_windowed[0].shape:
        voi_diff = float(np.abs(ref_windowed - got_windowed[0]).max())
        kind = "VOI LUT" if got_windowed[1].startswith("VOI LUT") else "window"
        voi = (kind, voi_diff)
    ts, pi, bits = header(path)
    if our_err and our_err.split(":")[0] in NEVER:
        verdict, detail = our_err.split(":")[0], our_err
    elif ref is None and got is None:
        verdict, detail = "both refuse", f"pydicom: {ref_err}; scanside: {our_err}"
    elif ref is None:
        verdict, detail = "only scanside", f"pydicom: {ref_err}"
    elif got is None:
        verdict, detail = "clear error", our_err
    elif ref.shape != got.shape:
        verdict, detail = "DIFFERS", f"shape {got.shape} vs pydicom {ref.shape}"
    else:
        err = np.abs(ref - got)
        diff = float(err.max()) if ref.size else 0.0
        mean = float(err.mean()) if ref.size else 0.0
        span = float(np.ptp(ref)) if ref.size else 0.0
        span = span or 1.0
        lossy = ts.startswith(LOSSY) or ts in LOSSY_EXACT
        ok = (diff <= 0.03 * span and mean <= 0.005 * span) if lossy else diff <= 0.001 * span
        detail = f"max diff {diff:g}, mean {mean:.3g}, range {span:g}"
        if diff == 0.0:
            verdict, detail = "equal", ""
        elif ok:
            verdict = "within tol."
        else:
            verdict = "DIFFERS"
    pydicom_gives = f"refuses: {ref_err}" if ref is None else \
        f"{'x'.join(map(str, ref.shape))} values {ref.min():g}..{ref.max():g}" if ref.size else "empty"
    return {"file": name, "path": path, "transfer_syntax": ts, "photometric": pi, "bits": bits,
            "outcome": verdict, "detail": detail.replace("|", "/"), "voi": voi,
            "scanside_error": our_err, "pydicom": pydicom_gives,
            "command": f"scanside inspect --values /tmp/v {shlex.quote(path)}"}


def judge(results, expect, labels, against):
    """Failures: (file, why) for every file whose outcome its row does not accept."""
    failures = []
    seen = set()
    for r in results:
        name = r["file"]
        seen.add(name)
        row = expect.get(name)
        r["target"] = row["target"] if row else ""
        r["baseline"] = row["baseline"] if row else ""
        r["note"] = row["note"] if row else ""
        if r["outcome"] in NEVER:
            failures.append((name, r["detail"]))
            continue
        if row is None:
            failures.append((name, f"no expectation row (outcome {r['outcome']}: {r['detail']})"))
            continue
        want = row["target"] if against == "target" else (row["baseline"] or row["target"])
        if r["outcome"] not in ACCEPTS.get(want, {want}):
            what = "decoded a file that must be refused" if want in ("clear error", "both refuse") \
                and r["outcome"] not in ACCEPTS["clear error"] else "below its expectation"
            failures.append((name, f"{what}: expected {want}, got {r['outcome']}"
                                   f"{': ' + r['detail'] if r['detail'] else ''}"))
        elif r["outcome"] == "DIFFERS" and not row["note"]:
            failures.append((name, f"DIFFERS without a note: {r['detail']}"))
        if r["voi"] and r["voi"][1] > VOI_TOLERANCE and not row["note"]:
            failures.append((name, f"VOI step differs by {r['voi'][1]:.3g} ({r['voi'][0]}), no note"))
    for name in sorted(expect):
        if name.split("/")[0] in labels and name not in seen:
            failures.append((name, "expected in the corpus, but the file is missing"))
    return failures


def write_report(path, args, results, counts, failures, elapsed, labels):
    with open(path, "w", encoding="utf-8") as f:
        f.write("# scanside's DICOM decoder against pydicom\n\n")
        corpora = " ".join(args.corpus)
        f.write(f"Command: `python3 tools/dicom_corpus.py --scanside {args.scanside} {corpora}` "
                f"(pydicom {pydicom.__version__}; corpora: {', '.join(labels)}; {len(results)} files; "
                f"{elapsed:.0f} s). Expectations: {', '.join(os.path.relpath(p) for p in args.expect)}, "
                f"judged against the `{args.against}` column.\n\n")
        f.write("Compared: the first frame before windowing (modality LUT applied to monochrome, "
                "palette looked up, YBR converted to RGB). Tolerance: lossless syntaxes 0.1 % of "
                "pydicom's value range (float rounding of rescale); lossy JPEG / JPEG 2000 max "
                "3 % and mean 0.5 % of the range (the two JPEG decoders' IDCT and chroma "
                "upsampling differ).\n\n")
        by_label = collections.defaultdict(collections.Counter)
        for r in results:
            by_label[r["file"].split("/")[0]][r["outcome"]] += 1
        f.write("| outcome | " + " | ".join(labels) + " | all |\n|---|" + "---:|" * (len(labels) + 1)
                + "\n")
        for key in ORDER:
            f.write(f"| {key} | " + " | ".join(str(by_label[l].get(key, 0)) for l in labels)
                    + f" | {counts.get(key, 0)} |\n")
        f.write(f"\n## Against the expectations ({args.against}): {len(failures)} "
                f"failure{'s' if len(failures) != 1 else ''}\n\n")
        if failures:
            f.write("| file | why |\n|---|---|\n")
            for name, why in failures:
                f.write(f"| {name} | {why.replace('|', '/')} |\n")
        f.write("\n## Every file\n\n| file | transfer syntax | photometric | bits | outcome | "
                "target | detail |\n|---|---|---|---|---|---|---|\n")
        for r in results:
            detail = r["detail"]
            if r["note"]:
                detail = f"{detail} — {r['note']}" if detail else r["note"]
            f.write(f"| {r['file']} | {r['transfer_syntax']} | {r['photometric']} | {r['bits']} | "
                    f"{r['outcome']} | {r['target']} | {detail.replace('|', '/')} |\n")
        f.write("\n## The VOI step (what the model sees)\n\n"
                "For monochrome files both decode and pydicom can window: our `file` policy output "
                "(`inspect --values`, NAME.windowed.f32, MONOCHROME1 inversion undone) against "
                "pydicom's `apply_voi_lut(prefer_lut=True)` brought to 0..1 (VOI LUT: by its "
                "entry bits; window: by the stored range after rescale). Tolerance 1e-3.\n\n"
                "| file | VOI | max abs diff | outcome |\n|---|---|---:|---|\n")
        for r in results:
            if r["voi"]:
                kind, diff = r["voi"]
                f.write(f"| {r['file']} | {kind} | {diff:.2g} | "
                        f"{'agrees' if diff <= VOI_TOLERANCE else 'DIFFERS'} |\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", nargs="*", default=["pydicom"],
                        help="pydicom, LABEL=DIR or DIR (default: pydicom)")
    parser.add_argument("--scanside", default="target/release/scanside")
    parser.add_argument("--out", default="docs/dicom-corpus.md", help="the Markdown report")
    parser.add_argument("--json", help="every file's outcome as JSON (for a worklist)")
    parser.add_argument("--expect", action="append",
                        help=f"expectations file (default {os.path.relpath(DEFAULT_EXPECT)})")
    parser.add_argument("--against", choices=["target", "baseline"], default="target",
                        help="column the outcomes must meet (default: target)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report and list the failures, but exit 0")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    args.expect = args.expect or [DEFAULT_EXPECT]
    files, labels = corpus_files(args.corpus)
    expect = read_expectations(args.expect)
    results = []
    counts = collections.Counter()
    start = time.time()
    # One file per task on every core; each task's values go to its own folder.
    with tempfile.TemporaryDirectory() as tmp:
        def task(item):
            i, (name, path) = item
            out = os.path.join(tmp, str(i))
            os.makedirs(out, exist_ok=True)
            return compare(args.scanside, name, path, out, args.timeout)

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for r in pool.map(task, enumerate(files)):
                counts[r["outcome"]] += 1
                results.append(r)
                print(f"{r['outcome']:14} {r['file']:60} {r['transfer_syntax']:40} {r['detail'][:160]}",
                      flush=True)
    elapsed = time.time() - start
    failures = judge(results, expect, labels, args.against)
    write_report(args.out, args, results, counts, failures, elapsed, labels)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(dict(counts))
    print(f"wrote {args.out}")
    voi_rows = [r for r in results if r["voi"]]
    print(f"VOI step: {len(voi_rows)} files compared, "
          f"{sum(r['voi'][1] <= VOI_TOLERANCE for r in voi_rows)} agree "
          f"({sum(r['voi'][0] == 'VOI LUT' for r in voi_rows)} by VOI LUT)")
    if failures:
        print(f"{len(failures)} file(s) fail the expectations ({args.against}):")
        for name, why in failures:
            print(f"  FAIL {name}: {why}")
        missing = [r for r in results if r["file"] not in expect]
        if missing:
            print("rows for the files without one (measured outcome as target and baseline: "
                  "review the target before adding them to the expectations file):")
            for r in missing:
                print(f"{r['file']}\t{r['outcome']}\t{r['outcome']}\t")
    else:
        print(f"all {len(results)} files meet the expectations ({args.against})")
    return 0 if args.report_only or not failures else 1


if __name__ == "__main__":
    sys.exit(main())
