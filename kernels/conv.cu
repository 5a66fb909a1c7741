// conv.cu — keel's convolution ladder (CUDA II): 2-D convolution of NHWC activations with a
// Keras kernel (kH, kW, Cin, Cout), row-major, which is a K x Cout matrix whose row index is
// k = (ky*kW + kx)*Cin + ci; then `+ bias[co]` when bias != nullptr and ReLU (keeping NaN)
// when relu != 0 — for ANY N, H, W, Cin, Cout >= 1, any strides and padding (the caller
// resolves 'same'/'valid' into pad_top/pad_left/oh/ow as ops.cu's im2col_nhwc takes them).
//
// Every kernel has the same parameters (the Rust launcher, src/cuda/conv.rs, relies on it):
//   (const float* x, const W* wgt, const float* bias, float* y,
//    int n, int h, int w, int cin, int cout, int kh, int kw, int sh, int sw,
//    int pad_top, int pad_left, int oh, int ow, int relu, int pool)
// with W = float, or unsigned short (bf16 bits) for conv_igemm_bf16.
//
// The implicit-GEMM view: C (M x Cout) = A (M x K) · Wgt (K x Cout), A[r][k] the input pixel
// under tap (ky, kx) of output pixel r, zero outside the image — gathered from x while a tile
// is staged in shared memory, never materialised (ops.cu's im2col writes it to memory: 9x the
// activations for a 3x3 kernel). Grid convention as the GEMM ladder: blockIdx.x walks Cout
// tiles, blockIdx.y M tiles.
//
// Fused 2x2/stride-2 'valid' max pool (`pool != 0`, igemm rungs): the M rows enumerate pooled
// positions times their 4 window pixels (row r -> window r/4, pixel r%4 = (dy, dx) =
// (r%4/2, r%4%2)), so the 4 rows of a window always lie in one tile (tiles are multiples of 4
// rows) and the epilogue reduces them (after bias and ReLU, NaN-propagating max) and writes
// (n, oh/2, ow/2, Cout) directly. Conv outputs no window covers (odd oh/ow) are never computed.
//
//   rung        kernel              block      tile (MxCout, BK)  dyn. smem  static smem  prec.
//   direct      conv_direct_first   (256,1,1)  64 px x 64 ch      0          16.25 KiB    fp32
//   igemm_fp32  conv_igemm_fp32     (256,1,1)  128x128, 16        49920      2 KiB        fp32
//   igemm_tf32  conv_igemm_tf32     (256,1,1)  128x128, 32        107520     2 KiB        tf32
//   igemm_bf16  conv_igemm_bf16     (256,1,1)  128x128, 32        56832      2 KiB        bf16
// kernels/conv_rungs.json lists the same geometry for the launch code.

// Where the igemm rungs' A rows come from: for row m of the GEMM, the image's first row index
// (b*h) and the top-left input position of the output pixel's window (oy*sh - pad_top,
// ox*sw - pad_left). Rows past M get an iy0 so negative that every tap reads the zero padding.
// Computed once per block into shared memory (one int4 per tile row), so the gathers of every
// k tile cost a shared load instead of divisions.
__device__ __forceinline__ int4 conv_row_info(int m, int M, int h, int sh, int sw, int pad_top,
                                              int pad_left, int oh, int ow, int pool) {
    if (m >= M) return make_int4(0, -(1 << 30), 0, 0);
    int b, oy, ox;
    if (pool) {
        const int q = m >> 2, p = m & 3, pw = ow / 2, ph = oh / 2;
        const int px = q % pw, t = q / pw;
        oy = 2 * (t % ph) + (p >> 1);
        ox = 2 * px + (p & 1);
        b = t / ph;
    } else {
        ox = m % ow;
        const int t = m / ow;
        oy = t % oh;
        b = t / oh;
    }
    return make_int4(b * h, oy * sh - pad_top, ox * sw - pad_left, 0);
}

// The (ky, kx, ci) of GEMM column k.
struct ConvTap {
    int ky, kx, ci;
};
__device__ __forceinline__ ConvTap conv_tap(int k, int cin, int kw) {
    const int p = k / cin;
    return ConvTap{p / kw, p % kw, k - p * cin};
}

