#!/usr/bin/env python3
"""Independent check of an exported bundle with the ONNX reference tools.

Usage: check_onnx.py BUNDLE_DIR CHECK_JSON
CHECK_JSON holds {"inputs": [[...C*H*W floats...], ...], "logits": [[...], ...]} computed by the
burn model. The script validates the model with onnx.checker, runs it with onnxruntime and
fails if any logit differs from burn's by more than 1e-4. When the bundle has an int8 model
with its QDQ ONNX twin and CHECK_JSON has "int8_logits" (the scanside int8 engine's), the QDQ
model is checked and run too: its logits must be within 2 output steps of the engine's.
"""
import struct
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    bundle, check_path = sys.argv[1], sys.argv[2]
    manifest = json.load(open(f"{bundle}/manifest.json"))
    model_path = f"{bundle}/{manifest['model']['file']}"
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    opset = {o.domain: o.version for o in model.opset_import}[""]
    p = manifest["preprocess"]
    check = json.load(open(check_path))
    x = np.asarray(check["inputs"], dtype=np.float32).reshape(-1, p["channels"], p["height"], p["width"])
    want = np.asarray(check["logits"], dtype=np.float32)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    got = session.run([manifest["model"]["output_name"]], {manifest["model"]["input_name"]: x})[0]
    diff = float(np.abs(got - want).max())
    print(f"{model_path}: onnx.checker ok (opset {opset}), onnxruntime {ort.__version__} "
          f"batch {x.shape[0]}: max |logit diff| vs burn {diff:.2e}")
    if diff > 1e-4:
        print("FAIL: onnxruntime disagrees with burn", file=sys.stderr)
        return 1
    int8 = manifest.get("int8") or {}
    if int8.get("qdq_onnx") and "int8_logits" in check:
        qdq_path = f"{bundle}/{int8['qdq_onnx']['file']}"
        qdq = onnx.load(qdq_path)
        onnx.checker.check_model(qdq, full_check=True)
        ops = sorted({n.op_type for n in qdq.graph.node})
        # The blob's output step: header u16 "output" at byte 34, tensor records (16 B) from 40.
        blob = open(f"{bundle}/{int8['file']}", "rb").read()
        (output_index,) = struct.unpack_from("<H", blob, 34)
        (step,) = struct.unpack_from("<f", blob, 40 + 16 * output_index + 12)
        session = ort.InferenceSession(qdq_path, providers=["CPUExecutionProvider"])
        got = session.run([manifest["model"]["output_name"]], {manifest["model"]["input_name"]: x})[0]
        want = np.asarray(check["int8_logits"], dtype=np.float32)
        # Both sides are multiples of the output step, so the difference is a whole number of
        # steps; rounded, or exactly 2 steps computed as 2.0000001 would fail the check.
        steps = round(float(np.abs(got - want).max()) / step, 3)
        agree = int((got.argmax(1) == want.argmax(1)).sum())
        print(f"{qdq_path}: onnx.checker ok, ops {ops}; onnxruntime vs the scanside int8 engine: "
              f"max |logit diff| {steps:.2f} output steps, top class agrees {agree}/{len(want)}")
        if steps > 2.0:
            print("FAIL: the QDQ model disagrees with the int8 blob", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
