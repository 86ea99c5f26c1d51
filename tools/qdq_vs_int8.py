#!/usr/bin/env python3
"""The int8 engine against onnxruntime's run of the bundle's QDQ model, per image.

Usage: qdq_vs_int8.py BUNDLE VECTORS_BIN
VECTORS_BIN is `scanside mcu-vectors --bundle BUNDLE … --out DIR IMAGES…`'s DIR/vectors.bin:
quantised inputs and the int8 engine's outputs. Each input is dequantised on the blob's input
grid (the QDQ model's first QuantizeLinear gives back the same integers) and run by
onnxruntime twice: with its graph optimisations (fused QLinear kernels) and without them (the
float Q/DQ reference). Prints the largest difference from the engine in output steps.
"""
import json, struct, sys
import numpy as np, onnxruntime as ort
bundle, vec = sys.argv[1], sys.argv[2]
blob = open(f"{bundle}/model.i8", "rb").read()
inp, outp = struct.unpack_from("<HH", blob, 32)
def rec(i):
    h, w, c, zp = struct.unpack_from("<HHHb", blob, 40 + 16 * i)
    (s,) = struct.unpack_from("<f", blob, 40 + 16 * i + 12)
    return h, w, c, zp, s
h, w, c, zi, si = rec(inp); _, _, k, zo, so = rec(outp)
v = open(vec, "rb").read()
n, il, ol = struct.unpack_from("<III", v, 4)
m = json.load(open(f"{bundle}/manifest.json"))
qdq = f"{bundle}/" + (m["int8"]["qdq_onnx"]["file"])
for level, name in [(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "optimised (fused QLinear kernels)"),
                    (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "unoptimised (float Q/DQ reference)")]:
    o = ort.SessionOptions(); o.graph_optimization_level = level
    sess = ort.InferenceSession(qdq, o, providers=["CPUExecutionProvider"])
    worst = 0
    for j in range(n):
        at = 16 + j * (il + ol)
        q = np.frombuffer(v, np.int8, il, at).astype(np.float32)
        x = ((q - zi) * si).reshape(1, h, w, c).transpose(0, 3, 1, 2)
        want = (np.frombuffer(v, np.int8, ol, at + il).astype(np.float32) - zo) * so
        got = sess.run(None, {m["model"]["input_name"]: x})[0][0]
        worst = max(worst, float(np.abs(got - want).max()) / so)
    print(f"{bundle}: onnxruntime {name} vs the int8 engine: max {worst:.1f} output steps over {n} images")