// The address of A[row][k] for a row described by `ri` and the tap of k, or nullptr when it is
// zero padding (outside the image, or k >= K, signalled by tap.ky = 1 << 29: with a valid row
// that is below the image (the launcher keeps h < 2^24), with a past-M row's iy0 = -2^30 still
// negative).
__device__ __forceinline__ const float* conv_src(const float* x, int4 ri, ConvTap tap, int h,
                                                 int w, int cin) {
    const int iy = ri.y + tap.ky, ix = ri.z + tap.kx;
    if ((unsigned)iy >= (unsigned)h || (unsigned)ix >= (unsigned)w) return nullptr;
    return x + (((long long)(ri.x + iy)) * w + ix) * cin + tap.ci;
}
__device__ __forceinline__ ConvTap conv_tap_or_none(int k, int K, int cin, int kw) {
    return k < K ? conv_tap(k, cin, kw) : ConvTap{1 << 29, 0, 0};
}

// ================================================================================================
// 1. direct — conv_direct_first, block=(256,1,1) tile=64 pixels x 64 output channels
//    dynamic_smem=0 (static: the 64-channel slice of the kernel, K x 64 floats with K <= 64,
//    16 KiB, and 64 bias values). grid = (ceil(N*oh*ow / 64), ceil(Cout / 64), 1).
// For VGG's first layer (Cin=3, 3x3: K=27) a GEMM is a poor fit: K=27 is less than one k tile
// of the igemm rungs, so their pipelines would never fill, and Cin=3 rules out vector gathers.
// Instead the whole kernel slice sits in shared memory, and each thread computes 16 output
// channels of one pixel (4 threads per pixel, 64 pixels per block): per input value it reads
// once (an L1 hit shared by the pixel's 4 threads), it does 16 FMAs against a float4-read row of
// the kernel. Bias + ReLU fused; 16-byte stores when Cout % 4 == 0. Limits, checked by the
// launcher: K = kh*kw*Cin <= 64 (any Cout: blockIdx.y walks 64-channel slices); no fused pool.
// ================================================================================================
extern "C" __global__ void __launch_bounds__(256)
conv_direct_first(const float* __restrict__ x, const float* __restrict__ wgt,
                  const float* __restrict__ bias, float* __restrict__ y, int n, int h, int w,
                  int cin, int cout, int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                  int oh, int ow, int relu, int pool) {
    constexpr int PIX = 64, CH = 64, CPT = 16, MAXK = 64;
    __shared__ __align__(16) float ws[MAXK * CH];  // ws[k][c], zero past Cout
    __shared__ float bs[CH];
    if (pool != 0 || kh * kw * cin > MAXK) __trap();  // the launcher refuses these
    const int tid = threadIdx.x;
    const int K = kh * kw * cin, c0 = blockIdx.y * CH;
    for (int i = tid; i < K * CH; i += 256) {
        const int k = i / CH, c = i % CH;
        ws[i] = c0 + c < cout ? wgt[(long long)k * cout + c0 + c] : 0.0f;
    }
    if (tid < CH) bs[tid] = (bias != nullptr && c0 + tid < cout) ? bias[c0 + tid] : 0.0f;
    __syncthreads();  // sync:direct-kernel-staged — the only barrier; early exits follow it

    const int M = n * oh * ow;
    const int p = blockIdx.x * PIX + tid / 4, cg = (tid % 4) * CPT;
    if (p >= M || c0 + cg >= cout) return;
    const int ox = p % ow, t = p / ow, oy = t % oh, b = t / oh;
    float acc[CPT] = {};
    for (int ky = 0; ky < kh; ++ky) {
        const int iy = oy * sh - pad_top + ky;
        if ((unsigned)iy >= (unsigned)h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int ix = ox * sw - pad_left + kx;
            if ((unsigned)ix >= (unsigned)w) continue;
            const float* xp = x + (((long long)b * h + iy) * w + ix) * cin;
            const float* wp = ws + (ky * kw + kx) * cin * CH + cg;
            for (int ci = 0; ci < cin; ++ci) {
                const float v = xp[ci];
#pragma unroll
                for (int j = 0; j < CPT; j += 4) {
                    const float4 k4 = *reinterpret_cast<const float4*>(wp + ci * CH + j);
                    acc[j] += v * k4.x;
                    acc[j + 1] += v * k4.y;
                    acc[j + 2] += v * k4.z;
                    acc[j + 3] += v * k4.w;
                }
            }
        }
    }
    const float* bsp = bias != nullptr ? bs + cg : nullptr;
    float* yp = y + (long long)p * cout + c0 + cg;
    const int left = cout - (c0 + cg);  // >= 1
    if (left >= CPT && cout % 4 == 0 && keel_aligned16(y)) {
#pragma unroll
        for (int j = 0; j < CPT; j += 4)
            *reinterpret_cast<float4*>(yp + j) = make_float4(
                keel_epilogue(acc[j], bsp, j, relu), keel_epilogue(acc[j + 1], bsp, j + 1, relu),
                keel_epilogue(acc[j + 2], bsp, j + 2, relu),
                keel_epilogue(acc[j + 3], bsp, j + 3, relu));
    } else {
#pragma unroll
        for (int j = 0; j < CPT; ++j)
            if (j < left) yp[j] = keel_epilogue(acc[j], bsp, j, relu);
    }
}

