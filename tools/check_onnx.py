#!/usr/bin/env python3
"""Independent check of an exported bundle with the ONNX reference tools.

Usage: check_onnx.py BUNDLE_DIR CHECK_JSON [--max-steps N] [--qdq-profile tensorrt]

CHECK_JSON holds {"inputs": [[...C*H*W floats...], ...], "logits": [[...], ...]}: the fp32
logits of the model that was exported (burn's for a scanside run, tract's of the file for an
imported ONNX model). The script validates the model with onnx.checker, runs it with
onnxruntime and fails if any logit differs by more than 1e-4 (relative to the largest logit
when that exceeds 1). When the bundle has an int8 model with its QDQ ONNX twin and CHECK_JSON
has "int8_logits" (the scanside int8 engine's), the QDQ model is checked and run too: its
logits must be within --max-steps output steps (default 2) of the engine's. A bundle of an
imported model the int8 core cannot run carries the QDQ model alone (pinned in the manifest's
provenance): it is hash-checked, validated and run, and its top classes compared with fp32.

--qdq-profile tensorrt also reads every QuantizeLinear and DequantizeLinear of the QDQ model:
each zero point must be 0 and int8 (TensorRT accepts nothing else), per-channel scales must
be on axis 0, and no int32 DequantizeLinear may remain (TensorRT's QDQ layers are int8).
"""
import argparse
import hashlib
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def run(path, manifest, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([manifest["model"]["output_name"]], {manifest["model"]["input_name"]: x})[0]


def tolerance(logits):
    return 1e-4 * max(1.0, float(np.abs(logits).max()))


def check_tensorrt_profile(model):
    """Every Q/DQ zero point 0 and int8, per-channel scales on axis 0, no int32 dequantisation."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    problems, quantize_nodes = [], 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        quantize_nodes += node.op_type == "QuantizeLinear"
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: no constant zero point")
            continue
        zero = inits[node.input[2]]
        if zero.dtype != np.int8 or np.any(zero != 0):
            problems.append(f"{node.name}: zero point {zero.tolist()} ({zero.dtype})")
        scale = inits.get(node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale is not None and scale.size > 1 and axis != 0:
            problems.append(f"{node.name}: per-channel scales on axis {axis}")
    if problems:
        print("FAIL: not TensorRT's QDQ profile:\n  " + "\n  ".join(problems[:20]), file=sys.stderr)
        return False
    print(f"tensorrt profile: {quantize_nodes} QuantizeLinear zero points read, all 0 (int8); "
          f"per-channel weight scales on axis 0; no int32 DequantizeLinear")
    return True


def check_qdq(bundle, manifest, qdq_file, x, args, check):
    qdq_path = f"{bundle}/{qdq_file}"
    qdq = onnx.load(qdq_path)
    onnx.checker.check_model(qdq, full_check=True)
    ops = sorted({n.op_type for n in qdq.graph.node})
    if args.qdq_profile == "tensorrt" and not check_tensorrt_profile(qdq):
        return 1
    got = run(qdq_path, manifest, x)
    int8 = manifest.get("int8") or {}
    if "int8_logits" not in check or not int8:
        fp32 = np.asarray(check["logits"], dtype=np.float32)
        agree = int((got.argmax(1) == fp32.argmax(1)).sum())
        print(f"{qdq_path}: onnx.checker ok, ops {ops}; onnxruntime runs it: top class agrees "
              f"with fp32 on {agree}/{len(fp32)}, max |logit diff| vs fp32 {float(np.abs(got - fp32).max()):.3f}")
        return 0
    # The blob's output step: header u16 "output" at byte 34, tensor records (16 B) from 40.
    blob = open(f"{bundle}/{int8['file']}", "rb").read()
    (output_index,) = struct.unpack_from("<H", blob, 34)
    (step,) = struct.unpack_from("<f", blob, 40 + 16 * output_index + 12)
    want = np.asarray(check["int8_logits"], dtype=np.float32)
    # Both sides are multiples of the output step, so the difference is a whole number of
    # steps; rounded, or exactly 2 steps computed as 2.0000001 would fail the check.
    steps = round(float(np.abs(got - want).max()) / step, 3)
    agree = int((got.argmax(1) == want.argmax(1)).sum())
    print(f"{qdq_path}: onnx.checker ok, ops {ops}; onnxruntime vs the scanside int8 engine: "
          f"max |logit diff| {steps:.2f} output steps (limit {args.max_steps}), top class agrees {agree}/{len(want)}")
    if steps > args.max_steps:
        print("FAIL: the QDQ model disagrees with the int8 blob", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description="Checks a bundle with onnx.checker and onnxruntime.")
    p.add_argument("bundle")
    p.add_argument("check_json")
    p.add_argument("--max-steps", type=float, default=2.0)
    p.add_argument("--qdq-profile", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    args = p.parse_args()
    bundle = args.bundle
    manifest = json.load(open(f"{bundle}/manifest.json"))
    model_path = f"{bundle}/{manifest['model']['file']}"
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opset = {o.domain: o.version for o in model.opset_import}[""]
    p = manifest["preprocess"]
    check = json.load(open(args.check_json))
    x = np.asarray(check["inputs"], dtype=np.float32).reshape(-1, p["channels"], p["height"], p["width"])
    want = np.asarray(check["logits"], dtype=np.float32)
    got = run(model_path, manifest, x)
    diff = float(np.abs(got - want).max())
    print(f"{model_path}: onnx.checker ok (opset {opset}), onnxruntime {ort.__version__} "
          f"batch {x.shape[0]}: max |logit diff| vs the exporter's fp32 {diff:.2e}")
    if diff > tolerance(want):
        print("FAIL: onnxruntime disagrees with the exporter's fp32 logits", file=sys.stderr)
        return 1
    int8 = manifest.get("int8") or {}
    if int8.get("qdq_onnx"):
        return check_qdq(bundle, manifest, int8["qdq_onnx"]["file"], x, args, check)
    record = (manifest["provenance"].get("training_config") or {}).get("qdq_without_blob")
    if record:
        data = open(f"{bundle}/{record['file']}", "rb").read()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            print(f"FAIL: {record['file']} does not match the manifest's sha256", file=sys.stderr)
            return 1
        return check_qdq(bundle, manifest, record["file"], x, args, check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
