// prelude.cuh — prepended by keel's loader to every kernel module (NVRTC reads no header from
// disk, so modules have no #include). It holds:
//   * the inline-PTX wrappers: the ONLY place raw `asm` may appear. Each has a CPU twin with
//     the same name and signature in emu/cuda_emu.h, so the CPU build of a kernel that uses
//     raw asm elsewhere fails to compile — on purpose;
//   * KEEL_DYNAMIC_SMEM(type, name): a pointer to the block's dynamic shared memory;
//   * keel_epilogue: the GEMM epilogue every rung shares (bias, then ReLU that keeps NaN).
// bf16 values are `unsigned short` bit patterns throughout (no cuda_bf16.h); the mma wrappers
// take them packed two per 32-bit register, the lower k (or column) in the low half.

#ifndef KEEL_EMU

// ----- shared memory ---------------------------------------------------------------------------

// One declaration name and type for every kernel of a module (redeclaring an `extern
// __shared__` array with another type is an error), 16-byte aligned for vector accesses.
#define KEEL_DYNAMIC_SMEM(type, name)                                   \
    extern __shared__ __align__(16) unsigned char keel_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(keel_dynamic_smem_)

// The 32-bit shared-window address PTX instructions take for [smem] operands.
__device__ __forceinline__ unsigned keel_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ----- TF32 / BF16 tensor cores (sm_80+) -------------------------------------------------------

// cvt.rna.tf32.f32: round to nearest (ties away from zero) to TF32's 10 mantissa bits. The
// tensor core would otherwise just ignore the low 13 bits (truncation: a biased error).
__device__ __forceinline__ unsigned keel_f32_to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// D = A (16x8, row) · B (8x8, col) + D, TF32 inputs, f32 accumulators. Fragments (PTX ISA,
// g = lane/4, t = lane%4): a = {(g,t), (g+8,t), (g,t+4), (g+8,t+4)}, b = {(k=t,n=g),
// (k=t+4,n=g)}, d = {(g,2t), (g,2t+1), (g+8,2t), (g+8,2t+1)}.
__device__ __forceinline__ void keel_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                      const unsigned (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D = A (16x16, row) · B (16x8, col) + D, BF16 inputs, f32 accumulators. Registers hold bf16
// pairs: a = {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..2t+9), (g+8, 2t+8..)},
// b = {(k=2t..2t+1, n=g), (k=2t+8..2t+9, n=g)}; d as for TF32.
__device__ __forceinline__ void keel_mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                       const unsigned (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldmatrix: lanes 8i..8i+7 give the (16-byte aligned) row addresses of 8x8 b16 matrix i;
// register i of lane l gets row l/4, columns 2(l%4)..+1 of matrix i (.trans: rows 2(l%4)..+1
// of column l/4, i.e. a fragment of the transposed matrix).
__device__ __forceinline__ void keel_ldmatrix_x4(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(keel_smem_addr(row)));
}
__device__ __forceinline__ void keel_ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(keel_smem_addr(row)));
}
__device__ __forceinline__ void keel_ldmatrix_x2(unsigned (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(keel_smem_addr(row)));
}
__device__ __forceinline__ void keel_ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(keel_smem_addr(row)));
}

