#!/usr/bin/env bash
# Every check of kernels/ that runs without a GPU, one after another (2-core friendly).
# From the repository root:  kernels/emu/run_checks.sh [OUT_DIR]   (default /tmp/keel_emu)
# Needs g++ >= 12. The NVRTC compile checks with ptxas budgets are a Rust test:
# cargo test --release --features cuda --test cuda_kernels every_module_compiles
set -u
OUT=${1:-/tmp/keel_emu}
mkdir -p "$OUT"
CXX=${CXX:-g++}
FLAGS="-std=c++20 -pthread -w -I kernels"
status=0
step() { echo; echo "### $*"; }

step "CPU build of the ladder + driver; emulator self-test; every rung on every size"
$CXX $FLAGS -O2 kernels/emu/driver.cpp -o "$OUT/gemm_emu" || exit 1
"$OUT/gemm_emu" --selftest || status=1
"$OUT/gemm_emu" --all | tail -1
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "ThreadSanitizer: unmutated smem rung (expect no race), then one __syncthreads removed"
$CXX $FLAGS -O1 -g -fsanitize=thread kernels/emu/driver.cpp -o "$OUT/gemm_tsan" || exit 1
"$OUT/gemm_tsan" smem 40 40 40 --bias 2>&1 | grep -E "PASS|FAIL|SUMMARY"
sed '/sync:smem-tiles-written/d' kernels/gemm.cu > "$OUT/gemm_nosync.cu"
$CXX $FLAGS -O1 -g -fsanitize=thread -DKEEL_GEMM_CU="\"$OUT/gemm_nosync.cu\"" \
    kernels/emu/driver.cpp -o "$OUT/gemm_tsan_nosync" || exit 1
"$OUT/gemm_tsan_nosync" smem 40 40 40 --bias 2>&1 | grep -E "PASS|FAIL|SUMMARY"
[ "${PIPESTATUS[0]}" != 0 ] || { echo "expected a race report"; status=1; }

step "Fragment mutation: tf32 rung with A registers a1 and a2 swapped (expect FAIL)"
sed -e 's/a\[mt\]\[1\] = keel_f32_to_tf32(p\[8 \* APITCH\]);/a[mt][1] = keel_f32_to_tf32(p[4]);/' \
    -e 's/a\[mt\]\[2\] = keel_f32_to_tf32(p\[4\]);/a[mt][2] = keel_f32_to_tf32(p[8 * APITCH]);/' \
    kernels/gemm.cu > "$OUT/gemm_swap.cu"
$CXX $FLAGS -O1 -DKEEL_GEMM_CU="\"$OUT/gemm_swap.cu\"" kernels/emu/driver.cpp \
    -o "$OUT/gemm_swap" || exit 1
"$OUT/gemm_swap" tf32 63 47 130 | head -1
[ "${PIPESTATUS[0]}" = 1 ] || { echo "expected FAIL"; status=1; }

step "Missing cp.async wait in the async rung (expect FAIL: the stage is still NaN-poisoned)"
sed 's/keel_cp_async_wait<STAGES - 2>();  \/\/ this thread/keel_cp_async_wait<STAGES - 1>();  \/\/ this thread/' \
    kernels/gemm.cu > "$OUT/gemm_nowait.cu"
$CXX $FLAGS -O1 -DKEEL_GEMM_CU="\"$OUT/gemm_nowait.cu\"" kernels/emu/driver.cpp \
    -o "$OUT/gemm_nowait" || exit 1
"$OUT/gemm_nowait" async 63 47 130 | head -1
[ "${PIPESTATUS[0]}" = 1 ] || { echo "expected FAIL"; status=1; }

echo
[ $status = 0 ] && echo "run_checks: all as expected" || echo "run_checks: SOMETHING UNEXPECTED"
exit $status
