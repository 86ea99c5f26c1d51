#!/usr/bin/env python3
"""Measures a bundle's guards (input rules and out-of-distribution score) on real data.

    python3 tools/ood_eval.py --bundle RUN/bundle --split RUN/split.json --data ../shared/data \
        --scanside target/release/scanside --out /tmp/ood [--limit 400]

In-distribution: the dermatology test split of the bundle's split file (HAM10000 JPEGs), and
some of them written as DICOM VL photographs (Modality XC). Out of distribution: NIH chest
X-ray PNGs (grey stored as RGB) and some written as DICOM CR, PneumoniaMNIST and BreastMNIST
test images (grey PNGs), and pydicom's test files (CT, MR, US, RGB test patterns, ...).

Two runs of `scanside screen`: the bundle as exported (what a site gets: per set, the share
screened, not_applicable, out_of_distribution, failed), and a copy without input rules, so that
the score is computed on every decodable input: its AUROC for derm test vs each other set, with
a 95 % bootstrap interval, for the bundle's score and for the energy of the same logits, and the
false-rejection rate of the threshold on the derm test split with a Wilson interval.
Writes OUT/ood_eval.json and prints a markdown table. Needs numpy, pillow, pydicom and
pydicom-data (tools/setup.sh installs them).
"""

import argparse
import glob
import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image