// ----- cp.async (sm_80+): global -> shared without passing through registers ------------------
// The src-size form: `src_bytes` (0..size) bytes are read, the rest of the destination is
// zero-filled — how the kernels pad ragged tiles without a branch around the copy. .cg (16
// bytes only) bypasses L1: the tile is reused from shared memory, not from L1.
__device__ __forceinline__ void keel_cp_async_16(void* smem, const void* gmem,
                                                 unsigned src_bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(keel_smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void keel_cp_async_16_ca(void* smem, const void* gmem,
                                                    unsigned src_bytes = 16) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(keel_smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void keel_cp_async_8(void* smem, const void* gmem,
                                                unsigned src_bytes = 8) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(keel_smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void keel_cp_async_4(void* smem, const void* gmem,
                                                unsigned src_bytes = 4) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(keel_smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes)
                 : "memory");
}
// Close the group of copies issued since the last commit.
__device__ __forceinline__ void keel_cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Wait until at most N committed groups are still in flight (this thread's copies only: a
// __syncthreads must follow before other threads read the data).
template <int N>
__device__ __forceinline__ void keel_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ----- Hopper (sm_90a only): mbarrier, TMA, wgmma ---------------------------------------------
// No CPU twins: the CPU build cannot decode tensor maps or wgmma descriptors, so
// gemm_sm90a.cu is compile-checked here and validated on a GPU.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// The 128-byte CUtensorMap the host encodes (cuTensorMapEncodeTiled) and passes by value as
// a `const __grid_constant__` kernel parameter; its bytes are opaque to the kernel.
struct __align__(64) KeelTensorMap {
    unsigned long long opaque[16];
};

__device__ __forceinline__ void keel_mbarrier_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(keel_smem_addr(bar)),
                 "r"(count)
                 : "memory");
}
// Make initialised barriers visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void keel_fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// Arrive once and announce `bytes` of transactions (the TMA copies) that complete the phase.
__device__ __forceinline__ void keel_mbarrier_arrive_expect_tx(unsigned long long* bar,
                                                               unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                     keel_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void keel_mbarrier_arrive(unsigned long long* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(keel_smem_addr(bar))
                 : "memory");
}
// Block until the phase with parity `parity` has completed. A fresh barrier is in phase 0,
// so waiting for parity 1 returns at once (the "previous" phase counts as complete).
// A phase that never completes (wrong byte count, bad tensor map) would hang the GPU; after
// ~2^34 cycles (~10 s) the kernel traps instead, so the launch fails with an error.
__device__ __forceinline__ void keel_mbarrier_wait(unsigned long long* bar, unsigned parity) {
    const unsigned addr = keel_smem_addr(bar);
    const long long start = clock64();
    unsigned done = 0;
    while (!done) {
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(addr), "r"(parity)
            : "memory");
        if (!done && clock64() - start > (1ll << 34)) __trap();
    }
}

__device__ __forceinline__ void keel_prefetch_tensormap(const KeelTensorMap* map) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<unsigned long long>(map))
                 : "memory");
}
// TMA: copy the box at (c0 = inner/column coordinate, c1 = row coordinate) of `map` into
// shared memory at `dst`, completing `bytes` transactions on `bar`. Out-of-bounds elements
// are zero-filled (and still counted).
__device__ __forceinline__ void keel_tma_load_2d(void* dst, const KeelTensorMap* map,
                                                 unsigned long long* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%3, %4}], [%2];" ::"r"(keel_smem_addr(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(keel_smem_addr(bar)), "r"(c0),
        "r"(c1)
        : "memory");
}

// wgmma shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address,
// leading- and stride-dimension byte offsets (all >> 4), swizzle mode in bits 62-63
// (1 = 128-byte swizzle). Base offset 0: every tile starts 1024-byte aligned.
__device__ __forceinline__ unsigned long long keel_wgmma_desc_sw128(const void* smem,
                                                                    unsigned lbo_bytes,
                                                                    unsigned sbo_bytes) {
    unsigned long long d = 0;
    d |= (unsigned long long)((keel_smem_addr(smem) & 0x3ffff) >> 4);
    d |= (unsigned long long)((lbo_bytes & 0x3ffff) >> 4) << 16;
    d |= (unsigned long long)((sbo_bytes & 0x3ffff) >> 4) << 32;
    d |= 1ull << 62;
    return d;
}

__device__ __forceinline__ void keel_wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void keel_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void keel_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keep the compiler from moving accesses to an accumulator register across wgmma fences.
__device__ __forceinline__ void keel_fence_operand(float& r) {
    asm volatile("" : "+f"(r)::"memory");
}

// Warpgroup MMA: D (64x256 f32, 128 registers per thread) += A (64x16 bf16, K-major in shared
// memory) · B (16x256 bf16, MN-major in shared memory: the transpose bit is set).
// Accumulator layout: warp w of the warpgroup holds rows 16w..16w+15; register 4j+i of lane
// (g = lane/4, t = lane%4) is row 16w + g + 8*(i/2), column 8j + 2t + (i%2).
#define KEEL_WGMMA_D8(i)                                                                   \
    "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]),        \
        "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