// ----- the fp32 warp tile (as gemm.cu's rungs 7-8; modules share no code but the prelude) -----
__device__ __forceinline__ float conv_f4(const float4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // folds away once unrolled
}
// One k step of a 64x32 warp tile: the lane's 2 float4 of A (rows lm.. and lm+32..) and 2 of B
// (columns ln.. and ln+16..), then their 8x8 outer product.
__device__ __forceinline__ void conv_warptile_step(float (&acc)[8][8], const float* as_k,
                                                   const float* bs_k, int wm, int wn, int lm,
                                                   int ln) {
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
            acc[r][c] += conv_f4(a[r / 4], r % 4) * conv_f4(b[c / 4], c % 4);
}
// Four finished values of output row r from column c (16 bytes at once when allowed).
__device__ __forceinline__ void conv_store4(float* y, int rows, int N, int r, int c, float4 v,
                                            bool vec) {
    if (r >= rows || c >= N) return;
    float* row = y + (long long)r * N;
    if (vec) {
        *reinterpret_cast<float4*>(row + c) = v;
        return;
    }
    row[c] = v.x;
    if (c + 1 < N) row[c + 1] = v.y;
    if (c + 2 < N) row[c + 2] = v.z;
    if (c + 3 < N) row[c + 3] = v.w;
}

// ================================================================================================
// 2. igemm_fp32 — conv_igemm_fp32, block=(256,1,1) tile=128x128 BK=16 stages=3
//    dynamic_smem = 3 * (16*(128+4) + 16*128) * 4 = 49920 bytes (+ 2 KiB static row table)
// Changed from the direct kernel: any K. Implicit GEMM on CUDA cores — gemm.cu's `async` rung
// (3-stage cp.async pipeline, 8 warps of 64x32, each lane 2x2 squares of 4x4) with A's tile
// gathered from x: a table of the tile's 128 rows (image row, window corner) is built once per
// block, and each thread decomposes its one column of every k tile into (ky, kx, ci), so a
// gathered element costs a shared-memory load and two compares. Zero padding, k >= K and rows
// >= M use cp.async's zero fill (src-size 0). A stays transposed in shared memory (As[k][m],
// what the outer product wants), so it moves as 4-byte copies — cp.async cannot transpose; the
// tensor-core rungs, which want A row-major, gather 16 bytes at a time. Pool: a lane's 4
// consecutive rows (lm..lm+3) are exactly one window, so the reduction is in registers.
// ================================================================================================
namespace keel_conv_fp32 {
constexpr int BM = 128, BN = 128, BK = 16, STAGES = 3, APITCH = BM + 4;
constexpr int A_STAGE = BK * APITCH, B_STAGE = BK * BN;  // floats
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 4;
static_assert(SMEM_BYTES == 49920, "update conv_rungs.json and the table above");
}  // namespace keel_conv_fp32

