// gemm_sm90a.cu — the Hopper rung of the GEMM ladder: wgmma fed by TMA (sm_90a only).
//
// C (M x N, f32, row-major) = A (M x K, bf16, row-major) · B (K x N, bf16, row-major)
// [+ bias[n]] [ReLU keeping NaN], f32 accumulation. Compiled only with
// --gpu-architecture=sm_90a; never built for the CPU (the emulator cannot decode tensor maps
// or wgmma descriptors), so it is compile-checked here and must be validated on a GPU.
//
// ---- What the host passes -------------------------------------------------------------------
// Kernel:
//   extern "C" __global__ void gemm_bf16_wgmma(const __grid_constant__ KeelTensorMap tmA,
//       const __grid_constant__ KeelTensorMap tmB, float* C, const float* bias,
//       int M, int N, int K, int relu);
//   KeelTensorMap = the 128-byte CUtensorMap from cuTensorMapEncodeTiled, passed by value.
// Launch: grid = (ceil(N / 256), ceil(M / 128), 1), block = (384, 1, 1),
//   dynamic shared memory = 197888 bytes (set CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
// Requirements: K % 8 == 0 and N % 8 == 0 (TMA needs row pitches that are multiples of 16
//   bytes), A and B 16-byte aligned (cudaMalloc'd buffers are). M is free; K and N need not
//   be multiples of the tile: TMA zero-fills whatever lies outside A and B, and the C stores
//   are bounds-checked. Other shapes: use the `bf16` rung (gemm_bf16_mma in gemm.cu).
// Tensor map of A — cuTensorMapEncodeTiled(&tmA, ...):
//   tensorDataType   CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
//   tensorRank       2
//   globalAddress    A
//   globalDim        {K, M}              (innermost first: columns, then rows)
//   globalStrides    {K * 2}             (bytes between rows; rank-1 entries)
//   boxDim           {64, 128}           (64 bf16 = 128 bytes of K, 128 rows of M)
//   elementStrides   {1, 1}
//   interleave       CU_TENSOR_MAP_INTERLEAVE_NONE
//   swizzle          CU_TENSOR_MAP_SWIZZLE_128B
//   l2Promotion      CU_TENSOR_MAP_L2_PROMOTION_L2_128B   (performance only; 256B also fine)
//   oobFill          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE    (out-of-bounds elements read as 0)
// Tensor map of B — the same except:
//   globalAddress    B
//   globalDim        {N, K}
//   globalStrides    {N * 2}
//   boxDim           {64, 64}            (64 bf16 = 128 bytes of N, 64 rows of K)
// (keel's src/cuda/tma.rs gemm_tile_a / gemm_tile_b encode exactly these.)
//
// ---- How it works ---------------------------------------------------------------------------
// block=(384,1,1) tile=128x256 BK=64 stages=4, warp-specialised:
//   * warpgroup 0 (threads 0-127) is the producer: one thread issues, per k-tile, one TMA copy
//     of A's 128x64 box and four of B's 64x64 boxes into a pipeline stage, announcing the
//     bytes on the stage's `full` mbarrier; the TMA engine does the address arithmetic, the
//     bounds checks (zero fill) and the 128-byte swizzle, without occupying any registers;
//   * warpgroups 1 and 2 are consumers: each waits for a stage to be `full`, then issues four
//     wgmma.m64n256k16 (its 64 rows x the tile's 256 columns, 16 of the 64 k per instruction)
//     that read A and B straight from shared memory through descriptors, keeps one k-tile's
//     wgmmas in flight, and arrives on the previous stage's `empty` mbarrier once those have
//     completed, which lets the producer refill it.
//   wgmma is the only way to reach Hopper's full tensor throughput (mma.sync, rung `bf16`,
//   tops out well below it); a 128x256 tile per 2 warpgroups is CUTLASS's usual bf16 shape.
// Shared memory per stage: A 128 rows x 128 bytes (16 KiB), B 4 boxes of 64 k-rows x 128 bytes
// (32 KiB); each box is stored as TMA writes it with SWIZZLE_128B: 128-byte rows, the 16-byte
// chunks of row r XOR-permuted by (r % 8), repeating every 1024 bytes — hence 1024-byte
// aligned stages. 4 * 48 KiB + 1 KiB alignment slack + 256 bytes of barriers = 197888 bytes.
// wgmma descriptors (CUTLASS's canonical GMMA layouts, cute/atom/mma_traits_sm90_gmma.hpp):
//   A, K-major, 128B swizzle: rows 128 bytes apart, 8-row groups 1024 bytes apart
//     (SBO = 1024; LBO unused for swizzled K-major, set to 16); the k16 slice kk starts
//     32 * kk bytes into the row (the hardware applies the swizzle to the computed address).
//   B, MN-major (transpose bit set), 128B swizzle: 64 n-values per 128-byte row, k-rows 128
//     bytes apart, 8-k-row groups 1024 bytes apart (SBO = 1024), the next 64 n-values in the
//     next TMA box 8192 bytes on (LBO = 8192); the k16 slice kk starts 2048 * kk bytes on.
// Not done: thread-block clusters / TMA multicast, persistent scheduling, setmaxnreg register
// rebalancing, a TMA store epilogue. This rung has not yet run on a GPU.

#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "gemm_sm90a.cu needs --gpu-architecture=sm_90a (wgmma, TMA)"
#endif

