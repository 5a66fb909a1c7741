// gemm.cu — keel's GEMM ladder: C (M x N) = A (M x K) · B (K x N), row-major, then
// `+ bias[n]` when bias != nullptr and ReLU (keeping NaN) when relu != 0 — for ANY M, N, K >= 1
// (odd sizes, K not a multiple of the tile, 1x1x1) and no alignment promised by the caller.
//
// Every rung is one idea on top of the previous one (after siboehm's SGEMM worklog); the
// comment above each kernel says what changed and why it should be faster. Grid convention:
// blockIdx.x walks column tiles, blockIdx.y row tiles: grid = (ceil(N/BN), ceil(M/BM), 1).
// kernels/gemm_rungs.json lists the same geometry for the launch code.
//
//   rung          kernel               block        tile      dyn. smem  static smem  precision
//   naive         gemm_naive           (16,16,1)    16x16     0          0            fp32
//   coalesced     gemm_coalesced       (32,8,1)     8x32      0          0            fp32
//   smem          gemm_smem            (32,32,1)    32x32     0          8 KiB        fp32
//   blocktile_1d  gemm_blocktile_1d    (512,1,1)    64x64     0          4 KiB        fp32
//   blocktile_2d  gemm_blocktile_2d    (256,1,1)    128x128   0          8 KiB        fp32
//   vectorized    gemm_vectorized      (256,1,1)    128x128   0          8 KiB        fp32
//   warptile      gemm_warptile        (256,1,1)    128x128   0          16.25 KiB    fp32
//   async         gemm_async           (256,1,1)    128x128   49920      0            fp32
//   tf32          gemm_tf32            (256,1,1)    128x128   107520     0            tf32
//   bf16          gemm_bf16_mma        (256,1,1)    128x256   81408      0            bf16
// (The sm_90a rung — wgmma fed by TMA — is in gemm_sm90a.cu.) Dynamic shared memory above
// 48 KiB needs cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES), which the launcher sets.
//
// Build: keel prepends prelude.cuh (wrappers, KEEL_DYNAMIC_SMEM, keel_epilogue) and compiles
// with NVRTC for sm_80/sm_90, or with g++ against emu/cuda_emu.h for the CPU tests
// (kernels/emu/README.md has the commands).

// ----- helpers shared by the fp32 rungs --------------------------------------------------------


// Four consecutive elements of row r of a rows x cols row-major matrix, from column c, with
// zeros outside the matrix. `vec` (cols % 4 == 0 and a 16-byte aligned base, checked once per
// block) allows a single 16-byte load; ragged or unaligned data takes the scalar path.
__device__ __forceinline__ float4 keel_load4(const float* p, int rows, int cols, int r, int c,
                                             bool vec) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r >= rows || c >= cols) return v;
    const float* row = p + (long long)r * cols;
    if (vec) return *reinterpret_cast<const float4*>(row + c);  // c % 4 == 0, all 4 in range
    v.x = row[c];
    if (c + 1 < cols) v.y = row[c + 1];
    if (c + 2 < cols) v.z = row[c + 2];
    if (c + 3 < cols) v.w = row[c + 3];
    return v;
}

// Store four results of row r from column c through the epilogue; 16 bytes at once when the
// row pitch, the base and the column allow it, else element by element up to column N.
__device__ __forceinline__ void keel_store4(float* C, const float* bias, int relu, int M, int N,
                                            int r, int c, float4 v, bool vec) {
    if (r >= M || c >= N) return;
    float* row = C + (long long)r * N;
    v.x = keel_epilogue(v.x, bias, c, relu);
    if (vec) {
        v.y = keel_epilogue(v.y, bias, c + 1, relu);
        v.z = keel_epilogue(v.z, bias, c + 2, relu);
        v.w = keel_epilogue(v.w, bias, c + 3, relu);
        *reinterpret_cast<float4*>(row + c) = v;
        return;
    }
    row[c] = v.x;
    if (c + 1 < N) row[c + 1] = keel_epilogue(v.y, bias, c + 1, relu);
    if (c + 2 < N) row[c + 2] = keel_epilogue(v.z, bias, c + 2, relu);
    if (c + 3 < N) row[c + 3] = keel_epilogue(v.w, bias, c + 3, relu);
}