extern "C" __global__ void __launch_bounds__(256)
conv_igemm_fp32(const float* __restrict__ x, const float* __restrict__ wgt,
                const float* __restrict__ bias, float* __restrict__ y, int n, int h, int w,
                int cin, int cout, int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                int oh, int ow, int relu, int pool) {
    using namespace keel_conv_fp32;
    KEEL_DYNAMIC_SMEM(float, smem);
    float* As = smem;                     // [STAGES][BK][APITCH], transposed
    float* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BN]
    __shared__ int4 rows[BM];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int M = pool ? 4 * n * (oh / 2) * (ow / 2) : n * oh * ow;
    const int N = cout, K = kh * kw * cin;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const int lm = (lane / 4) * 4, ln = (lane % 4) * 4;
    const bool b_vec = N % 4 == 0 && keel_aligned16(wgt);
    const bool c_vec = N % 4 == 0 && keel_aligned16(y);
    const int ktiles = (K + BK - 1) / BK;
    if (tid < BM)
        rows[tid] = conv_row_info(m0 + tid, M, h, sh, sw, pad_top, pad_left, oh, ow, pool);
    __syncthreads();  // sync:fp32-rows — the row table is complete before the first gather

    // This thread's A copies: elements (row a_r + 16i, column a_c) for i < 8. B goes through
    // keel_stage_b_f32 (prelude.cuh).
    const int a_r = tid / BK, a_c = tid % BK;

    auto load_tile = [&](int kt, int s) {
        const int k0 = kt * BK;
        float* as = As + s * A_STAGE + a_c * APITCH + a_r;
        float* bs = Bs + s * B_STAGE;
        const ConvTap tap = conv_tap_or_none(k0 + a_c, K, cin, kw);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float* src = conv_src(x, rows[a_r + 16 * i], tap, h, w, cin);
            keel_cp_async_4(as + 16 * i, src ? src : x, src ? 4 : 0);
        }
        keel_stage_b_f32<BK, BN, BN>(bs, wgt, k0, n0, K, N, tid, b_vec);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        keel_cp_async_commit();
    }

    float acc[8][8] = {};  // [im*4 + i][in*4 + j]
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();
        __syncthreads();  // sync:fp32-tile-landed — tile kt visible, stage kt-1 free to refill
        if (kt + STAGES - 1 < ktiles) load_tile(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        keel_cp_async_commit();
        const float* as = As + (kt % STAGES) * A_STAGE;
        const float* bs = Bs + (kt % STAGES) * B_STAGE;
#pragma unroll 2
        for (int k = 0; k < BK; ++k)
            conv_warptile_step(acc, as + k * APITCH, bs + k * BN, wm, wn, lm, ln);
    }
    keel_cp_async_wait<0>();

    // Epilogue: bias + ReLU per value; with pool, rows lm..lm+3 (+32) are one window each.
    const float* bsp = bias;
#pragma unroll
    for (int im = 0; im < 2; ++im) {
        const int mrow = m0 + wm + im * 32 + lm;  // first of the lane's 4 rows
#pragma unroll
        for (int in = 0; in < 2; ++in) {
            const int c = n0 + wn + in * 16 + ln;
            float v[4][4];  // [row i][column j]
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    v[i][j] = c + j < N ? keel_epilogue(acc[im * 4 + i][in * 4 + j], bsp, c + j,
                                                        relu)
                                        : 0.0f;
            if (pool) {
                float4 r;
                r.x = keel_max_nan(keel_max_nan(v[0][0], v[1][0]), keel_max_nan(v[2][0], v[3][0]));
                r.y = keel_max_nan(keel_max_nan(v[0][1], v[1][1]), keel_max_nan(v[2][1], v[3][1]));
                r.z = keel_max_nan(keel_max_nan(v[0][2], v[1][2]), keel_max_nan(v[2][2], v[3][2]));
                r.w = keel_max_nan(keel_max_nan(v[0][3], v[1][3]), keel_max_nan(v[2][3], v[3][3]));
                conv_store4(y, M / 4, N, mrow / 4, c, r, c_vec);
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    conv_store4(y, M, N, mrow + i, c,
                                make_float4(v[i][0], v[i][1], v[i][2], v[i][3]), c_vec);
            }
        }
    }
}

