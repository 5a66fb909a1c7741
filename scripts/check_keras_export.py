#!/usr/bin/env python3
"""Check a model `keel export --format keras` wrote against keel's own predictions, in Keras 3.

    keel export MODEL_DIR --format keras -o out/model.weights.h5      # also writes out/model.py
    keel predict MODEL_DIR photos/ --format json --top 1000 -o keel.json
    KERAS_BACKEND=jax check_keras_export.py out/model.py keel.json --model-json MODEL_DIR/model.json

Builds the model with the .py's build_model(), loads the .weights.h5 beside it (or --weights)
with Keras's own load_weights, then:

1. saves the model's weights again with Keras's save_weights and checks that the file holds
   the same groups, attributes and datasets (names, shapes, dtypes, values bit for bit) as
   keel's: keel writes what Keras writes;
2. loads every photo keel predicted with keras.utils.load_img (the model's input size and
   resize filter, from --model-json, else --interpolation, default nearest), preprocesses it with
   keras.applications' preprocess_input (caffe mode), runs model.predict, and compares the
   probabilities with keel's (from `keel predict --format json`, which must list every class:
   pass --top with at least as many classes as the model has).

JPEG photos: keel (zune-jpeg) and Pillow (libjpeg-turbo) round some decoded pixels differently
(docs/keras-compat.md), which alone moves real VGG16 probabilities by up to ~1e-3. To check the
export itself, compare on PNG photos, or give keel's own preprocessed inputs:

    keel features photos/ --from MODEL_DIR --layer input_1 -o x.npy     # also x.paths.txt
    KERAS_BACKEND=jax check_keras_export.py out/model.py keel.json --inputs x.npy

Prints the largest |Keras - keel| over all images and classes; exits 1 when a check fails or
that difference is above --tolerance (default 1e-4).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import h5py
import keras
import numpy as np


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_module(path):
    spec = importlib.util.spec_from_file_location("keel_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(path):
    """Every group, attribute and dataset of an HDF5 file, as {path: description}."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", obj.shape, obj.dtype.str, attrs, obj[()].tobytes())
            else:
                out[name] = ("group", attrs)

        out["/"] = ("group", dict(f.attrs))
        f.visititems(visit)
    return out


def compare_with_keras_save(model, weights):
    """keel's file against the one Keras writes for the same model and weights."""
    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "keras.weights.h5")
        model.save_weights(again)
        theirs, ours = tree(again), tree(weights)
    if theirs.keys() != ours.keys():
        fail(
            f"{weights}: Keras writes {sorted(theirs.keys() - ours.keys())} that keel does not, "
            f"keel writes {sorted(ours.keys() - theirs.keys())} that Keras does not"
        )
    for name in sorted(theirs):
        if theirs[name] != ours[name]:
            t, o = theirs[name], ours[name]
            fail(f"{weights}: /{name} differs: Keras {t[:4]}, keel {o[:4]}")
    datasets = sum(1 for v in ours.values() if v[0] == "dataset")
    print(f"structure: same as Keras's save_weights ({len(ours)} objects, {datasets} datasets)")


