// Training on the GPU (CUDA II): the backward passes, the loss and the optimizer steps, NHWC
// like the rest of keel.
//
// Two rules hold throughout, and explain most of the shapes below:
//   * no float atomics: every output element is summed by one thread in a fixed order (the
//     backward scatters of pooling and col2im are written as gathers, long sums are split into
//     fixed slices whose partials are added in slice order), so a seeded run reproduces bit
//     for bit on the same device;
//   * the same arithmetic as the CPU reference (`src/cpu/reference`): the same tie rule for
//     maxima, the same NaN rule, f32 where it sums in f32 and f64 where it sums in f64. The
//     optimizer steps use __fmul_rn/__fadd_rn so NVRTC cannot contract them into FMAs, which
//     the reference (Rust, no contraction) does not do.

// Whether `v` takes over from `best` as a running maximum: larger, or the first NaN (a NaN
// best is never displaced). keel's `tensor::real::beats`, which both backward pools and the
// reference use to find the element the forward max picked.
__device__ __forceinline__ bool beats(float v, float best) {
    return !(best != best) && (v > best || v != v);
}

// ReLU's gradient from its output: dy where y > 0, else 0 (NaN in y blocks it, as NaN > 0 is
// false). Also the mask fused ReLUs of conv2d and dense apply to dy first.
extern "C" __global__ void relu_backward_f32(const float* __restrict__ y,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dx, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

// Max pool's gradient, as a gather: one thread per input element (b, iy, ix, ci) visits the
// output windows that contain it in row-major output order, finds each window's first maximum
// again (the forward scan: padded taps skipped, `beats`), and adds that output's gradient when
// it is this element. The reference adds the same terms in the same order, so the sums agree
// bit for bit, and no two threads write one element.
extern "C" __global__ void max_pool_backward_nhwc(const float* __restrict__ x,
                                                  const float* __restrict__ dy,
                                                  float* __restrict__ dx, int n, int h, int w,
                                                  int c, int ph, int pw, int sh, int sw,
                                                  int pad_top, int pad_left, int oh, int ow) {
    const long long total = (long long)n * h * w * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        int ix = (int)((i / c) % w);
        int iy = (int)((i / ((long long)c * w)) % h);
        long long b = i / ((long long)c * w * h);
        const float* img = x + b * h * w * c + ci;
        // Output rows/columns whose window covers iy/ix: oy*sh - pad_top <= iy < that + ph.
        int py = iy + pad_top, px = ix + pad_left;
        int oy0 = py - ph + 1 > 0 ? (py - ph + 1 + sh - 1) / sh : 0;
        int oy1 = min(py / sh, oh - 1);
        int ox0 = px - pw + 1 > 0 ? (px - pw + 1 + sw - 1) / sw : 0;
        int ox1 = min(px / sw, ow - 1);
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            for (int ox = ox0; ox <= ox1; ++ox) {
                int best_y = -1, best_x = -1;
                float best = 0.0f;
                for (int ky = 0; ky < ph; ++ky) {
                    int y = oy * sh + ky - pad_top;
                    if (y < 0 || y >= h) continue;
                    for (int kx = 0; kx < pw; ++kx) {
                        int xx = ox * sw + kx - pad_left;
                        if (xx < 0 || xx >= w) continue;
                        float v = img[((long long)y * w + xx) * c];
                        if (best_y < 0 || beats(v, best)) {
                            best = v;
                            best_y = y;
                            best_x = xx;
                        }
                    }
                }
                if (best_y == iy && best_x == ix) {
                    acc += dy[(((b * oh + oy) * ow) + ox) * c + ci];
                }
            }
        }
        dx[i] = acc;
    }
}

// Global pool's gradient, one thread per (image, channel): the mean spreads dy * scale
// (scale = 1/(H W) rounded to f32 once, as the reference does) over every position; the max
// sends dy to the first position holding the maximum (`beats`) and zeros the rest. A column
// per thread keeps the argmax scan in one place; neighbouring threads write neighbouring
// channels, so the stores coalesce.
extern "C" __global__ void global_pool_backward_nhwc(const float* __restrict__ x,
                                                     const float* __restrict__ dy,
                                                     float* __restrict__ dx, int n, int hw,
                                                     int c, int is_max, float scale) {
    const long long total = (long long)n * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        long long b = i / c;
        const float* p = x + b * hw * c + ci;
        float* q = dx + b * hw * c + ci;
        float g = dy[i];
        if (is_max) {
            int best = 0;
            for (int j = 1; j < hw; ++j) {
                if (beats(p[(long long)j * c], p[(long long)best * c])) best = j;
            }
            for (int j = 0; j < hw; ++j) q[(long long)j * c] = j == best ? g : 0.0f;
        } else {
            float v = g * scale;
            for (int j = 0; j < hw; ++j) q[(long long)j * c] = v;
        }
    }
}