__device__ __forceinline__ float keel_f4(const float4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // folds away once unrolled
}

// ================================================================================================
// 1. naive — block=(16,16,1) tile=16x16 dynamic_smem=0
// One thread per element of C, but threadIdx.x walks *rows*: the 16 threads of a half-warp read
// A from 16 rows K floats apart and write C N floats apart, so every load of A and every store
// of C is its own memory transaction. The baseline everything else is measured against.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(256)
gemm_naive(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
           int relu) {
    const int m = blockIdx.y * 16 + threadIdx.x;
    const int n = blockIdx.x * 16 + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long long)m * K + k] * B[(long long)k * N + n];
    C[(long long)m * N + n] = keel_epilogue(acc, bias, n, relu);
}

// ================================================================================================
// 2. coalesced — block=(32,8,1) tile=8x32 dynamic_smem=0
// Same arithmetic; threadIdx.x now walks *columns*. A warp reads 32 consecutive floats of a row
// of B (one 128-byte transaction), one broadcast element of A, and writes 128 contiguous bytes of
// C. Every byte fetched is used, so the kernel moves ~1/16 of the transactions of `naive`.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(256)
gemm_coalesced(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
               int relu) {
    const int n = blockIdx.x * 32 + threadIdx.x;
    const int m = blockIdx.y * 8 + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long long)m * K + k] * B[(long long)k * N + n];
    C[(long long)m * N + n] = keel_epilogue(acc, bias, n, relu);
}

// ================================================================================================
// 3. smem — block=(32,32,1) tile=32x32 BK=32 dynamic_smem=0 (static 8 KiB)
// Shared-memory tiling: the block stages a 32x32 tile of A and of B in shared memory, and each
// element loaded from global memory is then used 32 times (by a row or a column of threads)
// instead of once. Global traffic drops 32x; the inner loop reads shared memory (A broadcast
// along a warp, B 32 consecutive floats: no bank conflicts). Out-of-range elements are stored
// as 0 so the tile loop needs no bounds checks.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(1024)
gemm_smem(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
          int relu) {
    constexpr int T = 32;
    __shared__ float As[T][T];
    __shared__ float Bs[T][T];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m = blockIdx.y * T + ty, n = blockIdx.x * T + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += T) {
        As[ty][tx] = (m < M && k0 + tx < K) ? A[(long long)m * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (k0 + ty < K && n < N) ? B[(long long)(k0 + ty) * N + n] : 0.0f;
        __syncthreads();  // sync:smem-tiles-written — both tiles complete before anyone reads
#pragma unroll
        for (int k = 0; k < T; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();  // sync:smem-tiles-read — nobody overwrites a tile still being read
    }
    if (m < M && n < N) C[(long long)m * N + n] = keel_epilogue(acc, bias, n, relu);
}

// ================================================================================================
// 4. blocktile_1d — block=(512,1,1) tile=64x64 BK=8 TM=8 dynamic_smem=0 (static 4 KiB)
// Each thread computes a column of TM=8 results instead of one. The B value it reads from shared
// memory is reused 8 times from a register, so shared-memory loads per FMA drop from 2 to ~1.1,
// and the 64x64 tile halves global traffic per FMA again compared with 32x32.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(512)
gemm_blocktile_1d(const float* A, const float* B, float* C, const float* bias, int M, int N,
                  int K, int relu) {
    constexpr int BM = 64, BN = 64, BK = 8, TM = 8;
    __shared__ float As[BM * BK];  // As[m][k]
    __shared__ float Bs[BK * BN];  // Bs[k][n]
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tcol = tid % BN, trow = tid / BN;  // results: rows trow*TM .. +7, column tcol
    const int a_r = tid / BK, a_c = tid % BK;    // one element of each tile per thread
    const int b_r = tid / BN, b_c = tid % BN;
    float acc[TM] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        const int am = m0 + a_r, ak = k0 + a_c, bk = k0 + b_r, bn = n0 + b_c;
        As[a_r * BK + a_c] = (am < M && ak < K) ? A[(long long)am * K + ak] : 0.0f;
        Bs[b_r * BN + b_c] = (bk < K && bn < N) ? B[(long long)bk * N + bn] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float b = Bs[k * BN + tcol];
#pragma unroll
            for (int i = 0; i < TM; ++i) acc[i] += As[(trow * TM + i) * BK + k] * b;
        }
        __syncthreads();
    }
    const int n = n0 + tcol;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
        if (m < M && n < N) C[(long long)m * N + n] = keel_epilogue(acc[i], bias, n, relu);
    }
}