def keel_predictions(path, classes):
    """keel's probabilities from `keel predict --format json`: the photo paths, and one row
    per photo in the order of `classes`."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not rows:
        fail(f"{path}: no predictions")
    paths, probs = [], []
    for row in rows:
        p = {d["class"]: d["probability"] for d in row["predictions"]}
        if set(p) != set(classes):
            fail(
                f"{path}: {row['path']} lists classes {sorted(p)}, the model has {classes} "
                "(run keel predict with --top at least the number of classes)"
            )
        paths.append(row["path"])
        probs.append([p[c] for c in classes])
    return paths, np.asarray(probs, dtype=np.float32)


def keras_inputs(paths, input_shape, interpolation):
    """The photos as a Keras pipeline feeds VGG: load_img, img_to_array, preprocess_input."""
    images = []
    for path in paths:
        img = keras.utils.load_img(path, target_size=input_shape[:2], interpolation=interpolation)
        images.append(keras.utils.img_to_array(img, dtype="float32"))
    return keras.applications.vgg16.preprocess_input(np.stack(images))


def keel_inputs(npy, paths):
    """keel's own preprocessed inputs (`keel features ... --layer input_1 -o x.npy`), in the
    order of `paths`, by the `x.paths.txt` keel writes beside the .npy."""
    x = np.load(npy)
    listing = os.path.splitext(npy)[0] + ".paths.txt"
    with open(listing, encoding="utf-8") as f:
        rows = {p: i for i, p in enumerate(f.read().splitlines())}
    missing = [p for p in paths if p not in rows]
    if missing:
        fail(f"{listing} does not list {missing[:3]} (run keel features and predict on the same photos)")
    return x[[rows[p] for p in paths]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("script", help="the .py keel export wrote")
    ap.add_argument("keel", help="keel predict --format json --top <classes> output")
    ap.add_argument("--weights", help="the .weights.h5 (default: the one the .py names)")
    ap.add_argument(
        "--inputs",
        help="keel's preprocessed inputs (keel features ... --layer input_1 -o x.npy, with x.paths.txt "
        "beside it) instead of Keras's loading of the photos",
    )
    ap.add_argument(
        "--model-json",
        help="the model folder's model.json: its classes and input size are checked, and its "
        "resize filter is load_img's interpolation",
    )
    ap.add_argument("--interpolation", default="nearest", help="load_img's, without --model-json")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()

    module = load_module(a.script)
    weights = a.weights or module.WEIGHTS
    model = module.load_model(weights)
    print(f"keras {keras.__version__} ({keras.backend.backend()}): {a.script} loads {weights}")
    if tuple(model.input_shape[1:]) != tuple(module.INPUT_SHAPE):
        fail(f"model input {model.input_shape}, INPUT_SHAPE {module.INPUT_SHAPE}")
    if model.output_shape[1:] != (len(module.CLASSES),):
        fail(f"model output {model.output_shape} for {len(module.CLASSES)} classes")
    compare_with_keras_save(model, weights)
    interpolation = a.interpolation
    if a.model_json:
        with open(a.model_json, encoding="utf-8") as f:
            card = json.load(f)
        if card["classes"] != module.CLASSES:
            fail(f"CLASSES {module.CLASSES} are not the model's {card['classes']}")
        if list(module.INPUT_SHAPE[:2]) != card["base"]["input"]:
            fail(f"INPUT_SHAPE {module.INPUT_SHAPE} is not the model's {card['base']['input']}")
        interpolation = card["base"]["interpolation"]

    paths, want = keel_predictions(a.keel, module.CLASSES)
    if a.inputs:
        x = keel_inputs(a.inputs, paths)
        source = f"{len(x)} photos, keel's preprocessed inputs {a.inputs}"
    else:
        x = keras_inputs(paths, module.INPUT_SHAPE, interpolation)
        source = f"{len(x)} photos, loaded ({interpolation}) and preprocessed by Keras"
    if x.shape != (len(paths), *module.INPUT_SHAPE):
        fail(f"inputs of shape {x.shape}, expected ({len(paths)}, {module.INPUT_SHAPE})")

    got = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    diff = np.abs(got - want)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    agree = int(np.sum(got.argmax(1) == want.argmax(1)))
    print(f"inputs: {source}")
    print(f"top-1 agrees on {agree}/{len(x)}")
    print(
        f"max |keras - keel| = {diff.max():.3g} (image {worst[0]}, class "
        f"{module.CLASSES[worst[1]]!r}: keras {got[worst]:.7f}, keel {want[worst]:.7f}); "
        f"tolerance {a.tolerance:g}"
    )
    if not diff.max() <= a.tolerance:
        fail("Keras and keel differ by more than the tolerance")
    print("OK")


if __name__ == "__main__":
    main()
