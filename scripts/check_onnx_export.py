#!/usr/bin/env python3
"""Check a model `keel export --format onnx` wrote against keel's own predictions.

    check_onnx_export.py MODEL.onnx INPUTS.npy KEEL_PROBS.npy [--model-json model.json]

INPUTS.npy: float32 (N, H, W, 3), the images preprocessed exactly as keel does (Keras caffe
mode, NHWC: what the ONNX graph takes). KEEL_PROBS.npy: float32 (N, classes), keel's
probabilities for the same images, in the model's class order. `tests/export_onnx.rs` writes
both (the inputs with keel's own loader, the probabilities from `keel predict`).

Runs onnx.checker (full check, with shape inference), checks the graph's input and output
(names, shapes, a dynamic batch) and, given the model folder's model.json, that the class
names in the metadata and the input size are the model's; then runs ONNX Runtime (CPU) on the
whole batch and on the first image alone, and prints the largest |ORT - keel|. Exits 1 when a
check fails, when keel's probabilities are all saturated (0 or 1: equal whatever the logits),
or when that difference is above --tolerance (default 1e-4).
"""

import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def dims(value_info):
    """A graph input's or output's shape: ints, or the names of dynamic dimensions."""
    shape = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the .onnx file")
    ap.add_argument("inputs", help=".npy (N, H, W, 3) float32, preprocessed")
    ap.add_argument("keel", help=".npy (N, classes) float32, keel's probabilities")
    ap.add_argument("--model-json", help="the model folder's model.json, to check the metadata")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    model = onnx.load(a.model)
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"onnx.checker: ok (IR version {model.ir_version}, opset {opsets.get('', '?')})")

    x = np.load(a.inputs)
    want = np.load(a.keel)
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[3] != 3:
        fail(f"{a.inputs}: expected float32 (N, H, W, 3), got {x.dtype} {x.shape}")
    if want.ndim != 2 or want.shape[0] != x.shape[0]:
        fail(f"{a.keel}: expected ({x.shape[0]}, classes), got {want.shape}")

    graph = model.graph
    if [i.name for i in graph.input] != ["input"] or [o.name for o in graph.output] != [
        "probabilities"
    ]:
        fail("the graph's input and output are not named input and probabilities")
    in_dims, out_dims = dims(graph.input[0]), dims(graph.output[0])
    if not isinstance(in_dims[0], str) or in_dims[1:] != list(x.shape[1:]):
        fail(f"input shape {in_dims}, expected [batch, {x.shape[1]}, {x.shape[2]}, 3]")
    if not isinstance(out_dims[0], str) or out_dims[1:] != [want.shape[1]]:
        fail(f"output shape {out_dims}, expected [batch, {want.shape[1]}]")

    classes = json.loads(meta.get("classes", "null"))
    if not isinstance(classes, list) or len(classes) != want.shape[1]:
        fail(f"metadata classes {meta.get('classes')!r} do not name {want.shape[1]} classes")
    if a.model_json:
        with open(a.model_json, encoding="utf-8") as f:
            card = json.load(f)
        if classes != card["classes"]:
            fail(f"metadata classes {classes} are not the model's {card['classes']}")
        h, w = card["base"]["input"]
        if meta.get("input_size") != f"{h}x{w}" or in_dims[1:3] != [h, w]:
            fail(f"input {in_dims} / metadata {meta.get('input_size')} is not the model's {h}x{w}")

    # Probabilities that are all 0 or 1 would agree whatever the logits were: refuse to call
    # such a comparison a pass.
    if not np.any((want > 1e-4) & (want < 1 - 1e-4)):
        fail(f"{a.keel}: every probability is saturated (0 or 1); the comparison would prove nothing")

    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": x})[0]
    one = session.run(["probabilities"], {"input": x[:1]})[0]
    if got.shape != want.shape or one.shape != (1, want.shape[1]):
        fail(f"ONNX Runtime gave {got.shape} and {one.shape}, expected {want.shape}")
    # np.max propagates NaN (Python's max would drop it), so NaN fails below.
    diff = float(np.max(np.abs(np.concatenate([got - want, one - want[:1]]))))
    rows = float(np.max(np.abs(got.sum(axis=1) - 1.0)))
    print(f"classes: {json.dumps(classes)}")
    print(f"max |ort - keel| = {diff:.3e} over {x.shape[0]} images (row sums within {rows:.1e} of 1)")
    if not np.isfinite(diff) or diff > a.tolerance:
        fail(f"max |ort - keel| = {diff:.3e} is above {a.tolerance:g}")
    print("ok")


if __name__ == "__main__":
    main()
