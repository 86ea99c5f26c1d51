#!/usr/bin/env python3
"""Screens every frame of the public corpus's multi-frame DICOM files with the every-frame policy.

Takes any exported bundle, copies it with `preprocess.dicom_frames = "every"` (the copy is
unsigned: it is run with --allow-unsigned), screens each multi-frame file of pydicom's test
data and pydicom-data with `scanside screen`, and checks that the result lists one entry per
frame (NumberOfFrames as pydicom reads it) or that the file is refused with a clear error.
Exit status 1 on a panic or a frame-count mismatch.

Usage: python3 tools/dicom_frames.py BUNDLE [--scanside target/debug/scanside]
"""
import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pydicom
from pydicom.data import get_testdata_files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--scanside", default="target/debug/scanside")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = os.path.join(tmp, "bundle")
        shutil.copytree(args.bundle, bundle)
        manifest = os.path.join(bundle, "manifest.json")
        with open(manifest) as f:
            m = json.load(f)
        m["preprocess"]["dicom_frames"] = "every"
        with open(manifest, "w") as f:
            json.dump(m, f, indent=2)
        for sig in ("manifest.sig",):
            if os.path.exists(os.path.join(bundle, sig)):
                os.remove(os.path.join(bundle, sig))
        counts = collections.Counter()
        for path in sorted(set(get_testdata_files())):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            except Exception:  # noqa: BLE001 - not a DICOM file pydicom reads
                continue
            if frames <= 1:
                continue
            proc = subprocess.run([args.scanside, "screen", "--bundle", bundle, "--allow-unsigned", path],
                                  capture_output=True, text=True, timeout=600)
            name = os.path.basename(path)
            if "panicked" in proc.stderr:
                outcome, detail = "PANIC", proc.stderr.strip()[-200:]
            elif proc.returncode != 0:
                lines = [l for l in proc.stderr.splitlines() if "error:" in l]
                outcome, detail = "clear error", (lines[0].split("cannot decode image: ")[-1] if lines else "")
            else:
                got = len(json.loads(proc.stdout.splitlines()[0]).get("frames", []))
                outcome = "every frame" if got == frames else "MISMATCH"
                detail = f"{got} of {frames} frames"
            counts[outcome] += 1
            print(f"{outcome:12} {name:40} {frames:4} frames  {detail}", flush=True)
    print(dict(counts))
    return 1 if counts["PANIC"] or counts["MISMATCH"] else 0


if __name__ == "__main__":
    sys.exit(main())
