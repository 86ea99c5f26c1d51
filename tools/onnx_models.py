#!/usr/bin/env python3
"""Writes the ONNX classifiers a user would bring, to test `scanside-train export --onnx`.

Usage: onnx_models.py --out DIR [--size 64] [--classes 3] [--seed 0] [--source auto|torch|onnx]
                      [--exporter torchscript|dynamo]
                      [--models resnet18,resnet50,mobilenet_v2,mobilenet_v3_small,mixed]

With torch and torchvision importable (--source auto or torch), each torchvision model is
built with seeded random weights and exported by `torch.onnx.export` (eval mode, dynamic
batch; the TorchScript exporter at opset 14, or with --exporter dynamo torch.export's): exactly what a PyTorch user hands over. Without them (--source auto or onnx),
the same architectures are written node for node with the `onnx` package's helper API, as
torch exports them: torchvision's layer shapes, strides and pads, Conv with BatchNorm folded
(MobileNets, as torch's constant folding leaves them) or Conv + BatchNormalization nodes
(ResNets, as an export without folding leaves them), Clip for ReLU6 with Constant bounds,
HardSwish / HardSigmoid / Mul for MobileNetV3's activations and squeeze-excitation, Flatten or
Reshape, Gemm with transB. `mixed` adds what those four lack: AveragePool, grouped and
asymmetrically padded convolutions, Concat, a stand-alone BatchNormalization, MatMul +
Add and Squeeze. Weights are seeded random (He initialisation, BatchNorm statistics near the
identity, residual branches scaled down so 50 layers stay finite): graph coverage, not
accuracy. Prints one JSON line per model: file, source, input size, classes, nodes, opset.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 14


class Builder:
    """Nodes and initializers of one graph, with seeded random weights."""

    def __init__(self, seed, fold_bn):
        self.rng = np.random.default_rng(seed)
        self.fold_bn = fold_bn
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def init(self, prefix, array):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{out}/{op}", **attrs))
        return out

    def const(self, value):
        out = self.name("const")
        tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32), out + "_value")
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out

    def conv_bn(self, x, cin, cout, k, stride=1, groups=1, gamma=1.0, pads=None):
        """torchvision's conv (no bias) + BatchNorm: folded into one Conv, or both nodes."""
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        g = gamma * self.rng.uniform(0.8, 1.2, cout)
        beta = self.rng.normal(0, 0.05, cout)
        mean = self.rng.normal(0, 0.05, cout)
        var = self.rng.uniform(0.8, 1.2, cout)
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads or [k // 2] * 4)
        if groups > 1:
            attrs["group"] = groups
        if self.fold_bn:
            scale = g / np.sqrt(var + 1e-5)
            wf = w * scale[:, None, None, None]
            bf = beta - mean * scale
            return self.node("Conv", [x, self.init("w", wf), self.init("b", bf)], **attrs)
        y = self.node("Conv", [x, self.init("w", w)], **attrs)
        params = [self.init(n, v) for n, v in (("gamma", g), ("beta", beta), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", [y] + params, epsilon=1e-5)

    def relu6(self, x):
        return self.node("Clip", [x, self.const(0.0), self.const(6.0)])

    def head(self, x, cin, classes, flatten="Flatten"):
        pooled = self.node("GlobalAveragePool", [x])
        if flatten == "Flatten":
            flat = self.node("Flatten", [pooled], axis=1)
        else:
            shape = self.name("shape")
            self.inits.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape))
            flat = self.node("Reshape", [pooled, shape])
        return self.gemm(flat, cin, classes)

    def gemm(self, x, cin, cout):
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin))
        b = self.rng.normal(0, 0.01, cout)
        return self.node("Gemm", [x, self.init("fc_w", w), self.init("fc_b", b)], transB=1)

    def model(self, output, channels, size, classes, name):
        self.nodes[-1].output[0] = "logits"
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="scanside tools/onnx_models.py")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def resnet(b, depth, size, classes):
    blocks, bottleneck = {18: ([2, 2, 2, 2], False), 50: ([3, 4, 6, 3], True)}[depth]
    x = b.node("Relu", [b.conv_bn("input", 3, 64, 7, stride=2)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        cout = width * 4 if bottleneck else width
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = b.conv_bn(x, cin, cout, 1, stride=stride)
            if bottleneck:
                y = b.node("Relu", [b.conv_bn(x, cin, width, 1)])
                y = b.node("Relu", [b.conv_bn(y, width, width, 3, stride=stride)])
                y = b.conv_bn(y, width, cout, 1, gamma=0.2)
            else:
                y = b.node("Relu", [b.conv_bn(x, cin, width, 3, stride=stride)])
                y = b.conv_bn(y, width, cout, 3, gamma=0.2)
            x = b.node("Relu", [b.node("Add", [y, shortcut])])
            cin = cout
    return b.head(x, cin, classes, flatten="Reshape" if depth == 50 else "Flatten")


def make_divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def mobilenet_v2(b, size, classes):
    x = b.relu6(b.conv_bn("input", 3, 32, 3, stride=2))
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.relu6(b.conv_bn(x, cin, hidden, 1))
            y = b.relu6(b.conv_bn(y, hidden, hidden, 3, stride=stride, groups=hidden))
            y = b.conv_bn(y, hidden, c, 1, gamma=0.3)
            x = b.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = b.relu6(b.conv_bn(x, cin, 1280, 1))
    return b.head(x, 1280, classes)


def mobilenet_v3_small(b, size, classes):
    def act(x, kind):
        return b.node("Relu", [x]) if kind == "RE" else b.node("HardSwish", [x])

    def squeeze_excite(x, c):
        squeeze = make_divisible(c // 4)
        s = b.node("GlobalAveragePool", [x])
        w1 = b.rng.normal(0, np.sqrt(2.0 / c), (squeeze, c, 1, 1))
        s = b.node("Relu", [b.node("Conv", [s, b.init("se_w", w1), b.init("se_b", np.zeros(squeeze))], kernel_shape=[1, 1])])
        w2 = b.rng.normal(0, np.sqrt(1.0 / squeeze), (c, squeeze, 1, 1))
        s = b.node("Conv", [s, b.init("se_w", w2), b.init("se_b", np.full(c, 0.5))], kernel_shape=[1, 1])
        s = b.node("HardSigmoid", [s], alpha=1.0 / 6, beta=0.5)
        return b.node("Mul", [s, x])

    x = b.node("HardSwish", [b.conv_bn("input", 3, 16, 3, stride=2)])
    cin = 16
    for k, exp, c, se, kind, s in [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
                                   (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
                                   (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
                                   (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]:
        y = x if exp == cin else act(b.conv_bn(x, cin, exp, 1), kind)
        y = act(b.conv_bn(y, exp, exp, k, stride=s, groups=exp), kind)
        if se:
            y = squeeze_excite(y, exp)
        y = b.conv_bn(y, exp, c, 1, gamma=0.3)
        x = b.node("Add", [x, y]) if s == 1 and cin == c else y
        cin = c
    x = b.node("HardSwish", [b.conv_bn(x, cin, 576, 1)])
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    hidden = b.node("HardSwish", [b.gemm(flat, 576, 1024)])
    return b.gemm(hidden, 1024, classes)


def mixed(b, size, classes):
    """Operators the four torchvision models lack (their int8 gaps included)."""
    x = b.node("Relu", [b.conv_bn("input", 3, 16, 3, stride=2, pads=[0, 0, 1, 1])])
    g = b.node("Relu", [b.conv_bn(x, 16, 16, 3, groups=4)])
    a = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = b.node("Concat", [g, a], axis=1)
    c = 32
    scale, shift = b.rng.uniform(0.5, 1.5, c), b.rng.normal(0, 0.1, c)
    params = [b.init(n, v) for n, v in (("gamma", scale), ("beta", shift), ("mean", np.zeros(c)), ("var", np.ones(c)))]
    x = b.node("BatchNormalization", [x] + params, epsilon=1e-5)
    x = b.node("Sigmoid", [x])
    pooled = b.node("GlobalAveragePool", [x])
    axes = b.name("axes")
    b.inits.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), axes))
    flat = b.node("Squeeze", [pooled, axes])
    w = b.rng.normal(0, np.sqrt(1.0 / c), (c, classes))
    y = b.node("MatMul", [flat, b.init("mm_w", w)])
    return b.node("Add", [y, b.init("mm_b", b.rng.normal(0, 0.01, classes))])


def onnx_helper_model(name, size, classes, seed):
    fold = name.startswith("mobilenet")
    b = Builder(seed, fold_bn=fold)
    build = {
        "resnet18": lambda: resnet(b, 18, size, classes),
        "resnet50": lambda: resnet(b, 50, size, classes),
        "mobilenet_v2": lambda: mobilenet_v2(b, size, classes),
        "mobilenet_v3_small": lambda: mobilenet_v3_small(b, size, classes),
        "mixed": lambda: mixed(b, size, classes),
    }[name]
    build()
    return b.model("logits", 3, size, classes, name)


def torch_model(name, size, classes, seed, path, exporter):
    """torchvision's model, seeded, exported by torch: `dynamo` (torch.export, the default since
    PyTorch 2.9; needs onnxscript) or `torchscript` (the older exporter)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, num_classes=classes)
    # At torchvision's initialisation the BatchNorm statistics are the identity, and in eval
    # mode MobileNetV2's activations fade to logits of 1e-9: nothing int8 can represent. A few
    # training-mode passes over random images set the statistics, as training would.
    with torch.no_grad():
        for _ in range(8):
            net(torch.randn(16, 3, size, size))
    net = net.eval()
    x = torch.randn(1, 3, size, size)
    kwargs = dict(input_names=["input"], output_names=["logits"])
    if exporter == "dynamo":
        torch.onnx.export(net, (x,), path, dynamo=True, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **kwargs)
    else:
        torch.onnx.export(net, x, path, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
    return onnx.load(path)


def torch_available():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", choices=["auto", "torch", "onnx"], default="auto")
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,mobilenet_v3_small,mixed")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="torchscript",
                   help="torch's exporter (with --source torch)")
    args = p.parse_args()
    use_torch = args.source == "torch" or (args.source == "auto" and torch_available())
    os.makedirs(args.out, exist_ok=True)
    for name in args.models.split(","):
        path = os.path.join(args.out, f"{name}.onnx")
        if use_torch and name != "mixed":
            model = torch_model(name, args.size, args.classes, args.seed, path, args.exporter)
            source = f"torch.onnx.export ({args.exporter})"
        else:
            model, source = onnx_helper_model(name, args.size, args.classes, args.seed), "onnx.helper"
            onnx.save_model(model, path)
        opset = {o.domain: o.version for o in model.opset_import}[""]
        print(json.dumps({"file": path, "model": name, "source": source, "size": args.size,
                          "classes": args.classes, "nodes": len(model.graph.node), "opset": opset}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
