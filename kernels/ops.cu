// The CUDA backend's ops other than GEMM, NHWC like the rest of keel. Each is a plain
// grid-stride loop: the launch code picks a grid that fills the device and the kernel walks
// whatever is left, so any size works with any grid. These are correct and simple; the fast
// convolution path (implicit GEMM, fused pools) is CUDA II's work.

// im2col for NHWC input and a (kH, kW, Cin, Cout) kernel: row (n, oy, ox), column
// (ky, kx, ci), so that cols (M x K) @ kernel (K x Cout) is the convolution. Padding reads 0.
extern "C" __global__ void im2col_nhwc(const float* __restrict__ x, float* __restrict__ cols,
                                       int n, int h, int w, int c, int kh, int kw, int sh,
                                       int sw, int pad_top, int pad_left, int oh, int ow) {
    const long long kdim = (long long)kh * kw * c;
    const long long total = (long long)n * oh * ow * kdim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long row = i / kdim;
        int col = (int)(i - row * kdim);
        int ci = col % c;
        int kx = (col / c) % kw;
        int ky = col / (c * kw);
        int ox = (int)(row % ow);
        int oy = (int)((row / ow) % oh);
        int b = (int)(row / ((long long)ow * oh));
        int iy = oy * sh + ky - pad_top;
        int ix = ox * sw + kx - pad_left;
        float v = 0.0f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            v = x[(((long long)b * h + iy) * w + ix) * c + ci];
        }
        cols[i] = v;
    }
}

// Max pooling over (ph, pw) windows with strides (sh, sw); padded positions are skipped, as
// TensorFlow's 'same' max pool does.
extern "C" __global__ void max_pool_nhwc(const float* __restrict__ x, float* __restrict__ y,
                                         int n, int h, int w, int c, int ph, int pw, int sh,
                                         int sw, int pad_top, int pad_left, int oh, int ow) {
    const long long total = (long long)n * oh * ow * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        int ox = (int)((i / c) % ow);
        int oy = (int)((i / ((long long)c * ow)) % oh);
        int b = (int)(i / ((long long)c * ow * oh));
        float m = -__int_as_float(0x7f800000);  // -inf
        for (int ky = 0; ky < ph; ++ky) {
            int iy = oy * sh + ky - pad_top;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < pw; ++kx) {
                int ix = ox * sw + kx - pad_left;
                if (ix < 0 || ix >= w) continue;
                m = keel_max_nan(m, x[(((long long)b * h + iy) * w + ix) * c + ci]);
            }
        }
        y[i] = m;
    }
}

// Global average or max over H and W: one thread per (image, channel); neighbouring threads
// read neighbouring channels, so the loads coalesce.
extern "C" __global__ void global_pool_nhwc(const float* __restrict__ x, float* __restrict__ y,
                                            int n, int hw, int c, int is_max) {
    const long long total = (long long)n * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        long long b = i / c;
        const float* p = x + b * hw * c + ci;
        if (is_max) {
            float m = -__int_as_float(0x7f800000);
            for (int j = 0; j < hw; ++j) m = keel_max_nan(m, p[(long long)j * c]);
            y[i] = m;
        } else {
            // Accumulated in double: a 7x7 or 14x14 mean in float would differ from the CPU
            // reference by more than the tests allow on large activations.
            double s = 0.0;
            for (int j = 0; j < hw; ++j) s += p[(long long)j * c];
            y[i] = (float)(s / hw);
        }
    }
}

// max(x, 0), NaN kept.
extern "C" __global__ void relu_f32(const float* __restrict__ x, float* __restrict__ y,
                                    long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = (v > 0.0f || v != v) ? v : 0.0f;
    }
}

// x * mask, element-wise (dropout).
extern "C" __global__ void mul_f32(const float* __restrict__ x, const float* __restrict__ m,
                                   float* __restrict__ y, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = x[i] * m[i];
    }
}

// Softmax over each row of a (rows, cols) matrix: one thread per row, since a classifier has
// few classes. The max is subtracted first so exp cannot overflow.
extern "C" __global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ y,
                                        int rows, int cols) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        const float* p = x + (long long)r * cols;
        float* q = y + (long long)r * cols;
        float m = p[0];
        for (int j = 1; j < cols; ++j) m = keel_max_nan(m, p[j]);
        double s = 0.0;
        for (int j = 0; j < cols; ++j) {
            float e = expf(p[j] - m);
            q[j] = e;
            s += e;
        }
        float inv = (float)(1.0 / s);
        for (int j = 0; j < cols; ++j) q[j] *= inv;
    }
}

// Copy a rows x cols matrix of 16-bit elements (bf16 bits) into an out_rows x out_cols one,
// zero-filling the new rows and columns: TMA needs row pitches that are multiples of 16 bytes,
// and zeros added along K change no product.
extern "C" __global__ void pad_u16(const unsigned short* __restrict__ src,
                                   unsigned short* __restrict__ dst, int rows, int cols,
                                   int out_rows, int out_cols) {
    const long long total = (long long)out_rows * out_cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int r = (int)(i / out_cols);
        int c = (int)(i % out_cols);
        dst[i] = (r < rows && c < cols) ? src[(long long)r * cols + c] : (unsigned short)0;
    }
}

// f32 -> bf16 bits, round to nearest even as the `half` crate rounds on the host, NaN kept
// quiet: the BF16 convolutions' weights, converted once per layer on the device (the weights
// of a layer being fine-tuned live there already).
extern "C" __global__ void f32_to_bf16(const float* __restrict__ src,
                                       unsigned short* __restrict__ dst, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        dst[i] = keel_f32_to_bf16(src[i]);
    }
}
