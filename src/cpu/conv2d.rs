//! Reference 2-D convolution, NHWC input, `(kH, kW, Cin, Cout)` kernel (Keras's layout).
//!
//! out[n, oy, ox, co] = act(bias[co] + sum_{ky, kx, ci} x[n, iy, ix, ci] * k[ky, kx, ci, co])
//! with iy = oy * stride_h + ky - pad_top and ix = ox * stride_w + kx - pad_left; taps outside
//! the input read zero.
//!
//! Loop order, and why: the innermost loop runs over output channels, which are contiguous in
//! both the kernel row `k[ky, kx, ci, ..]` and the output pixel, so the compiler vectorizes it.
//! A strip of `STRIP` neighbouring output pixels is accumulated together, so each kernel row is
//! loaded once per strip rather than once per pixel (VGG's kernels are up to 9.4 MB; streaming
//! them once per pixel would make the loop memory-bound). The strip's accumulators,
//! `STRIP * Cout` floats (16 KB at Cout = 512), stay in L1. Rayon splits the output rows.

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{Conv2dSpec, Tensor};

/// Output pixels accumulated together (see the module comment).
const STRIP: usize = 8;

pub fn conv2d_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    spec: &Conv2dSpec,
) -> Result<Tensor> {
    let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    let mut out = Tensor::zeros(g.output_shape())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (xd, kd) = (x.data(), kernel.data());
    let bias = bias.map(Tensor::data);
    let (cin, cout) = (g.cin, g.cout);

    out.data_mut()
        .par_chunks_mut(g.ow * cout)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            // Input offsets of the strip's pixels for one kernel tap; None where the tap is padding.
            let mut taps: Vec<(usize, usize)> = Vec::with_capacity(STRIP);
            for (strip, acc) in out_row.chunks_mut(STRIP * cout).enumerate() {
                let ox0 = strip * STRIP;
                let pixels = acc.len() / cout;
                for px in acc.chunks_exact_mut(cout) {
                    match bias {
                        Some(b) => px.copy_from_slice(b),
                        None => px.fill(0.0),
                    }
                }
                for ky in 0..g.kh {
                    let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.pad_top) else {
                        continue;
                    };
                    if iy >= g.h {
                        continue;
                    }
                    for kx in 0..g.kw {
                        taps.clear();
                        for p in 0..pixels {
                            let ix = ((ox0 + p) * g.stride[1] + kx).checked_sub(g.pad_left);
                            if let Some(ix) = ix.filter(|&ix| ix < g.w) {
                                taps.push((p * cout, ((n * g.h + iy) * g.w + ix) * cin));
                            }
                        }
                        let k_tap = &kd[(ky * g.kw + kx) * cin * cout..][..cin * cout];
                        for (ci, k_row) in k_tap.chunks_exact(cout).enumerate() {
                            for &(acc_at, x_at) in &taps {
                                let a = xd[x_at + ci];
                                for (o, &k) in acc[acc_at..acc_at + cout].iter_mut().zip(k_row) {
                                    *o += a * k;
                                }
                            }
                        }
                    }
                }
                for v in acc.iter_mut() {
                    *v = spec.activation.apply(*v);
                }
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::{Activation, Padding};

    /// The definition, term by term, in f64: the check for the reference itself.
    fn conv2d_naive_f64(x: &Tensor, k: &Tensor, b: &Tensor, spec: &Conv2dSpec) -> Vec<f64> {
        let g = spec
            .geometry(x.shape(), k.shape(), Some(b.shape()))
            .unwrap();
        let mut out = vec![0f64; g.output_shape().numel()];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for co in 0..g.cout {
                        let mut s = b.data()[co] as f64;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride[0] + ky) as isize - g.pad_top as isize;
                                let ix = (ox * g.stride[1] + kx) as isize - g.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                for ci in 0..g.cin {
                                    let xv = x.data()[((n * g.h + iy as usize) * g.w
                                        + ix as usize)
                                        * g.cin
                                        + ci];
                                    let kv =
                                        k.data()[((ky * g.kw + kx) * g.cin + ci) * g.cout + co];
                                    s += xv as f64 * kv as f64;
                                }
                            }
                        }
                        let s = if spec.activation == Activation::Relu {
                            s.max(0.0)
                        } else {
                            s
                        };
                        out[((n * g.oh + oy) * g.ow + ox) * g.cout + co] = s;
                    }
                }
            }
        }
        out
    }

    fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape, &rng.uniform_vec(n, -1.0, 1.0)).unwrap()
    }

    /// Tolerance: f32 accumulation over at most 5*5*17 = 425 terms of magnitude <= 1 stays
    /// within 1e-5 of the largest output; measured worst here is about 1e-6.
    const TOL: f64 = 1e-5;

    #[test]
    fn matches_the_definition_on_odd_shapes() {
        let mut rng = Rng::new(42);
        // (input NHWC, kernel HWIO, stride, padding)
        type Case = ([usize; 4], [usize; 4], [usize; 2], Padding);
        let cases: &[Case] = &[
            ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1], Padding::Valid),
            ([1, 3, 3, 1], [3, 3, 1, 3], [1, 1], Padding::Same),
            ([2, 17, 13, 3], [3, 3, 3, 17], [1, 1], Padding::Same),
            ([1, 9, 11, 5], [3, 3, 5, 7], [2, 2], Padding::Same),
            ([3, 8, 10, 4], [3, 3, 4, 6], [2, 1], Padding::Valid),
            ([1, 7, 6, 17], [5, 5, 17, 3], [1, 2], Padding::Same),
            (
                [1, 5, 5, 2],
                [2, 3, 2, 4],
                [1, 1],
                Padding::Explicit([1, 0, 2, 1]),
            ),
            ([1, 4, 63, 3], [3, 3, 3, 9], [1, 1], Padding::Same),
            ([1, 2, 2, 1], [5, 5, 1, 2], [3, 3], Padding::Same),
        ];
        for &(xs, ks, stride, padding) in cases {
            for activation in [Activation::Linear, Activation::Relu] {
                let spec = Conv2dSpec {
                    stride,
                    padding,
                    activation,
                };
                let (x, k, b) = (
                    random(&xs, &mut rng),
                    random(&ks, &mut rng),
                    random(&ks[3..], &mut rng),
                );
                let want = conv2d_naive_f64(&x, &k, &b, &spec);
                let got = conv2d_reference(&x, &k, Some(&b), &spec).unwrap();
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
                assert_eq!(got.numel(), want.len());
                for (i, (&g, &w)) in got.data().iter().zip(&want).enumerate() {
                    let err = (g as f64 - w).abs();
                    assert!(
                        err <= TOL * scale,
                        "{xs:?} {ks:?} {stride:?} {padding:?} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_bias_and_nan_propagate() {
        let mut x = Tensor::from_vec([1, 3, 3, 1], &[1.0; 9]).unwrap();
        let k = Tensor::from_vec([3, 3, 1, 1], &[1.0; 9]).unwrap();
        let spec = Conv2dSpec::same_relu();
        let y = conv2d_reference(&x, &k, None, &spec).unwrap();
        assert_eq!(y.data(), &[4., 6., 4., 6., 9., 6., 4., 6., 4.]);
        x.data_mut()[4] = f32::NAN;
        let y = conv2d_reference(&x, &k, None, &spec).unwrap();
        assert!(
            y.data().iter().all(|v| v.is_nan()),
            "NaN must reach every output that reads it"
        );
    }
}