// C (K x N) [+]= A^T B for row-major A (M x K) and B (M x N), over rows m of one slice:
// blockIdx.z picks rows [z * m_per_slice, ...) and the output C + z * K * N, so a long M (a
// weight gradient sums over every output pixel of the batch) is split into fixed slices that
// `sum_slices` adds in order: parallel and deterministic, without atomics. With `accumulate`
// the slice's sum is added to C (chunks of images after the first).
// block=(16,16,1) tile=64x64, BK=16, each thread a 4x4 micro-tile at rows ty+16r, columns
// tx+16c. Both operands are read along their rows (i of A, j of B are contiguous), so the tile
// loads coalesce and the inner loop is an outer product of two shared-memory rows.
extern "C" __global__ void gemm_tn(const float* __restrict__ A, const float* __restrict__ B,
                                   float* __restrict__ C, int M, int K, int N,
                                   int m_per_slice, int accumulate) {
    __shared__ float As[16][64];
    __shared__ float Bs[16][64];
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    const int i0 = blockIdx.y * 64, j0 = blockIdx.x * 64;
    const int m_begin = blockIdx.z * m_per_slice;
    const int m_end = min(M, m_begin + m_per_slice);
    C += (long long)blockIdx.z * K * N;
    float acc[4][4] = {};
    for (int m0 = m_begin; m0 < m_end; m0 += 16) {
        for (int q = 0; q < 4; ++q) {
            int idx = t + 256 * q;
            int r = idx / 64, col = idx % 64;
            int m = m0 + r;
            bool in_m = m < m_end;
            As[r][col] = (in_m && i0 + col < K) ? A[(long long)m * K + i0 + col] : 0.0f;
            Bs[r][col] = (in_m && j0 + col < N) ? B[(long long)m * N + j0 + col] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < 16; ++kk) {
            float a[4], b[4];
            for (int r = 0; r < 4; ++r) a[r] = As[kk][ty + 16 * r];
            for (int cc = 0; cc < 4; ++cc) b[cc] = Bs[kk][tx + 16 * cc];
            for (int r = 0; r < 4; ++r)
                for (int cc = 0; cc < 4; ++cc) acc[r][cc] += a[r] * b[cc];
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        int i = i0 + ty + 16 * r;
        if (i >= K) continue;
        for (int cc = 0; cc < 4; ++cc) {
            int j = j0 + tx + 16 * cc;
            if (j >= N) continue;
            long long at = (long long)i * N + j;
            C[at] = accumulate ? C[at] + acc[r][cc] : acc[r][cc];
        }
    }
}

// C (M x N) = A B^T for row-major A (M x K) and B (N x K): the input gradients, dy times the
// kernel transposed, without materialising the transpose. blockIdx.x walks row tiles of C
// (M is the long side: every pixel of a chunk of images), blockIdx.y column tiles.
// block=(16,16,1) tile=64x64, BK=16, 4x4 per thread. The tiles are read along K (contiguous
// in both operands) and stored k-major in shared memory; the +1 column keeps those transposing
// stores free of bank conflicts.
extern "C" __global__ void gemm_nt(const float* __restrict__ A, const float* __restrict__ B,
                                   float* __restrict__ C, int M, int N, int K) {
    __shared__ float As[16][65];
    __shared__ float Bs[16][65];
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    const int i0 = blockIdx.x * 64, j0 = blockIdx.y * 64;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int q = 0; q < 4; ++q) {
            int idx = t + 256 * q;
            int row = idx / 16, kk = idx % 16;
            int k = k0 + kk;
            As[kk][row] = (i0 + row < M && k < K) ? A[(long long)(i0 + row) * K + k] : 0.0f;
            Bs[kk][row] = (j0 + row < N && k < K) ? B[(long long)(j0 + row) * K + k] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < 16; ++kk) {
            float a[4], b[4];
            for (int r = 0; r < 4; ++r) a[r] = As[kk][ty + 16 * r];
            for (int cc = 0; cc < 4; ++cc) b[cc] = Bs[kk][tx + 16 * cc];
            for (int r = 0; r < 4; ++r)
                for (int cc = 0; cc < 4; ++cc) acc[r][cc] += a[r] * b[cc];
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        int i = i0 + ty + 16 * r;
        if (i >= M) continue;
        for (int cc = 0; cc < 4; ++cc) {
            int j = j0 + tx + 16 * cc;
            if (j < N) C[(long long)i * N + j] = acc[r][cc];
        }
    }
}