namespace keel_wgmma {
constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4;
constexpr int A_BYTES = BM * BK * 2;               // one TMA box {64, 128}: 16384
constexpr int B_BOX_N = 64;                        // n-values per B box (128 bytes)
constexpr int B_BOX_BYTES = BK * B_BOX_N * 2;      // one TMA box {64, 64}: 8192
constexpr int B_BYTES = (BN / B_BOX_N) * B_BOX_BYTES;  // 32768
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;     // 49152, a multiple of 1024
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 + 256;
static_assert(SMEM_BYTES == 197888, "update gemm_rungs.json and the header above");
static_assert(STAGE_BYTES % 1024 == 0 && A_BYTES % 1024 == 0, "swizzle atoms need 1024 B");
constexpr int CONSUMER_THREADS = 256;
}  // namespace keel_wgmma

extern "C" __global__ void __launch_bounds__(384, 1)
gemm_bf16_wgmma(const __grid_constant__ KeelTensorMap tmA,
                const __grid_constant__ KeelTensorMap tmB, float* C, const float* bias, int M,
                int N, int K, int relu) {
    using namespace keel_wgmma;
    KEEL_DYNAMIC_SMEM(unsigned char, raw);
    // The dynamic window is only 16-byte aligned by declaration: round up to 1024.
    unsigned char* base = raw + ((1024u - (keel_smem_addr(raw) & 1023u)) & 1023u);
    unsigned long long* full = reinterpret_cast<unsigned long long*>(base + STAGES * STAGE_BYTES);
    unsigned long long* empty = full + STAGES;

    const int wg = threadIdx.x / 128;  // 0: producer; 1, 2: consumers
    const int wt = threadIdx.x % 128;  // thread within its warpgroup
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = (K + BK - 1) / BK;

    if (threadIdx.x == 0) {
        keel_prefetch_tensormap(&tmA);
        keel_prefetch_tensormap(&tmB);
        for (int s = 0; s < STAGES; ++s) {
            keel_mbarrier_init(&full[s], 1);                  // the producer's arrive + bytes
            keel_mbarrier_init(&empty[s], CONSUMER_THREADS);  // every consumer thread
        }
        keel_fence_barrier_init();
    }
    __syncthreads();  // barriers initialised before anyone waits on them; the last block-wide
                      // barrier: producer threads return early below

    if (wg == 0) {
        if (wt == 0) {
            for (int kt = 0; kt < ktiles; ++kt) {
                const int s = kt % STAGES;
                // Round r = kt / STAGES reuses stage s: wait until the consumers released
                // round r-1 (phase r-1 of empty[s]); for r = 0 the parity-1 wait returns at once.
                keel_mbarrier_wait(&empty[s], ((kt / STAGES) & 1) ^ 1);
                keel_mbarrier_arrive_expect_tx(&full[s], STAGE_BYTES);
                unsigned char* st = base + s * STAGE_BYTES;
                keel_tma_load_2d(st, &tmA, &full[s], kt * BK, m0);  // (k, m)
#pragma unroll
                for (int j = 0; j < BN / B_BOX_N; ++j)  // (n, k)
                    keel_tma_load_2d(st + A_BYTES + j * B_BOX_BYTES, &tmB, &full[s],
                                     n0 + j * B_BOX_N, kt * BK);
            }
        }
        return;
    }

    // Consumers: warpgroup c = wg - 1 owns rows 64c .. 64c+63 of the tile.
    const int c = wg - 1;
    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.0f;

    for (int kt = 0; kt < ktiles; ++kt) {
        const int s = kt % STAGES;
        keel_mbarrier_wait(&full[s], (kt / STAGES) & 1);  // A and B of tile kt have landed
        const unsigned char* a = base + s * STAGE_BYTES + c * 64 * 128;
        const unsigned char* b = base + s * STAGE_BYTES + A_BYTES;
#pragma unroll
        for (int i = 0; i < 128; ++i) keel_fence_operand(d[i]);
        keel_wgmma_fence();  // accumulator registers settled before the async MMAs use them
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            const unsigned long long da = keel_wgmma_desc_sw128(a + kk * 32, 16, 1024);
            const unsigned long long db =
                keel_wgmma_desc_sw128(b + kk * 16 * 128, B_BOX_BYTES, 1024);
            keel_wgmma_m64n256k16_bf16(d, da, db);
        }
        keel_wgmma_commit();
        // Keep this k-tile's wgmmas in flight; once the previous tile's have completed, its
        // stage can be refilled.
        keel_wgmma_wait<1>();
#pragma unroll
        for (int i = 0; i < 128; ++i) keel_fence_operand(d[i]);
        if (kt > 0) keel_mbarrier_arrive(&empty[(kt - 1) % STAGES]);
    }
    keel_wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 128; ++i) keel_fence_operand(d[i]);

    // Epilogue: warp w of the warpgroup holds rows 16w..16w+15; n8 block j holds columns
    // 8j..8j+7 as an m16n8 fragment (see keel_wgmma_m64n256k16_bf16).
    const int warp = wt / 32, lane = wt % 32, g = lane / 4, t = lane % 4;
    const int row = m0 + c * 64 + warp * 16 + g;
    const bool vec2 = N % 2 == 0 && (reinterpret_cast<unsigned long long>(C) & 7) == 0;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
        keel_store_frag(C, bias, relu, M, N, row, n0 + j * 8 + 2 * t, &d[4 * j], vec2);
}