def spread(items, n):
    """Up to n items evenly spread over the list (deterministic)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def write_dicom(path, pixels, modality, photometric):
    """A DICOM secondary-capture-like image with the given modality (pydicom's writer)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.77.1.4" if modality == "XC" else "1.2.840.10008.5.1.4.1.1.1"
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "OOD-EVAL"
    ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def build_sets(args, out):
    """Writes or lists every evaluation set; returns {name: (kind, [files])}."""
    split = json.load(open(args.split))
    ham = os.path.join(args.data, "ham10000", "images")
    test_ids = sorted(i for i, p in split["assignments"].items() if p == "test")
    derm = spread([os.path.join(ham, f"{i}.jpg") for i in test_ids], args.limit)
    sets = {"derm test (JPEG)": ("in", derm)}

    derm_dcm = os.path.join(out, "derm-dicom")
    os.makedirs(derm_dcm, exist_ok=True)
    files = []
    for k, src in enumerate(spread(derm, 50)):
        path = os.path.join(derm_dcm, f"{k:03}.dcm")
        write_dicom(path, np.asarray(Image.open(src).convert("RGB")), "XC", "RGB")
        files.append(path)
    sets["derm test as DICOM XC"] = ("in", files)

    nih = sorted(glob.glob(os.path.join(args.data, "nih-cxr", "images", "*.png")))
    sets["NIH chest X-ray (PNG)"] = ("out", spread(nih, args.limit))
    cr = os.path.join(out, "nih-dicom")
    os.makedirs(cr, exist_ok=True)
    files = []
    for k, src in enumerate(spread(nih, 50)):
        path = os.path.join(cr, f"{k:03}.dcm")
        write_dicom(path, np.asarray(Image.open(src).convert("L")), "CR", "MONOCHROME2")
        files.append(path)
    sets["NIH chest X-ray as DICOM CR"] = ("out", files)

    for name in ["pneumoniamnist", "breastmnist"]:
        npz = np.load(os.path.join(args.data, "medmnist", f"{name}.npz"))
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        files = []
        for k in spread(list(range(len(npz["test_images"]))), args.limit):
            path = os.path.join(folder, f"{k:04}.png")
            Image.fromarray(npz["test_images"][k]).save(path)
            files.append(path)
        sets[f"{name} test (PNG)"] = ("out", files)

    import data_store
    import pydicom.data

    pydicom_dir = os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm"))
    dicom = sorted(glob.glob(os.path.join(pydicom_dir, "*.dcm")))
    store = os.path.dirname(data_store.__file__)
    dicom += sorted(glob.glob(os.path.join(store, "**", "*.dcm"), recursive=True))
    sets["pydicom + pydicom-data files (CT, MR, US, RGB, ...)"] = ("out", dicom)
    return sets


def screen(args, bundle, files, trust):
    """One JSON line per file that screened; failures are counted by missing lines."""
    results = []
    for start in range(0, len(files), 200):
        chunk = files[start : start + 200]
        run = subprocess.run(
            [args.scanside, "screen", "--bundle", bundle, *trust, *chunk],
            capture_output=True,
            text=True,
        )
        if run.returncode not in (0, 1):
            sys.exit(f"scanside screen failed ({run.returncode}): {run.stderr}")
        results.extend(json.loads(line) for line in run.stdout.splitlines())
    return results


def without_rules(bundle, out):
    """A copy of the bundle with its input rules removed (unsigned: screened --allow-unsigned)."""
    copy = os.path.join(out, "bundle-without-rules")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    manifest_path = os.path.join(copy, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest.pop("input_rules", None)
    json.dump(manifest, open(manifest_path, "w"), indent=2)
    sig = os.path.join(copy, "manifest.sig")
    if os.path.exists(sig):
        os.remove(sig)
    return copy


def energy(logits):
    m = max(logits)
    return -(m + math.log(sum(math.exp(z - m) for z in logits)))


def auroc(inliers, outliers):
    ins = np.asarray(inliers)
    wins = sum(float(np.sum(o > ins)) + 0.5 * float(np.sum(o == ins)) for o in outliers)
    return wins / (len(ins) * len(outliers))


def bootstrap_auroc(inliers, outliers, rounds=500, seed=0):
    rng = random.Random(seed)
    values = []
    for _ in range(rounds):
        a = [rng.choice(inliers) for _ in inliers]
        b = [rng.choice(outliers) for _ in outliers]
        values.append(auroc(a, b))
    values.sort()
    return values[int(0.025 * rounds)], values[int(0.975 * rounds) - 1]


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--public-key", help="the bundle's public key (default: --allow-unsigned)")
    ap.add_argument("--split", required=True)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--scanside", default="target/release/scanside")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=400, help="images per set at most")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sets = build_sets(args, args.out)
    trust = ["--public-key", args.public_key] if args.public_key else ["--allow-unsigned"]
    manifest = json.load(open(os.path.join(args.bundle, "manifest.json")))
    ood = manifest.get("ood")
    if ood is None:
        sys.exit(f"{args.bundle}: the bundle has no out-of-distribution guard")
    bare = without_rules(args.bundle, args.out)

    report = {"bundle": args.bundle, "input_rules": manifest.get("input_rules"),
              "ood": {k: v for k, v in ood.items() if k != "score"},
              "ood_method": ood["score"]["method"], "sets": {}}
    scores = {}
    for name, (kind, files) in sets.items():
        guarded = screen(args, args.bundle, files, trust)
        counts = {s: sum(r["status"] == s for r in guarded)
                  for s in ["screened", "not_applicable", "out_of_distribution"]}
        counts["failed"] = len(files) - len(guarded)
        flagged = sum(bool(r["flags"]) for r in guarded)
        reasons = sorted({r.get("refused_by", "").split(" where")[0].split(" is not")[0]
                          for r in guarded if r["status"] == "not_applicable"})
        bare_results = screen(args, bare, files, ["--allow-unsigned"])
        scores[name] = (
            [r["ood"]["score"] for r in bare_results],
            [energy(r["logits"]) for r in bare_results],
        )
        report["sets"][name] = {"kind": kind, "files": len(files), **counts,
                                "flagged": flagged, "refusal_reasons": reasons[:5]}

    derm_score, derm_energy = scores["derm test (JPEG)"]
    rejected = sum(s > ood["threshold"] for s in derm_score)
    report["derm_test_false_rejection"] = {
        "rejected": rejected, "of": len(derm_score),
        "rate": rejected / max(1, len(derm_score)),
        "wilson95": wilson(rejected, len(derm_score)),
        "target": ood["target_false_rejection"],
    }
    if manifest.get("int8"):
        # The same guard on the int8 engine's logits (threshold fitted on fp32 logits).
        int8 = screen(args, args.bundle, sets["derm test (JPEG)"][1], trust + ["--engine", "int8"])
        k = sum(r["status"] == "out_of_distribution" for r in int8)
        report["derm_test_false_rejection_int8"] = {
            "rejected": k, "of": len(int8), "rate": k / max(1, len(int8)),
            "wilson95": wilson(k, len(int8)),
        }
    for name, (kind, _) in sets.items():
        if kind != "out" or not scores[name][0]:
            continue
        s, e = scores[name]
        report["sets"][name]["score_auroc"] = auroc(derm_score, s)
        report["sets"][name]["score_auroc95"] = bootstrap_auroc(derm_score, s)
        report["sets"][name]["energy_auroc"] = auroc(derm_energy, e)
        report["sets"][name]["energy_auroc95"] = bootstrap_auroc(derm_energy, e)
        report["sets"][name]["score_rejects_alone"] = sum(x > ood["threshold"] for x in s) / len(s)
    json.dump(report, open(os.path.join(args.out, "ood_eval.json"), "w"), indent=2)

    print(f"bundle {args.bundle}: score {report['ood_method']}, threshold "
          f"{ood['threshold']:.3f} for {ood['target_false_rejection']:.0%} of "
          f"{ood['fitted_on_images']} validation images")
    fr = report["derm_test_false_rejection"]
    print(f"derm test rejected by the score: {fr['rejected']}/{fr['of']} = {fr['rate']:.3f} "
          f"(95 % {fr['wilson95'][0]:.3f}-{fr['wilson95'][1]:.3f})")
    if "derm_test_false_rejection_int8" in report:
        fr = report["derm_test_false_rejection_int8"]
        print(f"the same on the int8 engine: {fr['rejected']}/{fr['of']} = {fr['rate']:.3f} "
              f"(95 % {fr['wilson95'][0]:.3f}-{fr['wilson95'][1]:.3f})")
    print()
    print("| set | files | screened | not applicable | out of distribution | failed | flagged "
          "| score AUROC (95 %) | energy AUROC (95 %) | score alone rejects |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for name, r in report["sets"].items():
        auc = (f"{r['score_auroc']:.3f} ({r['score_auroc95'][0]:.3f}-{r['score_auroc95'][1]:.3f})"
               if "score_auroc" in r else "—")
        en = (f"{r['energy_auroc']:.3f} ({r['energy_auroc95'][0]:.3f}-{r['energy_auroc95'][1]:.3f})"
              if "energy_auroc" in r else "—")
        alone = f"{r['score_rejects_alone']:.3f}" if "score_rejects_alone" in r else "—"
        print(f"| {name} ({r['kind']}) | {r['files']} | {r['screened']} | {r['not_applicable']} "
              f"| {r['out_of_distribution']} | {r['failed']} | {r['flagged']} | {auc} | {en} "
              f"| {alone} |")


if __name__ == "__main__":
    main()