// out[i] [+]= sum over s of partial[s * len + i], slices added in order: the second half of a
// split sum (gemm_tn's slices), deterministic by construction.
extern "C" __global__ void sum_slices(const float* __restrict__ partial, float* __restrict__ out,
                                      int slices, long long len, int accumulate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float s = accumulate ? out[i] : 0.0f;
        for (int z = 0; z < slices; ++z) s += partial[(long long)z * len + i];
        out[i] = s;
    }
}

// Column sums of a (rows x cols) matrix, first half: partial[s][c] sums rows
// [s * rows_per_slice, ...) of column c in f64 (a bias gradient sums every output pixel of
// the batch; one thread per column would be serial over all of them). Neighbouring threads
// take neighbouring columns, so the loads coalesce.
extern "C" __global__ void col_sums_partial(const float* __restrict__ x,
                                            double* __restrict__ partial, long long rows,
                                            int cols, int rows_per_slice, int slices) {
    const long long total = (long long)slices * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int c = (int)(i % cols);
        long long s = i / cols;
        long long r0 = s * rows_per_slice;
        long long r1 = min(rows, r0 + rows_per_slice);
        double acc = 0.0;
        for (long long r = r0; r < r1; ++r) acc += x[r * cols + c];
        partial[i] = acc;
    }
}

// Column sums, second half: the slices of each column in order, rounded to f32 once.
extern "C" __global__ void col_sums_finish(const double* __restrict__ partial,
                                           float* __restrict__ out, int cols, int slices) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
        double acc = 0.0;
        for (int s = 0; s < slices; ++s) acc += partial[(long long)s * cols + c];
        out[c] = (float)acc;
    }
}

// col2im as a gather, the inverse of ops.cu's im2col_nhwc: one thread per input element
// (b, iy, ix, ci) sums the column-matrix entries (row (b, oy, ox), column (ky, kx, ci)) of
// every tap that read it, taps in (ky, kx) order as the reference adds them. No two threads
// write one element, so there are no atomics and the result is deterministic.
extern "C" __global__ void col2im_nhwc(const float* __restrict__ cols, float* __restrict__ dx,
                                       int n, int h, int w, int c, int kh, int kw, int sh,
                                       int sw, int pad_top, int pad_left, int oh, int ow) {
    const long long kdim = (long long)kh * kw * c;
    const long long total = (long long)n * h * w * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        int ix = (int)((i / c) % w);
        int iy = (int)((i / ((long long)c * w)) % h);
        long long b = i / ((long long)c * w * h);
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int py = iy + pad_top - ky;
            if (py < 0 || py % sh != 0 || py / sh >= oh) continue;
            int oy = py / sh;
            for (int kx = 0; kx < kw; ++kx) {
                int px = ix + pad_left - kx;
                if (px < 0 || px % sw != 0 || px / sw >= ow) continue;
                int ox = px / sw;
                long long row = (b * oh + oy) * ow + ox;
                acc += cols[row * kdim + ((long long)ky * kw + kx) * c + ci];
            }
        }
        dx[i] = acc;
    }
}

