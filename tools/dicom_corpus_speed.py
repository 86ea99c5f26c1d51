#!/usr/bin/env python3
"""Decode speed of two scanside binaries on the same DICOM files: `inspect --values` wall time
per run, median (min-max) over --rounds runs, the binaries alternating in each round so that
load from other work hits both alike. Prints a Markdown table row per file.

Usage: python3 tools/dicom_corpus_speed.py --before OLD/scanside --after NEW/scanside FILE...
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    bins = [("before", args.before), ("after", args.after)]
    times = {(b, f): [] for b, _ in bins for f in args.files}
    for r in range(args.rounds):
        for f in args.files:
            for name, exe in (bins if r % 2 == 0 else bins[::-1]):
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    proc = subprocess.run([exe, "inspect", "--values", out, f], capture_output=True)
                    elapsed = (time.perf_counter() - start) * 1000
                if proc.returncode == 0:
                    times[(name, f)].append(elapsed)
    print("| file | before | after |\n|---|---:|---:|")
    for f in args.files:
        cells = []
        for name, _ in bins:
            t = times[(name, f)]
            cells.append(f"{statistics.median(t):.0f} ms ({min(t):.0f}–{max(t):.0f})" if t else "fails")
        print(f"| {os.path.basename(f)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
