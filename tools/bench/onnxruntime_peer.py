#!/usr/bin/env python3
"""onnxruntime peer for tools/bench/int8.sh: per-image latency (batch 1, one thread unless told, like the
scanside runtime's per-image `infer_ms`) of a bundle's fp32 ONNX model and its int8 QDQ twin,
with the same cold start and peak-RSS measures as `scanside bench`.

Usage: onnxruntime_peer.py BUNDLE_DIR [N [THREADS]]
THREADS (default 1) is the session's intra_op_num_threads, as `scanside bench --threads`.
Each model runs in its own Python process (so peak RSS is per engine, as scanside's is):
cold start = creating the InferenceSession (load + graph optimisation; scanside's is bundle
load + verification + engine preparation), peak RSS = the process's maximum resident set
(Python, numpy and onnxruntime included: how the peer is deployed here).
Inputs are random normal values of the model's input shape: latency does not depend on content.
"""
import json
import resource
import subprocess
import sys
import time


def one(path, shape, n, threads):
    """Measures one model in this process and prints its JSON line."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, *shape)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    t0 = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    cold_start_ms = (time.perf_counter() - t0) * 1e3
    name = session.get_inputs()[0].name
    for i in range(10):
        session.run(None, {name: x[i % len(x)]})
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        session.run(None, {name: x[i % len(x)]})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "threads": threads,
        "p50_ms": times[len(times) // 2],
        "p99_ms": times[min(len(times) - 1, len(times) * 99 // 100)],
        "cold_start_ms": cold_start_ms,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


def measure(path, shape, n, threads):
    out = subprocess.run(
        [sys.executable, __file__, "--one", path, json.dumps(shape), str(n), str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def main():
    if sys.argv[1] == "--one":
        one(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    bundle = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    manifest = json.load(open(f"{bundle}/manifest.json"))
    p = manifest["preprocess"]
    shape = [p["channels"], p["height"], p["width"]]
    fp32 = measure(f"{bundle}/{manifest['model']['file']}", shape, n, threads)
    result = {
        "onnxruntime": fp32["onnxruntime"],
        "fp32_p50_ms": fp32["p50_ms"],
        "fp32": fp32,
    }
    qdq = (manifest.get("int8") or {}).get("qdq_onnx")
    if qdq:
        q = measure(f"{bundle}/{qdq['file']}", shape, n, threads)
        result["qdq_int8_p50_ms"] = q["p50_ms"]
        result["qdq_int8"] = q
    print(json.dumps(result))


if __name__ == "__main__":
    main()