// ================================================================================================
// 5. blocktile_2d — block=(256,1,1) tile=128x128 BK=8 TM=TN=8 dynamic_smem=0 (static 8 KiB)
// Each thread computes an 8x8 square: per k it loads 8 values of A and 8 of B into registers and
// does 64 FMAs (an outer product), so shared-memory loads per FMA drop to 1/4, and the 128x128
// tile halves global traffic per FMA again. Arithmetic intensity is now high enough for the
// kernel to be limited by instruction issue rather than memory.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(256)
gemm_blocktile_2d(const float* A, const float* B, float* C, const float* bias, int M, int N,
                  int K, int relu) {
    constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
    __shared__ float As[BM * BK];  // As[m][k]
    __shared__ float Bs[BK * BN];  // Bs[k][n]
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int trow = tid / (BN / TN), tcol = tid % (BN / TN);  // 16 x 16 threads
    float acc[TM][TN] = {};
    float regM[TM], regN[TN];
    for (int k0 = 0; k0 < K; k0 += BK) {
        // 1024 elements per tile, 4 per thread; a warp reads 4 rows x 8 floats of A and
        // 32 consecutive floats of a row of B per step.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int ar = tid / BK + 32 * i, ac = tid % BK;
            const int am = m0 + ar, ak = k0 + ac;
            As[ar * BK + ac] = (am < M && ak < K) ? A[(long long)am * K + ak] : 0.0f;
            const int br = tid / BN + 2 * i, bc = tid % BN;
            const int bk = k0 + br, bn = n0 + bc;
            Bs[br * BN + bc] = (bk < K && bn < N) ? B[(long long)bk * N + bn] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int i = 0; i < TM; ++i) regM[i] = As[(trow * TM + i) * BK + k];
#pragma unroll
            for (int j = 0; j < TN; ++j) regN[j] = Bs[k * BN + tcol * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += regM[i] * regN[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n0 + tcol * TN + j;
            if (m < M && n < N) C[(long long)m * N + n] = keel_epilogue(acc[i][j], bias, n, relu);
        }
    }
}

