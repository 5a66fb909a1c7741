#!/usr/bin/env bash
# keel's GPU checks in one call, for a machine with a GPU and CUDA 13 but no Rust: run it from
# the repository root with a release binary built elsewhere with `--features cuda` (carry
# a stripped copy, see BIN below). Writes everything to $OUT (default ./gpu-check-out):
#   gpu-check.txt/.json   every kernel validated against the CPU reference, VGG16's conv base
#                         against the CPU backend in fp32/tf32/bf16, then the GEMM ladder
#                         timed next to cuBLAS and VGG16 (batch 64, 224x224) next to PyTorch
#                         (scripts/torch_vgg16.py) with per-op times and peak memory (full
#                         sizes; --quick with QUICK=1)
#   memcheck.txt          compute-sanitizer memcheck over the quick validation set
#   racecheck.txt         compute-sanitizer racecheck over the same
# Fits in 9 minutes with start-up; each step has its own time limit so one hang cannot eat
# the others' time. Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The binary: $KEEL_BIN, else a stripped copy in target/gpu (what travels to a lent GPU: with
# debug info target/release/keel is over the 64 MiB that may be carried; make it with
# `cargo build --release --features cuda && mkdir -p target/gpu &&
#  strip -o target/gpu/keel target/release/keel`), else target/release/keel.
BIN=${KEEL_BIN:-target/gpu/keel}
[ -x "$BIN" ] || BIN=target/release/keel
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/targets/sbsa-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# pip-installed CUDA libraries (PyTorch's), as a fallback for libnvrtc/libcublas.
for d in $(python3 -c 'import site,glob;[print(p) for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/*/lib")]' 2>/dev/null); do
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export KEEL_KERNEL_CACHE=${KEEL_KERNEL_CACHE:-/tmp/keel-kernel-cache}
# cuBLAS's fp32 yardstick must not silently use TF32.
unset NVIDIA_TF32_OVERRIDE
status=0
{ nvidia-smi || true; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } > "$OUT/environment.txt" 2>&1

quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
echo "== keel gpu-check ${quick[*]}"
timeout 330 "$BIN" gpu-check "${quick[@]}" --json "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$SAN" ]; then
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool (quick validation set)"
        timeout 120 "$SAN" --tool "$tool" --error-exitcode 9 "$BIN" gpu-check --quick --no-timing \
            > "$OUT/$tool.txt" 2>&1
        rc=$?
        tail -n 3 "$OUT/$tool.txt"
        [ "$rc" = 0 ] || { echo "$tool: exit $rc"; status=1; }
    done
else
    echo "compute-sanitizer not found: sanitizer steps skipped" | tee "$OUT/sanitizer-skipped.txt"
fi
exit $status