__device__ __forceinline__ void keel_wgmma_m64n256k16_bf16(float (&d)[128],
                                                           unsigned long long desc_a,
                                                           unsigned long long desc_b) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, 1, 0;\n\t"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, "
        "%110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, "
        "%123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 1;\n\t}"  // scale-d = 1 (accumulate), scale a/b = 1,
                                           // A K-major (0), B MN-major (transpose, 1)
        : KEEL_WGMMA_D8(0), KEEL_WGMMA_D8(8), KEEL_WGMMA_D8(16), KEEL_WGMMA_D8(24),
          KEEL_WGMMA_D8(32), KEEL_WGMMA_D8(40), KEEL_WGMMA_D8(48), KEEL_WGMMA_D8(56),
          KEEL_WGMMA_D8(64), KEEL_WGMMA_D8(72), KEEL_WGMMA_D8(80), KEEL_WGMMA_D8(88),
          KEEL_WGMMA_D8(96), KEEL_WGMMA_D8(104), KEEL_WGMMA_D8(112), KEEL_WGMMA_D8(120)
        : "l"(desc_a), "l"(desc_b));
}
#undef KEEL_WGMMA_D8

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

#endif  // !KEEL_EMU

// ----- shared by both builds -------------------------------------------------------------------

__device__ __forceinline__ int keel_ceil_div(int a, int b) { return (a + b - 1) / b; }

// The GEMM epilogue: + bias[n] when there is a bias, then ReLU when asked. ReLU keeps NaN
// (`v > 0 || v != v ? v : 0`), as keel's CPU kernels do, so a NaN upstream stays visible.
__device__ __forceinline__ float keel_epilogue(float v, const float* bias, int n, int relu) {
    if (bias != nullptr) v += bias[n];
    if (relu) v = (v > 0.0f || v != v) ? v : 0.0f;
    return v;
}

// Store one m16n8 accumulator fragment through the epilogue: d[0], d[1] at row r, columns c
// and c+1; d[2], d[3] at row r+8 (mma.sync's C layout, and that of every n8 column block of
// wgmma's accumulators). A float2 store when the pair is in range and 8-byte aligned.
__device__ __forceinline__ void keel_store_frag(float* C, const float* bias, int relu, int M,
                                                int N, int r, int c, const float* d, bool vec2) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = r + 8 * h;
        if (m >= M || c >= N) continue;
        float* p = C + (long long)m * N + c;
        const float v0 = keel_epilogue(d[2 * h], bias, c, relu);
        if (vec2) {  // N even and C 8-byte aligned: c is even, so c + 1 < N too
            *reinterpret_cast<float2*>(p) =
                make_float2(v0, keel_epilogue(d[2 * h + 1], bias, c + 1, relu));
        } else {
            p[0] = v0;
            if (c + 1 < N) p[1] = keel_epilogue(d[2 * h + 1], bias, c + 1, relu);
        }
    }
}