// ================================================================================================
// 6. vectorized — block=(256,1,1) tile=128x128 BK=8 TM=TN=8 dynamic_smem=0 (static 8 KiB)
// 128-bit accesses everywhere: global loads of A and B as float4 (one LDG.128 per thread per
// tile instead of four LDG.32), A stored *transposed* in shared memory (As[k][m]) so the inner
// loop reads a thread's 8 values of A as two LDS.128 instead of eight LDS.32, and float4 stores
// of C. Fewer, wider instructions for the same bytes. Ragged edges, K or N not a multiple of 4,
// or unaligned pointers take a scalar path (zero-filled) decided once per block.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(256)
gemm_vectorized(const float* A, const float* B, float* C, const float* bias, int M, int N,
                int K, int relu) {
    constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
    __shared__ __align__(16) float As[BK][BM];  // transposed: As[k][m]
    __shared__ __align__(16) float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int trow = tid / (BN / TN), tcol = tid % (BN / TN);
    const bool a_vec = K % 4 == 0 && keel_aligned16(A);
    const bool b_vec = N % 4 == 0 && keel_aligned16(B);
    const bool c_vec = N % 4 == 0 && keel_aligned16(C);
    const int a_r = tid / 2, a_k = (tid % 2) * 4;    // A tile: 128 rows x 2 float4
    const int b_r = tid / 32, b_c = (tid % 32) * 4;  // B tile: 8 rows x 32 float4
    float acc[TM][TN] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        const float4 a = keel_load4(A, M, K, m0 + a_r, k0 + a_k, a_vec);
        As[a_k + 0][a_r] = a.x;
        As[a_k + 1][a_r] = a.y;
        As[a_k + 2][a_r] = a.z;
        As[a_k + 3][a_r] = a.w;
        *reinterpret_cast<float4*>(&Bs[b_r][b_c]) = keel_load4(B, K, N, k0 + b_r, n0 + b_c, b_vec);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[k][trow * TM]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[k][trow * TM + 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[k][tcol * TN]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[k][tcol * TN + 4]);
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const float ai = i < 4 ? keel_f4(a0, i) : keel_f4(a1, i - 4);
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] += ai * (j < 4 ? keel_f4(b0, j) : keel_f4(b1, j - 4));
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
#pragma unroll
        for (int j = 0; j < TN; j += 4)
            keel_store4(C, bias, relu, M, N, m, n0 + tcol * TN + j,
                        make_float4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]),
                        c_vec);
    }
}

// ================================================================================================
// 7. warptile — block=(256,1,1) tile=128x128 BK=16 dynamic_smem=0 (static 16.25 KiB)
// Warp tiling: each of the 8 warps owns a 64x32 sub-tile (2 x 4 warps), and within it each lane
// owns 2x2 squares of 4x4 results, 32 rows / 16 columns apart. A warp's 32 lanes then read
// 8 consecutive float4 of A and 4 of B per k: contiguous, conflict-free shared-memory reads
// (rung 6's thread layout has 2-way conflicts on B), and a warp touches a compact region, which
// is also how the tensor-core rungs below are organised. BK=16 halves the barriers per FMA.
// ================================================================================================
// One k step of a warp tile (rungs 7 and 8): the lane's 2 float4 of A (rows lm.. and lm+32..
// of the warp's 64) and 2 of B (columns ln.. and ln+16.. of its 32), then their 8x8 outer
// product. `as_k` and `bs_k` point at row k of the A (transposed) and B tiles.
__device__ __forceinline__ void warptile_step(float (&acc)[8][8], const float* as_k,
                                              const float* bs_k, int wm, int wn, int lm, int ln) {
    float4 a[2], b[2];
#pragma unroll
    for (int im = 0; im < 2; ++im)
        a[im] = *reinterpret_cast<const float4*>(as_k + wm + im * 32 + lm);
#pragma unroll
    for (int in = 0; in < 2; ++in)
        b[in] = *reinterpret_cast<const float4*>(bs_k + wn + in * 16 + ln);
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c)
            acc[r][c] += keel_f4(a[r / 4], r % 4) * keel_f4(b[c / 4], c % 4);
}

// Store a lane's 8x8 results of a warp tile whose corner is (wm0, wn0) in C, through the
// epilogue: rows lm.. and lm+32.., columns ln.. and ln+16.., as float4 where allowed.
__device__ __forceinline__ void warptile_store(const float (&acc)[8][8], float* C,
                                               const float* bias, int relu, int M, int N,
                                               int wm0, int wn0, int lm, int ln, bool c_vec) {
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        const int m = wm0 + (r / 4) * 32 + lm + r % 4;
#pragma unroll
        for (int in = 0; in < 2; ++in)
            keel_store4(C, bias, relu, M, N, m, wn0 + in * 16 + ln,
                        make_float4(acc[r][in * 4], acc[r][in * 4 + 1], acc[r][in * 4 + 2],
                                    acc[r][in * 4 + 3]),
                        c_vec);
    }
}

