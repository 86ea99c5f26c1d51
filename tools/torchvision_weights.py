#!/usr/bin/env python3
"""Known torchvision ResNet weights and the features they give, for testing `--init`.

Writes OUT/weights.safetensors: a ResNet state dict with torchvision's names and shapes
(conv1, bn1, layerS.I.{conv,bn}N, downsample.0/1, fc, num_batches_tracked), at any width
multiplier, filled with seeded random values (BatchNorm running statistics included, so eval
mode is exercised); and OUT/reference.json: an input batch and the pooled features (what
remains of torchvision's forward with `fc` replaced by the identity) computed here in numpy,
in eval mode.

With --torch (needs torch + torchvision, width 1 only), the same weights are also loaded into
torchvision.models.resnetNN, whose features must equal the numpy ones (checks this reference
against torchvision itself), and saved as OUT/weights.pth (a PyTorch state dict).

Usage: torchvision_weights.py OUT --depth 18 --width 0.125 [--size 64] [--batch 2] [--torch]
"""

import argparse
import json
import math
import os

import numpy as np
from safetensors.numpy import save_file

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}
EPS = 1e-5


def widths(width):
    # Rust's f32::round (half away from zero), not Python's banker's rounding.
    return [max(8, int(math.floor(w * width + 0.5))) for w in (64, 128, 256, 512)]


def make_state(depth, width, seed):
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, cout, cin, k):
        fan_in = cin * k * k
        state[name] = (rng.standard_normal((cout, cin, k, k)) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    def bn(name, c):
        state[name + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[name + ".bias"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
        state[name + ".running_mean"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
        state[name + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        state[name + ".num_batches_tracked"] = np.array(7, dtype=np.int64)

    ws = widths(width)
    bottleneck = depth >= 50
    conv("conv1.weight", ws[0], 3, 7)
    bn("bn1", ws[0])
    cin = ws[0]
    for s, (w, count) in enumerate(zip(ws, BLOCKS[depth])):
        for i in range(count):
            p = f"layer{s + 1}.{i}"
            stride = 2 if s > 0 and i == 0 else 1
            cout = w * 4 if bottleneck else w
            if bottleneck:
                conv(p + ".conv1.weight", w, cin, 1)
                bn(p + ".bn1", w)
                conv(p + ".conv2.weight", w, w, 3)
                bn(p + ".bn2", w)
                conv(p + ".conv3.weight", cout, w, 1)
                bn(p + ".bn3", cout)
            else:
                conv(p + ".conv1.weight", w, cin, 3)
                bn(p + ".bn1", w)
                conv(p + ".conv2.weight", w, w, 3)
                bn(p + ".bn2", w)
            if stride != 1 or cin != cout:
                conv(p + ".downsample.0.weight", cout, cin, 1)
                bn(p + ".downsample.1", cout)
            cin = cout
    state["fc.weight"] = rng.standard_normal((1000, cin)).astype(np.float32) * 0.01
    state["fc.bias"] = np.zeros(1000, dtype=np.float32)
    return state


def conv2d(x, w, stride):
    k = w.shape[2]
    pad = k // 2
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)


def batch_norm(x, state, name):
    g, b = state[name + ".weight"], state[name + ".bias"]
    m, v = state[name + ".running_mean"], state[name + ".running_var"]
    scale = g / np.sqrt(v + EPS)
    return (x - m[None, :, None, None]) * scale[None, :, None, None] + b[None, :, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def max_pool(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def features(state, depth, x):
    """torchvision ResNet forward in eval mode, up to the pooled features."""
    x = x.astype(np.float64)
    s = {k: v.astype(np.float64) for k, v in state.items()}
    y = max_pool(relu(batch_norm(conv2d(x, s["conv1.weight"], 2), s, "bn1")))
    bottleneck = depth >= 50
    for stage, count in enumerate(BLOCKS[depth]):
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            stride = 2 if stage > 0 and i == 0 else 1
            if p + ".downsample.0.weight" in s:
                shortcut = batch_norm(conv2d(y, s[p + ".downsample.0.weight"], stride), s, p + ".downsample.1")
            else:
                shortcut = y
            if bottleneck:
                z = relu(batch_norm(conv2d(y, s[p + ".conv1.weight"], 1), s, p + ".bn1"))
                z = relu(batch_norm(conv2d(z, s[p + ".conv2.weight"], stride), s, p + ".bn2"))
                z = batch_norm(conv2d(z, s[p + ".conv3.weight"], 1), s, p + ".bn3")
            else:
                z = relu(batch_norm(conv2d(y, s[p + ".conv1.weight"], stride), s, p + ".bn1"))
                z = batch_norm(conv2d(z, s[p + ".conv2.weight"], 1), s, p + ".bn2")
            y = relu(z + shortcut)
    return y.mean(axis=(2, 3))


def check_with_torch(state, depth, x, expected, out):
    import torch
    import torchvision

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    model.fc = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).double().numpy()
    diff = float(np.abs(got - expected).max())
    print(f"torchvision resnet{depth} vs numpy reference: max |diff| {diff:.2e}")
    assert diff < 1e-4 * max(1.0, float(np.abs(expected).max())), diff
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, os.path.join(out, "weights.pth"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--depth", type=int, choices=sorted(BLOCKS), default=18)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch", action="store_true")
    args = parser.parse_args()
    if args.torch and args.width != 1.0:
        parser.error("--torch compares with torchvision's own ResNet: width 1 only")
    os.makedirs(args.out, exist_ok=True)
    state = make_state(args.depth, args.width, args.seed)
    x = np.random.default_rng(args.seed + 1).uniform(-2, 2, (args.batch, 3, args.size, args.size)).astype(np.float32)
    expected = features(state, args.depth, x)
    save_file(state, os.path.join(args.out, "weights.safetensors"))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(
            {
                "depth": args.depth,
                "width": args.width,
                "input_shape": list(x.shape),
                "input": x.ravel().tolist(),
                "features_shape": list(expected.shape),
                "features": expected.ravel().tolist(),
            },
            f,
        )
    if args.torch:
        check_with_torch(state, args.depth, x, expected, args.out)
    print(f"wrote {args.out}/weights.safetensors ({len(state)} tensors) and reference.json")


if __name__ == "__main__":
    main()
