#!/usr/bin/env python3
"""PyTorch's side of `keel gpu-check`'s VGG16 comparison.

VGG16's convolutional base (Keras's layers: 13 3x3 'same' convolutions with ReLU, 5 2x2 max
pools) with random weights, channels_last, batch 64 at 224x224 by default, timed with CUDA
events the way keel times itself: warm-up runs, then the median of timed runs. Prints one JSON
object per precision on stdout:

  fp32  TF32 off for cuDNN and matmul (torch.backends.*.allow_tf32 = False)
  tf32  TF32 on for both
  bf16  the model and the input in bfloat16

with images/s, milliseconds per batch and peak device memory (torch.cuda.max_memory_allocated:
live tensors, the same count keel reports). cuDNN picks its fastest algorithms
(cudnn.benchmark), so this is PyTorch at its best on the device.

Usage: python3 scripts/torch_vgg16.py [--batch 64] [--size 224] [--precision fp32 tf32 bf16]
"""

import argparse
import json
import sys


def vgg16_base(torch):
    nn = torch.nn
    layers, cin = [], 3
    for block, (convs, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def measure(torch, precision, batch, size, runs):
    torch.backends.cudnn.benchmark = True
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = vgg16_base(torch).to("cuda", dtype=dtype).to(memory_format=torch.channels_last).eval()
    x = torch.rand(batch, 3, size, size, device="cuda", dtype=dtype) * 255 - 128
    x = x.to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            y = model(x)
        torch.cuda.synchronize()
        del y
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            start.record()
            y = model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            del y
    times.sort()
    ms = times[len(times) // 2]
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
        "precision": precision,
        "batch": batch,
        "size": size,
        "runs": runs,
        "ms": ms,
        "images_per_s": batch / (ms / 1e3),
        # Weights and input included, as keel's peak includes its own.
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "resident_bytes": base,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--precision", nargs="+", default=["fp32", "tf32", "bf16"],
                   choices=["fp32", "tf32", "bf16"])
    a = p.parse_args()
    try:
        import torch
    except ImportError as e:
        print(json.dumps({"error": f"PyTorch is not installed: {e}"}))
        return 2
    if not torch.cuda.is_available():
        print(json.dumps({"error": "PyTorch sees no CUDA device"}))
        return 2
    for precision in a.precision:
        print(json.dumps(measure(torch, precision, a.batch, a.size, a.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