extern "C" __global__ void __launch_bounds__(256, 2)
gemm_warptile(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
              int relu) {
    constexpr int BM = 128, BN = 128, BK = 16, PAD = 4;
    __shared__ __align__(16) float As[BK][BM + PAD];  // transposed: As[k][m]
    __shared__ __align__(16) float Bs[BK][BN];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;  // warp's sub-tile
    const int lm = (lane / 4) * 4, ln = (lane % 4) * 4;     // lane's 4x4 inside a 32x16 step
    const bool a_vec = K % 4 == 0 && keel_aligned16(A);
    const bool b_vec = N % 4 == 0 && keel_aligned16(B);
    const bool c_vec = N % 4 == 0 && keel_aligned16(C);
    float acc[8][8] = {};  // [im*4 + i][in*4 + j]
    for (int k0 = 0; k0 < K; k0 += BK) {
        // Each tile is 512 float4: two per thread.
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            const int idx = tid + 256 * s;
            const int ar = idx / 4, ak = (idx % 4) * 4;
            const float4 a = keel_load4(A, M, K, m0 + ar, k0 + ak, a_vec);
            As[ak + 0][ar] = a.x;
            As[ak + 1][ar] = a.y;
            As[ak + 2][ar] = a.z;
            As[ak + 3][ar] = a.w;
            const int br = idx / 32, bc = (idx % 32) * 4;
            *reinterpret_cast<float4*>(&Bs[br][bc]) =
                keel_load4(B, K, N, k0 + br, n0 + bc, b_vec);
        }
        __syncthreads();
        // Unrolled by 2, not 16: full unrolling lets the compiler prefetch fragments many k
        // ahead (135 registers: one block per SM); by 2 it stays at ~120, two blocks per SM.
#pragma unroll 2
        for (int k = 0; k < BK; ++k) warptile_step(acc, &As[k][0], &Bs[k][0], wm, wn, lm, ln);
        __syncthreads();
    }
    warptile_store(acc, C, bias, relu, M, N, m0 + wm, n0 + wn, lm, ln, c_vec);
}

// ================================================================================================
// 8. async — block=(256,1,1) tile=128x128 BK=16 stages=3
//    dynamic_smem = 3 * (16*(128+4) + 16*128) * 4 = 49920 bytes
// Multi-stage cp.async pipeline (double buffering generalised to 3 buffers): tiles are copied
// global -> shared by the copy engine without passing through registers, issued two tiles
// ahead, so the loads of tiles t+1 and t+2 are in flight while tile t is multiplied, with one
// __syncthreads per tile instead of two. The compute loop is rung 7's (warptile_step). A is
// still stored transposed (As[k][m], what the inner loop wants): cp.async cannot transpose a
// 16-byte chunk, so A moves as 4-byte copies (8 per thread per tile, against 1024 FMAs); B
// moves in 16-byte chunks when N % 4 == 0 and B is 16-byte aligned, else in 4-byte copies.
// Ragged tiles use the src-size form of cp.async (zero fill) instead of branches around the
// copies.
// ================================================================================================
namespace keel_async {
constexpr int BM = 128, BN = 128, BK = 16, STAGES = 3, APITCH = BM + 4;
constexpr int A_STAGE = BK * APITCH, B_STAGE = BK * BN;  // floats
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 4;
static_assert(SMEM_BYTES == 49920, "update gemm_rungs.json and the table above");
}  // namespace keel_async

