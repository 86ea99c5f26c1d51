#!/usr/bin/env python3
"""PyTorch eager peer of `scanside-train pretrain` (SimCLR): the same ResNet (18/34, width
multiplier, 3x3 stride-1 stem without max-pool), 2-layer projection head, NT-Xent with
temperature, AdamW, batch of B images = 2B views at SIZE px. Feeds pre-generated random views,
so it times the training step alone (forward, backward, optimiser) — the scanside number it is
compared with also pays for augmentation. Prints one JSON line."""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        s = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + s)


class ResNet(nn.Module):
    def __init__(self, depth, width, cin=3):
        super().__init__()
        widths = [max(8, round(w * width)) for w in (64, 128, 256, 512)]
        blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]
        self.stem = nn.Sequential(nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c = [], widths[0]
        for stage, (w, n) in enumerate(zip(widths, blocks)):
            for b in range(n):
                layers.append(Block(c, w, 2 if stage > 0 and b == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*layers)
        self.dim = c

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def nt_xent(z, t):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.t() / t
    sim.fill_diagonal_(-1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    backbone = ResNet(args.depth, args.width)
    model = nn.Sequential(backbone, nn.Linear(backbone.dim, backbone.dim), nn.ReLU(), nn.Linear(backbone.dim, 128)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    views = [torch.randn(2 * args.batch, 3, args.size, args.size, device=dev) for _ in range(4)]

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = nt_xent(model(views[i % len(views)]), 0.2)
        loss.backward()
        opt.step()
        return loss

    for i in range(args.warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    loss.item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"steps": args.steps, "batch": args.batch, "size": args.size, "depth": args.depth,
                      "width": args.width, "device": args.device, "threads": torch.get_num_threads(),
                      "seconds": seconds, "images_per_second": args.steps * args.batch / seconds,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