// ----- the tensor-core rungs' epilogue -----------------------------------------------------------
// One m16n8 accumulator fragment (rows r and r+8, columns c and c+1) through bias + ReLU, and
// with `pool` reduced over its window: rows 4q..4q+3 of a fragment belong to lanes whose g =
// lane/4 differ only in the low two bits, i.e. lanes lane^4, lane^8, lane^12, so two xor
// shuffles give every lane its window's max; the lanes with g % 4 == 0 write it. Warp shuffles
// rather than shared memory: no extra buffer, no barrier, 8 shuffles per fragment. Every lane
// of the warp must call this (the shuffles), whatever its rows.
__device__ __forceinline__ void conv_store_frag(float* y, const float* bias, int relu, int pool,
                                                int M, int N, int r, int c, const float* d,
                                                bool vec2) {
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int col = c + (i & 1);
        v[i] = col < N ? keel_epilogue(d[i], bias, col, relu) : 0.0f;
    }
    if (pool) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[i] = keel_max_nan(v[i], __shfl_xor_sync(0xffffffffu, v[i], 4));
            v[i] = keel_max_nan(v[i], __shfl_xor_sync(0xffffffffu, v[i], 8));
        }
        if ((r & 3) != 0) return;  // r = tile row + g; g % 4 == 0 lanes write
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int m = r + 8 * hh;
        if (m >= M || c >= N) continue;
        const int row = pool ? m / 4 : m;
        float* p = y + (long long)row * N + c;
        if (vec2) {  // N even and y 8-byte aligned: c is even, so c + 1 < N too
            *reinterpret_cast<float2*>(p) = make_float2(v[2 * hh], v[2 * hh + 1]);
        } else {
            p[0] = v[2 * hh];
            if (c + 1 < N) p[1] = v[2 * hh + 1];
        }
    }
}

// ================================================================================================
// 3. igemm_tf32 — conv_igemm_tf32, block=(256,1,1) tile=128x128 BK=32 stages=3, mma m16n8k8
//    dynamic_smem = 3 * (128*(32+4) + 32*(128+8)) * 4 = 107520 bytes (+ 2 KiB row table)
// Changed from igemm_fp32: tensor cores (gemm.cu's tf32 rung: 4x4 m16n8 fragments per warp,
// inputs rounded with cvt.rna when fragments are read, f32 accumulation). A is now row-major
// in shared memory (As[m][k], pitch 36: conflict-free fragment reads), so when Cin % 4 == 0
// (every VGG layer but the first) four consecutive k are four consecutive channels of one
// input pixel and the gather is one 16-byte cp.async; else 4-byte copies. Each thread's column
// (chunk) is the same for all its rows, so the (ky, kx, ci) decomposition is once per k tile.
// Pool: xor-shuffle reduction across the fragment's lanes (conv_store_frag).
// ================================================================================================
namespace keel_conv_tf32 {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3;
constexpr int APITCH = BK + 4, BPITCH = BN + 8;
constexpr int A_STAGE = BM * APITCH, B_STAGE = BK * BPITCH;  // floats
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 4;
static_assert(SMEM_BYTES == 107520, "update conv_rungs.json and the table above");
}  // namespace keel_conv_tf32

extern "C" __global__ void __launch_bounds__(256, 2)
conv_igemm_tf32(const float* __restrict__ x, const float* __restrict__ wgt,
                const float* __restrict__ bias, float* __restrict__ y, int n, int h, int w,
                int cin, int cout, int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                int oh, int ow, int relu, int pool) {
    using namespace keel_conv_tf32;
    KEEL_DYNAMIC_SMEM(float, smem);
    float* As = smem;                     // [STAGES][BM][APITCH]
    float* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BPITCH]
    __shared__ int4 rows[BM];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int M = pool ? 4 * n * (oh / 2) * (ow / 2) : n * oh * ow;
    const int N = cout, K = kh * kw * cin;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const bool a_vec = cin % 4 == 0 && keel_aligned16(x);
    const bool b_vec = N % 4 == 0 && keel_aligned16(wgt);
    const bool c_vec2 = N % 2 == 0 && (reinterpret_cast<unsigned long long>(y) & 7) == 0;
    const int ktiles = (K + BK - 1) / BK;
    if (tid < BM)
        rows[tid] = conv_row_info(m0 + tid, M, h, sh, sw, pad_top, pad_left, oh, ow, pool);
    __syncthreads();  // sync:tf32-rows

    auto load_tile = [&](int kt, int s) {
        const int k0 = kt * BK;
        float* as = As + s * A_STAGE;
        float* bs = Bs + s * B_STAGE;
        if (a_vec) {  // 128 rows x 8 chunks of 4 channels: rows tid/8 + 32i, chunk tid % 8
            const int c = (tid % 8) * 4;
            const ConvTap tap = conv_tap_or_none(k0 + c, K, cin, kw);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = tid / 8 + 32 * i;
                const float* src = conv_src(x, rows[r], tap, h, w, cin);
                keel_cp_async_16(as + r * APITCH + c, src ? src : x, src ? 16 : 0);
            }
        } else {  // rows tid/32 + 8i, column tid % 32
            const int c = tid % 32;
            const ConvTap tap = conv_tap_or_none(k0 + c, K, cin, kw);
#pragma unroll 4
            for (int i = 0; i < 16; ++i) {
                const int r = tid / 32 + 8 * i;
                const float* src = conv_src(x, rows[r], tap, h, w, cin);
                keel_cp_async_4(as + r * APITCH + c, src ? src : x, src ? 4 : 0);
            }
        }
        keel_stage_b_f32<BK, BN, BPITCH>(bs, wgt, k0, n0, K, N, tid, b_vec);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, s);
        keel_cp_async_commit();
    }

    float acc[4][4][4] = {};  // [m16 fragment][n8 fragment][register]
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();
        __syncthreads();  // sync:tf32-conv-tile-landed
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
            conv_store_frag(y, bias, relu, pool, M, N, m0 + wm + mt * 16 + g,
                            n0 + wn + nt * 8 + 2 * t, acc[mt][nt], c_vec2);
}

