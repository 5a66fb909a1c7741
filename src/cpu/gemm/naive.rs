//! The first two rungs of the GEMM ladder, kept to show what each later step buys.

use super::Epilogue;

/// Rung 1: the textbook triple loop, one dot product per element of C. B is read down a
/// column (stride `ldb`), so every multiply-add waits on a cache miss once B outgrows L1.
#[allow(clippy::too_many_arguments)]
pub fn gemm_naive(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                s += a[i * lda + p] * b[p * ldb + j];
            }
            let at = i * ldc + j;
            c[at] = if ep.accumulate {
                c[at] + s
            } else {
                ep.apply(s, j)
            };
        }
    }
}

/// Rows of A, depth and columns of B per cache block in [`gemm_blocked`].
const BM: usize = 64;
const BK: usize = 256;
const BN: usize = 512;

/// Rung 2: loops reordered to i-k-j (the inner loop runs along rows of B and C, unit stride,
/// which the compiler vectorizes) and tiled so a `BK x BN` block of B stays in L2 while
/// `BM` rows of A pass over it. No packing, no hand-written SIMD.
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocked(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
) {
    if !ep.accumulate {
        for i in 0..m {
            c[i * ldc..][..n].fill(0.0);
        }
    }
    for j0 in (0..n).step_by(BN) {
        let nb = BN.min(n - j0);
        for p0 in (0..k).step_by(BK) {
            let kb = BK.min(k - p0);
            for i0 in (0..m).step_by(BM) {
                for i in i0..(i0 + BM).min(m) {
                    let crow = &mut c[i * ldc + j0..][..nb];
                    for p in p0..p0 + kb {
                        let av = a[i * lda + p];
                        let brow = &b[p * ldb + j0..][..nb];
                        for (cv, &bv) in crow.iter_mut().zip(brow) {
                            *cv += av * bv;
                        }
                    }
                }
            }
        }
    }
    if !ep.accumulate {
        for i in 0..m {
            for (j, v) in c[i * ldc..][..n].iter_mut().enumerate() {
                *v = ep.apply(*v, j);
            }
        }
    }
}
