#!/usr/bin/env python3
"""Top-1 accuracy of a bundle's fp32 and int8 models on a split's test images of HAM10000, as
the runtime screens them (`scanside screen --engine fp32|int8`, real files end to end).

Usage: int8_test_accuracy.py BUNDLE PUBLIC_KEY SPLIT_JSON [HAM10000_DIR]
"""
import csv
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    bundle, key, split_path = sys.argv[1:4]
    ham = Path(sys.argv[4] if len(sys.argv) > 4 else "../shared/data/ham10000")
    split = json.load(open(split_path))
    labels = {r["image_id"]: r["dx"] for r in csv.DictReader(open(ham / "metadata.csv"))}
    test = sorted(i for i, p in split["assignments"].items() if p == "test")
    files = [str(ham / "images" / f"{i}.jpg") for i in test]
    result = {"images": len(files)}
    for engine in ("fp32", "int8"):
        out = subprocess.run(
            ["target/release/scanside", "screen", "--bundle", bundle, "--public-key", key,
             "--engine", engine, *files],
            check=True, capture_output=True, text=True).stdout
        rows = [json.loads(line) for line in out.splitlines()]
        correct = sum(labels[Path(r["file"]).stem] == r["top_class"] for r in rows)
        result[f"{engine}_top1"] = correct / len(rows)
        result[f"{engine}_top_classes"] = [r["top_class"] for r in rows]
    a, b = result.pop("fp32_top_classes"), result.pop("int8_top_classes")
    result["top1_agreement"] = sum(x == y for x, y in zip(a, b)) / len(a)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
