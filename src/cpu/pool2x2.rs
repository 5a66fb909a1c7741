//! VGG's 2x2 stride-2 max pooling and its gradient, specialised: each output pixel is the
//! lane-wise maximum of four input pixels' channel vectors, a pure streaming pass the compiler
//! vectorizes. The general reference kernel walks windows and padding per element and was
//! 5-10% of a VGG16 pass. Windows do not overlap, so the backward pass writes each pair of
//! input rows from one output row, in parallel, with no accumulation.

use rayon::prelude::*;

use crate::cpu::isa::Isa;
use crate::error::Result;
use crate::tensor::real::beats;
use crate::tensor::real::max_nan;
use crate::tensor::{Padding, Pool2dSpec, Tensor, check_grad_shape};

/// Whether `spec` is the case this kernel handles.
pub fn is_2x2_stride2(spec: &Pool2dSpec) -> bool {
    spec.size == [2, 2] && spec.stride == [2, 2] && spec.padding == Padding::Valid
}

/// Max pooling for [`is_2x2_stride2`] specs; NaN wins, as in the reference.
pub fn max_pool_2x2(isa: Isa, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    assert!(is_2x2_stride2(spec), "a 2x2 stride-2 valid pooling");
    let g = spec.geometry(x.shape())?;
    let mut out = Tensor::for_overwrite(g.output_shape())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (xd, c, w) = (x.data(), g.c, g.w);
    out.data_mut()
        .par_chunks_mut(g.ow * c)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            let top = &xd[((n * g.h + 2 * oy) * w) * c..][..w * c];
            let bottom = &xd[((n * g.h + 2 * oy + 1) * w) * c..][..w * c];
            #[cfg(target_arch = "x86_64")]
            if isa.runs_avx2() {
                // SAFETY: AVX2 is available (checked just above).
                unsafe { pool_row_avx2(top, bottom, c, out_row) };
                return;
            }
            let _ = isa;
            pool_row(top, bottom, c, out_row);
        });
    Ok(out)
}

#[inline(always)]
fn pool_row(top: &[f32], bottom: &[f32], c: usize, out_row: &mut [f32]) {
    for (ox, o) in out_row.chunks_exact_mut(c).enumerate() {
        let (t, b) = (&top[2 * ox * c..][..2 * c], &bottom[2 * ox * c..][..2 * c]);
        for (j, o) in o.iter_mut().enumerate() {
            *o = max_nan(max_nan(t[j], t[c + j]), max_nan(b[j], b[c + j]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pool_row_avx2(top: &[f32], bottom: &[f32], c: usize, out_row: &mut [f32]) {
    pool_row(top, bottom, c, out_row)
}

/// The gradient of [`max_pool_2x2`] with respect to `x`: each output's gradient goes to the
/// first of its window's four inputs holding the maximum (row-major, NaN wins), as the
/// reference routes it. Rows and columns the pool dropped (odd sizes) get zero.
pub fn max_pool_2x2_backward(x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    assert!(is_2x2_stride2(spec), "a 2x2 stride-2 valid pooling");
    let g = spec.geometry(x.shape())?;
    check_grad_shape("max_pool2d", dy.shape(), &g.output_shape())?;
    let mut dx = Tensor::zeros(x.shape().clone())?;
    if dx.numel() == 0 || dy.numel() == 0 {
        return Ok(dx);
    }
    let (xd, dyv, c, w) = (x.data(), dy.data(), g.c, g.w);
    // One task per pair of input rows of one image (the last chunk of an odd height is the
    // dropped row).
    dx.data_mut()
        .par_chunks_mut(g.h * w * c)
        .enumerate()
        .for_each(|(n, dimg)| {
            dimg.par_chunks_mut(2 * w * c)
                .enumerate()
                .filter(|(oy, _)| *oy < g.oh)
                .for_each(|(oy, dpair)| {
                    let top = &xd[((n * g.h + 2 * oy) * w) * c..][..2 * w * c];
                    let d = &dyv[((n * g.oh + oy) * g.ow) * c..][..g.ow * c];
                    for ox in 0..g.ow {
                        for ch in 0..c {
                            // Window order: (0,0), (0,1), (1,0), (1,1).
                            let at = [2 * ox, 2 * ox + 1, w + 2 * ox, w + 2 * ox + 1]
                                .map(|p| p * c + ch);
                            let mut best = at[0];
                            for &a in &at[1..] {
                                if beats(top[a], top[best]) {
                                    best = a;
                                }
                            }
                            dpair[best] = d[ox * c + ch];
                        }
                    }
                });
        });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::max_pool2d_reference;
    use crate::rng::Rng;

    #[test]
    fn matches_the_reference_on_odd_sizes_with_nan() {
        let mut rng = Rng::new(9);
        for (n, h, w, c) in [(1, 2, 2, 1), (2, 5, 7, 3), (1, 17, 16, 63), (3, 9, 4, 17)] {
            let mut v = rng.uniform_vec(n * h * w * c, -1.0, 1.0);
            v[c + 1.min(c - 1)] = f32::NAN;
            let x = Tensor::from_vec([n, h, w, c], &v).unwrap();
            let spec = Pool2dSpec::vgg();
            let want = max_pool2d_reference(&x, &spec).unwrap();
            for isa in Isa::all_available() {
                let got = max_pool_2x2(isa, &x, &spec).unwrap();
                assert_eq!(got.shape(), want.shape());
                for (a, b) in got.data().iter().zip(want.data()) {
                    assert!(a == b || (a.is_nan() && b.is_nan()), "{isa}: {a} vs {b}");
                }
                assert!(got.data().iter().any(|v| v.is_nan()));
            }
            let dy =
                Tensor::from_vec(want.dims(), &rng.uniform_vec(want.numel(), -1.0, 1.0)).unwrap();
            let want = crate::cpu::max_pool2d_backward_reference(&x, &dy, &spec).unwrap();
            let got = max_pool_2x2_backward(&x, &dy, &spec).unwrap();
            assert_eq!(got.data(), want.data(), "({n}, {h}, {w}, {c}) backward");
        }
    }

    #[test]
    fn backward_routes_ties_like_the_reference() {
        // Ties everywhere (ReLU outputs are often 0): the first position must win.
        let x = Tensor::from_vec([1, 2, 4, 1], &[0., 0., 1., 1., 0., 0., 1., 1.]).unwrap();
        let dy = Tensor::from_vec([1, 1, 2, 1], &[5., 7.]).unwrap();
        let got = max_pool_2x2_backward(&x, &dy, &Pool2dSpec::vgg()).unwrap();
        assert_eq!(got.data(), &[5., 0., 7., 0., 0., 0., 0., 0.]);
    }
}
