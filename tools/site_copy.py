#!/usr/bin/env python3
"""Writes one partition of a HAM10000 split as a folder of class sub-folders -- the layout a
site most often hands over -- optionally re-encoded the way another site's equipment would
deliver it (downscaled, stronger JPEG compression, another colour cast), for `scanside-train evaluate --data`.

`OUT/manifest.csv` lists the same images with their lesion (`--data OUT/manifest.csv
--path-column path --group-column lesion_id --label-column dx`), so that intervals resample
lesions; the folder alone has one group per image.

Unchanged (`--scale 1 --quality 0`, copies the files), it is a check of the evaluation itself:
the same images in another layout must give the partition's own metrics. Re-encoded, it is a
simulated acquisition shift on real images -- not another site's data, which this tool cannot
make: it measures how much the model's figures move under a known degradation.

    python3 tools/site_copy.py runs/demo/split.json test /tmp/site-copy
    python3 tools/site_copy.py runs/demo/split.json test /tmp/site-jpeg --scale 0.5 --quality 30
    python3 tools/site_copy.py runs/demo/split.json test /tmp/site-warm --gains 1.1,0.95,0.8
    scanside-train evaluate --run runs/demo/finetune --data /tmp/site-jpeg/manifest.csv \
        --path-column path --group-column lesion_id --label-column dx
"""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split", type=Path, help="split.json made by `scanside-train data split`")
    parser.add_argument("partition", choices=["train", "val", "test"])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--data", type=Path, help="the HAM10000 folder, if it moved")
    parser.add_argument("--scale", type=float, default=1.0, help="resize factor (1: none)")
    parser.add_argument("--quality", type=int, default=0, help="JPEG quality (0: copy the file)")
    parser.add_argument(
        "--gains", default="1,1,1", help="R,G,B multipliers: another dermatoscope's colour cast"
    )
    args = parser.parse_args()
    split = json.loads(args.split.read_text())
    source = split["source"]
    if source.get("layout") != "ham10000":
        sys.exit(f"{args.split}: a HAM10000 split is needed, this one is {source.get('layout')}")
    root = args.data or (args.split.parent / source["path"])
    if not (root / "metadata.csv").is_file():
        sys.exit(f"{root}: no metadata.csv (give --data HAM10000_DIR)")
    if args.out.exists():
        sys.exit(f"{args.out}: exists; give a new folder")
    if not 0 < args.scale <= 1 or not 0 <= args.quality <= 95:
        sys.exit("--scale must be in (0, 1] and --quality in 0..=95")
    try:
        gains = [float(g) for g in args.gains.split(",")]
    except ValueError:
        gains = []
    if len(gains) != 3 or not all(0 < g <= 4 for g in gains):
        sys.exit(f"--gains {args.gains!r}: three multipliers in (0, 4], e.g. 1.1,1,0.85")
    wanted = {i for i, p in split["assignments"].items() if p == args.partition}
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    written, manifest = 0, []
    with open(root / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["image_id"] not in wanted:
                continue
            src = root / "images" / f"{row['image_id']}.jpg"
            dst = staging / row["dx"] / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if args.quality == 0 and args.scale == 1.0 and gains == [1.0, 1.0, 1.0]:
                shutil.copyfile(src, dst)
            else:
                reencode(src, dst, (args.scale, gains), args.quality or 75)
            manifest.append((f"{row['dx']}/{src.name}", row["lesion_id"], row["dx"]))
            written += 1
    if written == 0:
        sys.exit(f"{args.split}: no {args.partition} images found in {root}")
    # The same images as a CSV manifest that keeps the lesions, so that intervals resample
    # lesions (a folder of class sub-folders has no groups: one per image).
    with open(staging / "manifest.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "lesion_id", "dx"])
        out.writerows(sorted(manifest))
    staging.rename(args.out)  # whole or not at all
    print(f"{args.out}: {written} {args.partition} images")
    return 0


def reencode(src: Path, dst: Path, scale_gains: tuple, quality: int) -> None:
    from PIL import Image

    scale, gains = scale_gains
    with Image.open(src) as image:
        image = image.convert("RGB")
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
        if gains != [1.0, 1.0, 1.0]:
            channels = [
                c.point(lambda v, g=g: min(255, round(v * g))) for c, g in zip(image.split(), gains)
            ]
            image = Image.merge("RGB", channels)
        image.save(dst, "JPEG", quality=quality)


if __name__ == "__main__":
    sys.exit(main())