// No min-blocks bound: it would cap registers at 128 and ptxas then spills a few bytes;
// unbounded, the kernel takes exactly 128, which still fits two blocks per SM.
extern "C" __global__ void __launch_bounds__(256)
gemm_async(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
           int relu) {
    using namespace keel_async;
    KEEL_DYNAMIC_SMEM(float, smem);
    float* As = smem;                     // [STAGES][BK][APITCH], transposed
    float* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BN]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const int lm = (lane / 4) * 4, ln = (lane % 4) * 4;
    const bool b_vec = N % 4 == 0 && keel_aligned16(B);
    const bool c_vec = N % 4 == 0 && keel_aligned16(C);
    const int ktiles = (K + BK - 1) / BK;

    // This thread's A copies: elements (row a_r + 16i, k a_c) for i < 8 — a warp reads two
    // 64-byte row segments per copy. One base pointer keeps the address arithmetic (and the
    // registers it holds) small. B goes through keel_stage_b_f32 (prelude.cuh).
    const int a_r = tid / BK, a_c = tid % BK;
    const float* a_src = A + (long long)(m0 + a_r) * K + a_c;
    const long long a_step = 16LL * K;

    // Issue the copies of k-tile `kt` into stage `s` (not waited for here).
    auto load_tile = [&](int kt, int s) {
        const int k0 = kt * BK;
        float* as = As + s * A_STAGE + a_c * APITCH + a_r;
        float* bs = Bs + s * B_STAGE;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const bool in = m0 + a_r + 16 * i < M && k0 + a_c < K;
            keel_cp_async_4(as + 16 * i, in ? a_src + i * a_step + k0 : A, in ? 4 : 0);
        }
        keel_stage_b_f32<BK, BN, BN>(bs, B, k0, n0, K, N, tid, b_vec);
    };

    // Prologue: tiles 0 .. STAGES-2 in flight. Every step commits a group (empty or not) so
    // "at most STAGES-2 groups pending" always means "tile kt has landed".
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        keel_cp_async_commit();
    }

    float acc[8][8] = {};  // [im*4 + i][in*4 + j]
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt are done
        __syncthreads();  // sync:async-tile-landed — everyone's copies of tile kt are visible,
                          // and everyone has finished reading the stage refilled just below
        if (kt + STAGES - 1 < ktiles) load_tile(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        keel_cp_async_commit();

        const float* as = As + (kt % STAGES) * A_STAGE;
        const float* bs = Bs + (kt % STAGES) * B_STAGE;
#pragma unroll 2
        for (int k = 0; k < BK; ++k)
            warptile_step(acc, as + k * APITCH, bs + k * BN, wm, wn, lm, ln);
    }
    keel_cp_async_wait<0>();  // only empty groups can be left, but leave nothing in flight

    warptile_store(acc, C, bias, relu, M, N, m0 + wm, n0 + wn, lm, ln, c_vec);
}

// (The tensor-core rungs store their accumulator fragments with prelude.cuh's keel_store_frag.)

// ================================================================================================
// 9. tf32 — block=(256,1,1) tile=128x128 BK=32 stages=3, mma.sync.m16n8k8 TF32
//    dynamic_smem = 3 * (128*(32+4) + 32*(128+8)) * 4 = 107520 bytes
// Tensor cores: each warp's 64x32 sub-tile is 4x4 m16n8 fragments, and one mma.sync does
// 16x8x8 multiply-adds (a whole warp's worth of 1024 FMAs in one instruction), at TF32's
// 8x the fp32 FMA throughput. Inputs are rounded to TF32 with cvt.rna (round to nearest) when
// fragments are loaded from shared memory; accumulation stays f32. Same 3-stage cp.async
// pipeline as rung 8; row pitches of 36 (A) and 136 (B) floats make the fragment loads
// conflict-free (the 32 lanes' addresses fall in 32 different banks).
// ================================================================================================
namespace keel_tf32 {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3;
constexpr int APITCH = BK + 4, BPITCH = BN + 8;
constexpr int A_STAGE = BM * APITCH, B_STAGE = BK * BPITCH;  // floats
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 4;
static_assert(SMEM_BYTES == 107520, "update gemm_rungs.json and the table above");
}  // namespace keel_tf32