// One BK-deep k tile of a warp's 64 x (8*NT) output on TF32 tensor cores, from the stage's
// shared tiles: A row-major (pitch APITCH floats), B k-major (pitch BPITCH). Lane (g, t) =
// (lane / 4, lane % 4) loads mma.m16n8k8's fragments, rounding each element to TF32 as it
// goes. The GEMM ladder's tf32 rung and the TF32 convolution share it: they differ only in how
// the tiles got into shared memory.
template <int BK, int APITCH, int BPITCH, int NT>
__device__ __forceinline__ void keel_tf32_warp_tile(const float* as, const float* bs, int wm,
                                                    int wn, int g, int t,
                                                    float (&acc)[4][NT][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 8) {
        unsigned a[4][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {  // A fragment: (g,t) (g+8,t) (g,t+4) (g+8,t+4)
            const float* p = as + (wm + mt * 16 + g) * APITCH + kk + t;
            a[mt][0] = keel_f32_to_tf32(p[0]);
            a[mt][1] = keel_f32_to_tf32(p[8 * APITCH]);
            a[mt][2] = keel_f32_to_tf32(p[4]);
            a[mt][3] = keel_f32_to_tf32(p[8 * APITCH + 4]);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {  // B fragment: (k=t, n=g) (k=t+4, n=g)
            const float* p = bs + (kk + t) * BPITCH + wn + nt * 8 + g;
            b[nt][0] = keel_f32_to_tf32(p[0]);
            b[nt][1] = keel_f32_to_tf32(p[4 * BPITCH]);
        }
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) keel_mma_m16n8k8_tf32(acc[mt][nt], a[mt], b[nt]);
    }
}

// The same for BF16 (mma.m16n8k16): fragments come through ldmatrix, A's four 8x8 matrices at
// once, B's two n8 fragments per ldmatrix.x4.trans. (lrow, lcol) is the lane's row and column
// block within a 16-row slab (see the bf16 GEMM rung).
template <int BK, int APITCH, int BPITCH, int NT>
__device__ __forceinline__ void keel_bf16_warp_tile(const unsigned short* as,
                                                    const unsigned short* bs, int wm, int wn,
                                                    int lrow, int lcol,
                                                    float (&acc)[4][NT][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        unsigned a[4][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
            keel_ldmatrix_x4(a[mt], as + (wm + mt * 16 + lrow) * APITCH + kk + lcol);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned r[4];
            keel_ldmatrix_x4_trans(r, bs + (kk + lrow) * BPITCH + wn + np * 16 + lcol);
            b[2 * np][0] = r[0];
            b[2 * np][1] = r[1];
            b[2 * np + 1][0] = r[2];
            b[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) keel_mma_m16n8k16_bf16(acc[mt][nt], a[mt], b[nt]);
    }
}

// NaN-propagating max, as keel's CPU kernels and Keras (TensorFlow) do: a NaN anywhere in a
// window is the window's max.
__device__ __forceinline__ float keel_max_nan(float a, float b) {
    return (a > b || a != a) ? a : b;
}

// Whether `p` may be read with 16-byte vector loads or copies.
__device__ __forceinline__ bool keel_aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15) == 0;
}

// f32 -> bf16 bits, round to nearest even (as the `half` crate rounds on the host), NaN kept
// quiet. Plain integer code: identical in the CPU build.
__device__ __forceinline__ unsigned short keel_f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Stage a BK x BN tile of the row-major K x N f32 matrix B at (k0, n0) into shared memory
// (row pitch BPITCH) with cp.async by all 256 threads, zero-filled outside B: 16-byte copies
// when `vec` (N % 4 == 0 and B 16-byte aligned, so a 4-column chunk is wholly inside or
// wholly outside), 4-byte ones otherwise. The GEMM ladder's async and tf32 rungs and the
// fp32/TF32 convolutions stage their B (weight) tiles this way.
template <int BK, int BN, int BPITCH>
__device__ __forceinline__ void keel_stage_b_f32(float* bs, const float* B, int k0, int n0,
                                                 int K, int N, int tid, bool vec) {
    if (vec) {
#pragma unroll
        for (int i = 0; i < BK * BN / 4 / 256; ++i) {
            const int idx = tid + 256 * i, r = idx / (BN / 4), c = (idx % (BN / 4)) * 4;
            const bool in = k0 + r < K && n0 + c < N;
            keel_cp_async_16(bs + r * BPITCH + c, in ? B + (long long)(k0 + r) * N + n0 + c : B,
                             in ? 16 : 0);
        }
    } else {
#pragma unroll 4
        for (int i = 0; i < BK * BN / 256; ++i) {
            const int idx = tid + 256 * i, r = idx / BN, c = idx % BN;
            const bool in = k0 + r < K && n0 + c < N;
            keel_cp_async_4(bs + r * BPITCH + c, in ? B + (long long)(k0 + r) * N + n0 + c : B,
                            in ? 4 : 0);
        }
    }
}