// ================================================================================================
// 4. igemm_bf16 — conv_igemm_bf16, block=(256,1,1) tile=128x128 BK=32 stages=3, mma m16n8k16
//    dynamic_smem = 3 * (128*(32+8) + 32*(128+8)) * 2 = 56832 bytes (+ 2 KiB row table)
// Changed from igemm_tf32: BF16 tensor cores (gemm.cu's bf16 rung: ldmatrix fragments, .trans
// for the k-major weights, twice TF32's throughput and half the shared memory per element).
// The weights come as bf16 bits from the host (cp.async as before); the activations stay f32
// in memory (the previous layer's output), so A cannot be copied by cp.async: each thread
// loads its part of tile kt+2 into registers (16 floats, 16-byte loads when Cin % 4 == 0)
// *before* the MMAs of tile kt, and converts (round to nearest even) and stores it into the
// free stage *after* them — the load latency hides behind the MMAs (register prefetch). The
// stage written at the end of iteration kt was last read in iteration kt-1, which every warp
// finished before iteration kt's barrier. Tile 128x128 (not gemm_bf16_mma's 128x256): VGG's
// Cout is 64..512, and 256 would waste half the block on 64- and 128-channel layers. Row
// pitches of 40 and 136 bf16 (80 and 272 bytes) keep ldmatrix conflict-free. Pool: as tf32.
// ================================================================================================
namespace keel_conv_bf16 {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3;
constexpr int APITCH = BK + 8, BPITCH = BN + 8;  // bf16 elements
constexpr int A_STAGE = BM * APITCH, B_STAGE = BK * BPITCH;
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 2;
static_assert(SMEM_BYTES == 56832, "update conv_rungs.json and the table above");
}  // namespace keel_conv_bf16