extern "C" __global__ void __launch_bounds__(256, 2)
gemm_tf32(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
          int relu) {
    using namespace keel_tf32;
    KEEL_DYNAMIC_SMEM(float, smem);
    float* As = smem;                     // [STAGES][BM][APITCH]
    float* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BPITCH]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;  // groupID, threadID_in_group (PTX fragment terms)
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const bool a_vec = K % 4 == 0 && keel_aligned16(A);
    const bool b_vec = N % 4 == 0 && keel_aligned16(B);
    const bool c_vec2 = N % 2 == 0 && (reinterpret_cast<unsigned long long>(C) & 7) == 0;
    const int ktiles = (K + BK - 1) / BK;

    auto load_tile = [&](int kt, int s) {
        const int k0 = kt * BK;
        float* as = As + s * A_STAGE;
        float* bs = Bs + s * B_STAGE;
        if (a_vec) {  // 128 rows x 8 chunks: 4 per thread
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int idx = tid + 256 * i, r = idx / 8, c = (idx % 8) * 4;
                const bool in = m0 + r < M && k0 + c < K;
                keel_cp_async_16(as + r * APITCH + c,
                                 in ? A + (long long)(m0 + r) * K + k0 + c : A, in ? 16 : 0);
            }
        } else {
#pragma unroll 4
            for (int i = 0; i < 16; ++i) {
                const int idx = tid + 256 * i, r = idx / BK, c = idx % BK;
                const bool in = m0 + r < M && k0 + c < K;
                keel_cp_async_4(as + r * APITCH + c,
                                in ? A + (long long)(m0 + r) * K + k0 + c : A, in ? 4 : 0);
            }
        }
        keel_stage_b_f32<BK, BN, BPITCH>(bs, B, k0, n0, K, N, tid, b_vec);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        keel_cp_async_commit();
    }

    float acc[4][4][4] = {};  // [m16 fragment][n8 fragment][register]
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();
        __syncthreads();  // sync:tf32-tile-landed
        if (kt + STAGES - 1 < ktiles) load_tile(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        keel_cp_async_commit();

        const float* as = As + (kt % STAGES) * A_STAGE;
        const float* bs = Bs + (kt % STAGES) * B_STAGE;
        keel_tf32_warp_tile<BK, APITCH, BPITCH, 4>(as, bs, wm, wn, g, t, acc);
    }
    keel_cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            keel_store_frag(C, bias, relu, M, N, m0 + wm + mt * 16 + g, n0 + wn + nt * 8 + 2 * t,
                            acc[mt][nt], c_vec2);
}

// ================================================================================================
// 10. bf16 — block=(256,1,1) tile=128x256 BK=32 stages=3, mma.sync.m16n8k16 BF16, ldmatrix
//     dynamic_smem = 3 * (128*(32+8) + 32*(256+8)) * 2 = 81408 bytes
// BF16 inputs (converted on the host: half the bytes of fp32 to move and stage) and the
// m16n8k16 instruction: twice the K per mma and twice TF32's tensor throughput. Fragments come
// from shared memory through ldmatrix — one instruction loads four 8x8 b16 matrices for the
// whole warp, instead of 8 scalar loads per lane — with .trans for B, which is stored k-major
// (row-major KxN) but wanted "col" by the mma. Warps own 64x64 sub-tiles (8 warps: 2 x 4 over a
// 128x256 tile), so each ldmatrix.x4 feeds 4 mma. Row pitches of 40 and 264 bf16 (80 and
// 528 bytes) put the 8 rows of every ldmatrix phase in 8 different 16-byte bank groups.
// Vector path: 16-byte cp.async (8 bf16), zero-filled past the edges; it needs K % 8 == 0,
// N % 8 == 0 and 16-byte aligned A/B, else tiles are loaded element by element.
// ================================================================================================
namespace keel_bf16 {
constexpr int BM = 128, BN = 256, BK = 32, STAGES = 3;
constexpr int APITCH = BK + 8, BPITCH = BN + 8;  // bf16 elements
constexpr int A_STAGE = BM * APITCH, B_STAGE = BK * BPITCH;
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 2;
static_assert(SMEM_BYTES == 81408, "update gemm_rungs.json and the table above");
}  // namespace keel_bf16

