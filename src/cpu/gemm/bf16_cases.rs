//! The operands of a bf16 product and the checks on its result, shared by the tests of the
//! AVX512-BF16 kernel (`bf16.rs`) and of the AMX one (`amx.rs`), which promise the same product
//! within the same tolerance (see `bf16.rs`'s test docs).

use super::Epilogue;
use super::bf16::{gemm_bf16_reference, to_bf16_f32};
use crate::rng::Rng;

/// A product's operands: row-major with padding between rows, uniform in [-1, 1] (never
/// all zero), a bias and a starting C for accumulating products.
pub(super) struct Case {
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) lda: usize,
    pub(super) ldb: usize,
    pub(super) ldc: usize,
    pub(super) a: Vec<f32>,
    pub(super) b: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) c0: Vec<f32>,
}

impl Case {
    pub(super) fn new(m: usize, n: usize, k: usize, pad: usize, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let (lda, ldb, ldc) = (k + pad, n + 2 * pad, n + pad + 1);
        Case {
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
            a: rng.uniform_vec(m * lda, -1.0, 1.0),
            b: rng.uniform_vec(k * ldb, -1.0, 1.0),
            bias: rng.uniform_vec(n, -0.5, 0.5),
            c0: rng.uniform_vec(m * ldc, -2.0, 2.0),
        }
    }

    /// C before the product: the random `c0` when accumulating, else NaN (garbage every
    /// element must overwrite); NaN between rows either way, which must stay.
    pub(super) fn c_start(&self, ep: Epilogue) -> Vec<f32> {
        let mut c = vec![f32::NAN; self.m * self.ldc];
        if ep.accumulate {
            for i in 0..self.m {
                c[i * self.ldc..][..self.n].copy_from_slice(&self.c0[i * self.ldc..][..self.n]);
            }
        }
        c
    }

    pub(super) fn reference(&self, ep: Epilogue) -> Vec<f32> {
        let mut c = self.c_start(ep);
        gemm_bf16_reference(
            self.m, self.n, self.k, &self.a, self.lda, &self.b, self.ldb, &mut c, self.ldc, ep,
        );
        c
    }

    /// `sum_k |a_k b_k|` of the rounded operands, per element of C (`m x n`).
    pub(super) fn abs_sums(&self) -> Vec<f64> {
        let mut s = vec![0f64; self.m * self.n];
        for i in 0..self.m {
            for p in 0..self.k {
                let a = to_bf16_f32(self.a[i * self.lda + p]).abs() as f64;
                for j in 0..self.n {
                    s[i * self.n + j] += a * to_bf16_f32(self.b[p * self.ldb + j]).abs() as f64;
                }
            }
        }
        s
    }

    /// The tolerance scale of each element under `ep` (see the module docs).
    pub(super) fn scale(&self, abs_sums: &[f64], ep: Epilogue, i: usize, j: usize) -> f64 {
        let mut s = abs_sums[i * self.n + j];
        if let Some(b) = ep.bias {
            s += (b[j] as f64).abs();
        }
        if ep.accumulate {
            s += (self.c0[i * self.ldc + j] as f64).abs();
        }
        s
    }

    pub(super) fn assert_padding_untouched(&self, c: &[f32], what: &str) {
        for i in 0..self.m {
            let pad = &c[i * self.ldc + self.n..(i + 1) * self.ldc];
            assert!(
                pad.iter().all(|v| v.is_nan()),
                "{what}: padding of row {i} written"
            );
        }
    }

    /// Every element within the tolerance of `want` (`1e-5 * scale + 1e-30`, `bf16.rs`'s test
    /// docs), finite (a NaN fails), the padding between rows untouched; the worst error /
    /// scale.
    pub(super) fn check(&self, got: &[f32], want: &[f32], ep: Epilogue, what: &str) -> f64 {
        let sums = self.abs_sums();
        let mut worst = 0f64;
        for i in 0..self.m {
            for j in 0..self.n {
                let (g, w) = (got[i * self.ldc + j], want[i * self.ldc + j]);
                let scale = self.scale(&sums, ep, i, j);
                let err = (f64::from(g) - f64::from(w)).abs();
                assert!(
                    g.is_finite() && w.is_finite() && err <= 1e-5 * scale + 1e-30,
                    "{what}: C[{i},{j}] = {g}, want {w} (scale {scale})"
                );
                if scale > 0.0 {
                    worst = worst.max(err / scale);
                }
            }
        }
        self.assert_padding_untouched(got, what);
        worst
    }
}

pub(super) fn epilogues(bias: &[f32]) -> [Epilogue<'_>; 5] {
    [
        Epilogue::NONE,
        Epilogue::new(Some(bias), false),
        Epilogue::new(Some(bias), true),
        Epilogue::ACCUMULATE,
        Epilogue {
            bias: Some(bias),
            relu: true,
            accumulate: true,
        },
    ]
}