extern "C" __global__ void __launch_bounds__(256, 2)
conv_igemm_bf16(const float* __restrict__ x, const unsigned short* __restrict__ wgt,
                const float* __restrict__ bias, float* __restrict__ y, int n, int h, int w,
                int cin, int cout, int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                int oh, int ow, int relu, int pool) {
    using namespace keel_conv_bf16;
    KEEL_DYNAMIC_SMEM(unsigned short, smem);
    unsigned short* As = smem;                     // [STAGES][BM][APITCH]
    unsigned short* Bs = smem + STAGES * A_STAGE;  // [STAGES][BK][BPITCH]
    __shared__ int4 rows[BM];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int M = pool ? 4 * n * (oh / 2) * (ow / 2) : n * oh * ow;
    const int N = cout, K = kh * kw * cin;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const bool a_vec = cin % 4 == 0 && keel_aligned16(x);
    const bool b_vec = N % 8 == 0 && keel_aligned16(wgt);
    const bool c_vec2 = N % 2 == 0 && (reinterpret_cast<unsigned long long>(y) & 7) == 0;
    const int ktiles = (K + BK - 1) / BK;
    if (tid < BM)
        rows[tid] = conv_row_info(m0 + tid, M, h, sh, sw, pad_top, pad_left, oh, ow, pool);
    __syncthreads();  // sync:bf16-rows

    // A in flight: vector path rows tid/8 + 32i (i < 4), channels (tid%8)*4..+3; scalar path
    // rows tid/32 + 8i (i < 16), column tid % 32.
    float areg[16];
    auto fetch_a = [&](int kt) {
        const int k0 = kt * BK;
        if (a_vec) {
            const ConvTap tap = conv_tap_or_none(k0 + (tid % 8) * 4, K, cin, kw);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float* src = conv_src(x, rows[tid / 8 + 32 * i], tap, h, w, cin);
                const float4 v = src ? *reinterpret_cast<const float4*>(src)
                                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                areg[4 * i] = v.x;
                areg[4 * i + 1] = v.y;
                areg[4 * i + 2] = v.z;
                areg[4 * i + 3] = v.w;
            }
        } else {
            const ConvTap tap = conv_tap_or_none(k0 + tid % 32, K, cin, kw);
#pragma unroll
            for (int i = 0; i < 16; ++i) {
                const float* src = conv_src(x, rows[tid / 32 + 8 * i], tap, h, w, cin);
                areg[i] = src ? *src : 0.0f;
            }
        }
    };
    auto stash_a = [&](int s) {
        unsigned short* as = As + s * A_STAGE;
        if (a_vec) {
            const int c = (tid % 8) * 4;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const unsigned lo = keel_f32_to_bf16(areg[4 * i]) |
                                    ((unsigned)keel_f32_to_bf16(areg[4 * i + 1]) << 16);
                const unsigned hi = keel_f32_to_bf16(areg[4 * i + 2]) |
                                    ((unsigned)keel_f32_to_bf16(areg[4 * i + 3]) << 16);
                *reinterpret_cast<uint2*>(as + (tid / 8 + 32 * i) * APITCH + c) =
                    make_uint2(lo, hi);
            }
        } else {
            const int c = tid % 32;
#pragma unroll
            for (int i = 0; i < 16; ++i)
                as[(tid / 32 + 8 * i) * APITCH + c] = keel_f32_to_bf16(areg[i]);
        }
    };
    auto load_b = [&](int kt, int s) {
        const int k0 = kt * BK;
        unsigned short* bs = Bs + s * B_STAGE;
        if (b_vec) {  // 32 rows x 16 chunks of 8 bf16: 2 per thread
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int idx = tid + 256 * i, r = idx / 16, c = (idx % 16) * 8;
                const bool in = k0 + r < K && n0 + c < N;
                keel_cp_async_16(bs + r * BPITCH + c,
                                 in ? wgt + (long long)(k0 + r) * N + n0 + c : wgt, in ? 16 : 0);
            }
        } else {  // cp.async moves at least 4 bytes: plain loads, visible after the barrier
#pragma unroll 4
            for (int i = 0; i < 16; ++i) {
                const int idx = tid + 256 * i, r = idx / BN, c = idx % BN;
                const bool in = k0 + r < K && n0 + c < N;
                bs[r * BPITCH + c] = in ? wgt[(long long)(k0 + r) * N + n0 + c] : 0;
            }
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) {
            fetch_a(s);
            stash_a(s);
            load_b(s, s);
        }
        keel_cp_async_commit();
    }

    float acc[4][4][4] = {};  // [m16 fragment][n8 fragment][register]
    const int lrow = lane % 16, lcol = (lane / 16) * 8;
    for (int kt = 0; kt < ktiles; ++kt) {
        keel_cp_async_wait<STAGES - 2>();
        __syncthreads();  // sync:bf16-conv-tile-landed — also: stage (kt+2)%3 is free
        const int next = kt + STAGES - 1;
        if (next < ktiles) {
            load_b(next, next % STAGES);
            fetch_a(next);
        }
        keel_cp_async_commit();

        const unsigned short* as = As + (kt % STAGES) * A_STAGE;
        const unsigned short* bs = Bs + (kt % STAGES) * B_STAGE;
        keel_bf16_warp_tile<BK, APITCH, BPITCH, 4>(as, bs, wm, wn, lrow, lcol, acc);
        if (next < ktiles) stash_a(next % STAGES);
    }
    keel_cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
            conv_store_frag(y, bias, relu, pool, M, N, m0 + wm + mt * 16 + g,
                            n0 + wn + nt * 8 + 2 * t, acc[mt][nt], c_vec2);
}