extern "C" __global__ void __launch_bounds__(256)
gemm_bf16_mma(const unsigned short* A, const unsigned short* B, float* C, const float* bias,
              int M, int N, int K, int relu) {
    using namespace keel_bf16;
    KEEL_DYNAMIC_SMEM(unsigned short, smem);
    unsigned short* As = smem;                     // [STAGES][BM][APITCH]
    unsigned short* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BPITCH]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 64;
    const bool a_vec = K % 8 == 0 && keel_aligned16(A);
    const bool b_vec = N % 8 == 0 && keel_aligned16(B);
    const bool c_vec2 = N % 2 == 0 && (reinterpret_cast<unsigned long long>(C) & 7) == 0;
    const int ktiles = (K + BK - 1) / BK;

    auto load_tile = [&](int kt, int s) {
        const int k0 = kt * BK;
        unsigned short* as = As + s * A_STAGE;
        unsigned short* bs = Bs + s * B_STAGE;
        if (a_vec) {  // 128 rows x 4 chunks of 8 bf16: 2 per thread
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int idx = tid + 256 * i, r = idx / 4, c = (idx % 4) * 8;
                const bool in = m0 + r < M && k0 + c < K;
                keel_cp_async_16(as + r * APITCH + c,
                                 in ? A + (long long)(m0 + r) * K + k0 + c : A, in ? 16 : 0);
            }
        } else {  // cp.async moves at least 4 bytes: plain loads, visible after the barrier
#pragma unroll 4
            for (int i = 0; i < 16; ++i) {
                const int idx = tid + 256 * i, r = idx / BK, c = idx % BK;
                const bool in = m0 + r < M && k0 + c < K;
                as[r * APITCH + c] = in ? A[(long long)(m0 + r) * K + k0 + c] : 0;
            }
        }
        if (b_vec) {  // 32 rows x 32 chunks: 4 per thread
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int idx = tid + 256 * i, r = idx / 32, c = (idx % 32) * 8;
                const bool in = k0 + r < K && n0 + c < N;
                keel_cp_async_16(bs + r * BPITCH + c,
                                 in ? B + (long long)(k0 + r) * N + n0 + c : B, in ? 16 : 0);
            }
        } else {
#pragma unroll 4
            for (int i = 0; i < 32; ++i) {
                const int idx = tid + 256 * i, r = idx / BN, c = idx % BN;
                const bool in = k0 + r < K && n0 + c < N;
                bs[r * BPITCH + c] = in ? B[(long long)(k0 + r) * N + n0 + c] : 0;
            }
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        keel_cp_async_commit();
    }

    float acc[4][8][4] = {};  // [m16 fragment][n8 fragment][register]
    // ldmatrix row addresses: lane l points at row (l % 16) of the 16-row slab, column block
    // (l / 16) * 8 — matrices 0..3 are (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
    // for A, and (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) for B.
    const int lrow = lane % 16, lcol = (lane / 16) * 8;
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();
        __syncthreads();  // sync:bf16-tile-landed
        if (kt + STAGES - 1 < ktiles) load_tile(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        keel_cp_async_commit();

        const unsigned short* as = As + (kt % STAGES) * A_STAGE;
        const unsigned short* bs = Bs + (kt % STAGES) * B_STAGE;
        keel_bf16_warp_tile<BK, APITCH, BPITCH, 8>(as, bs, wm, wn, lrow, lcol, acc);
    }
    keel_cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
            keel_store_frag(C, bias, relu, M, N, m0 + wm + mt * 16 + g, n0 + wn + nt * 8 + 2 * t,
                            acc[mt][nt], c_vec2);
}
