#!/usr/bin/env python3
"""The PyTorch peer of `scanside-train data bench`: read + decode + resize to SIZE, then two
augmented, normalised views per image with torchvision transforms on PIL images (the derm
preset's operations and parameters), through a DataLoader with one worker per core.
Prints one JSON line: images, seconds (best pass), images_per_second."""
import argparse
import csv
import json
import os
import time

import torch
from PIL import Image
from torchvision import transforms as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="HAM10000 folder (metadata.csv + images/)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()

    with open(os.path.join(args.data, "metadata.csv")) as f:
        ids = [row["image_id"] for row in csv.DictReader(f)][: args.images]
    paths = [os.path.join(args.data, "images", f"{i}.jpg") for i in ids]
    s = args.size
    kernel = max(3, int(0.1 * s) // 2 * 2 + 1)  # SimCLR: 10 % of the image, odd
    view = T.Compose([
        T.RandomResizedCrop(s, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomApply([T.RandomRotation(45)], p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1 * s / 224, 2.0 * s / 224))], p=0.5),
        T.ToTensor(),
        T.Normalize([0.5] * 3, [0.25] * 3),
    ])

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            img = Image.open(paths[i]).convert("RGB").resize((s, s), Image.BILINEAR)
            return view(img), view(img)

    def init(_):
        torch.set_num_threads(1)

    loader = torch.utils.data.DataLoader(
        Views(), batch_size=256, num_workers=args.workers, worker_init_fn=init,
        persistent_workers=args.workers > 0)
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        n = 0
        for a, b in loader:
            n += a.shape[0]
        best = min(best, time.perf_counter() - start)
    assert n == len(paths)
    print(json.dumps({"images": n, "size": s, "workers": args.workers, "seconds": best,
                      "images_per_second": n / best,
                      "torch": torch.__version__,
                      "torchvision": __import__("torchvision").__version__}))


if __name__ == "__main__":
    main()
