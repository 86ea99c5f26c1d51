#!/usr/bin/env python3
"""onnxruntime peer for tools/bench/int8.sh: per-image latency (batch 1, one thread, like the
scanside runtime's per-image `infer_ms`) of a bundle's fp32 ONNX model and its int8 QDQ twin.

Usage: onnxruntime_peer.py BUNDLE_DIR [N]
Inputs are random normal values of the model's input shape: latency does not depend on content.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def p50_ms(path, x, n):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for i in range(10):
        session.run(None, {name: x[i % len(x)]})
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        session.run(None, {name: x[i % len(x)]})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    bundle = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    manifest = json.load(open(f"{bundle}/manifest.json"))
    p = manifest["preprocess"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, p["channels"], p["height"], p["width"])).astype(np.float32)
    result = {"onnxruntime": ort.__version__, "fp32_p50_ms": p50_ms(f"{bundle}/{manifest['model']['file']}", x, n)}
    qdq = (manifest.get("int8") or {}).get("qdq_onnx")
    if qdq:
        result["qdq_int8_p50_ms"] = p50_ms(f"{bundle}/{qdq['file']}", x, n)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
