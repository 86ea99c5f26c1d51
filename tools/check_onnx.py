#!/usr/bin/env python3
"""Independent check of an exported bundle with the ONNX reference tools.

Usage: check_onnx.py BUNDLE_DIR CHECK_JSON
CHECK_JSON holds {"inputs": [[...C*H*W floats...], ...], "logits": [[...], ...]} computed by the
burn model. The script validates the model with onnx.checker, runs it with onnxruntime and
fails if any logit differs from burn's by more than 1e-4.
"""
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