// Softmax cross-entropy, one thread per row (a classifier has few classes), as the reference
// computes it: probabilities exp(z - max) / sum with the max ignoring NaN (so a NaN logit turns
// the row NaN), the row's loss by log-sum-exp, max + ln(sum exp(z - max)) - z[label] (finite
// for confident wrong answers), and dlogits = (p - onehot) * inv_batch. Per-row losses go out
// in f64; the host adds them in row order.
extern "C" __global__ void softmax_cross_entropy_rows(const float* __restrict__ z,
                                                      const int* __restrict__ labels,
                                                      float* __restrict__ probs,
                                                      float* __restrict__ dlogits,
                                                      double* __restrict__ row_loss, int rows,
                                                      int cols, float inv_batch) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        const float* p = z + (long long)r * cols;
        float* pr = probs + (long long)r * cols;
        float* g = dlogits + (long long)r * cols;
        float m = -__int_as_float(0x7f800000);
        for (int j = 0; j < cols; ++j) m = p[j] > m ? p[j] : m;
        float s = 0.0f;
        for (int j = 0; j < cols; ++j) {
            float e = expf(p[j] - m);
            pr[j] = e;
            s += e;
        }
        for (int j = 0; j < cols; ++j) pr[j] = pr[j] / s;
        // The loss's max starts from the first logit, as the reference's does.
        float m2 = p[0];
        for (int j = 1; j < cols; ++j) m2 = p[j] > m2 ? p[j] : m2;
        float s2 = 0.0f;
        for (int j = 0; j < cols; ++j) s2 += expf(p[j] - m2);
        int label = labels[r];
        row_loss[r] = (double)(m2 + logf(s2) - p[label]);
        for (int j = 0; j < cols; ++j) g[j] = (j == label ? pr[j] - 1.0f : pr[j]) * inv_batch;
    }
}

// sum(x^2) in f64: each thread squares and adds its grid-stride elements in f64, the block
// adds its 256 partials by a fixed tree in shared memory, and partial[blockIdx.x] goes to the
// host, which adds the blocks in order. A fixed grid gives a fixed order: reproducible.
// block=(256,1,1).
extern "C" __global__ void sum_squares_partial(const float* __restrict__ x,
                                               double* __restrict__ partial, long long len) {
    __shared__ double s[256];
    double acc = 0.0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        double v = x[i];
        acc += v * v;
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// out = y + alpha x (the L2 penalty's gradient), alpha rounded to f32 on the host as the
// reference rounds it; into a new buffer, since a device tensor's memory may be shared.
extern "C" __global__ void axpy_f32(const float* __restrict__ x, const float* __restrict__ y,
                                    float* __restrict__ out, float alpha, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i]));
    }
}

// Keras's SGD in f32: v' = momentum v - lr g; w' = w + v' (Nesterov: w + momentum v' - lr g).
// New buffers for w and v (the old ones may be shared: a snapshot of the best epoch).
extern "C" __global__ void sgd_step_f32(const float* __restrict__ w, const float* __restrict__ g,
                                        const float* __restrict__ v, float* __restrict__ w_out,
                                        float* __restrict__ v_out, float lr, float momentum,
                                        int nesterov, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i];
        float lg = __fmul_rn(lr, gi);
        float nv = __fadd_rn(__fmul_rn(momentum, v[i]), -lg);
        float step = nesterov ? __fadd_rn(__fmul_rn(momentum, nv), -lg) : nv;
        v_out[i] = nv;
        w_out[i] = __fadd_rn(w[i], step);
    }
}

// Keras's Adam/AdamW in f32, in the reference's order: w *= keep (decay only);
// m += (g - m) b1; v += (g^2 - v) b2; w -= alpha m / (sqrt(v) + eps), with b1 = 1 - beta1,
// b2 = 1 - beta2 rounded to f32 on the host. New buffers for w, m and v.
extern "C" __global__ void adam_step_f32(const float* __restrict__ w,
                                         const float* __restrict__ g,
                                         const float* __restrict__ m,
                                         const float* __restrict__ v, float* __restrict__ w_out,
                                         float* __restrict__ m_out, float* __restrict__ v_out,
                                         float alpha, float b1, float b2, float eps, float keep,
                                         int decay, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i];
        float wi = decay ? __fmul_rn(w[i], keep) : w[i];
        float mi = __fadd_rn(m[i], __fmul_rn(__fadd_rn(gi, -m[i]), b1));
        float vi = __fadd_rn(v[i], __fmul_rn(__fadd_rn(__fmul_rn(gi, gi), -v[i]), b2));
        float upd = __fmul_rn(alpha, mi) / __fadd_rn(sqrtf(vi), eps);
        m_out[i] = mi;
        v_out[i] = vi;
        w_out[i] = __fadd_rn(wi, -upd);
    }
}
