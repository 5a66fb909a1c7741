//! Reference 2-D convolution and its gradients, NHWC input, `(kH, kW, Cin, Cout)` kernel
//! (Keras's layout), over f32 or f64.
//!
//! Forward:
//! `y[n, oy, ox, co] = act(z)`, `z = bias[co] + sum_{ky, kx, ci} x[n, iy, ix, ci] * k[ky, kx, ci, co]`
//! with `iy = oy * stride_h + ky - pad_top` and `ix = ox * stride_w + kx - pad_left`; taps
//! outside the input read zero.
//!
//! Backward, with `dz = dy * act'(z)` (for ReLU: `dy` where `y > 0`), differentiating the sum
//! term by term:
//! - `dk[ky, kx, ci, co] = sum_{n, oy, ox} x[n, iy, ix, ci] * dz[n, oy, ox, co]`;
//! - `dbias[co] = sum_{n, oy, ox} dz[n, oy, ox, co]`;
//! - `dx[n, iy, ix, ci] = sum_{ky, kx, co} k[ky, kx, ci, co] * dz[n, oy, ox, co]` over the output
//!   pixels whose window puts tap `(ky, kx)` on `(iy, ix)`.
//!
//! Loop order of the forward pass, and why: the innermost loop runs over output channels,
//! which are contiguous in both the kernel row `k[ky, kx, ci, ..]` and the output pixel, so the
//! compiler vectorizes it. A strip of `STRIP` neighbouring output pixels is accumulated
//! together, so each kernel row is loaded once per strip rather than once per pixel (VGG's
//! kernels are up to 9.4 MB; streaming them once per pixel would make the loop memory-bound).
//! Rayon splits the output rows. The gradients are written the same way round: every output
//! element is summed by one task in a fixed order, so they are reproducible bit for bit.

use rayon::prelude::*;

use super::by_dtype;
use crate::error::Result;
use crate::tensor::{
    Activation, Conv2dSpec, ConvGeometry, LayerGrads, Real, Tensor, Wanted, check_grad_shape,
};

/// Output pixels accumulated together (see the module comment).
const STRIP: usize = 8;

/// The reference convolution (f32 or f64, from the operands' dtype).
pub fn conv2d_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    spec: &Conv2dSpec,
) -> Result<Tensor> {
    by_dtype!(x, conv2d::<T>(x, kernel, bias, spec))
}

fn conv2d<T: Real>(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    spec: &Conv2dSpec,
) -> Result<Tensor> {
    let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    let mut out = Tensor::zeros_of(g.output_shape(), T::DTYPE)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (xd, kd) = (x.values::<T>()?, kernel.values::<T>()?);
    let bias = bias.map(Tensor::values::<T>).transpose()?;
    let (cin, cout) = (g.cin, g.cout);

    out.values_mut::<T>()?
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
                        None => px.fill(T::ZERO),
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

/// `dy` masked by the activation's derivative at the output `y`: the gradient with respect to
/// the pre-activation sum. ReLU passes `dy` where `y > 0` (NaN in `y` blocks it, as NaN > 0 is
/// false; the forward pass already carried the NaN).
pub fn activation_backward<T: Real>(
    y: &Tensor,
    dy: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    check_grad_shape("activation", dy.shape(), y.shape())?;
    match activation {
        Activation::Linear => Ok(dy.clone()),
        Activation::Relu => {
            let mut dz = dy.clone();
            let yv = y.values::<T>()?;
            dz.values_mut::<T>()?
                .par_chunks_mut(1 << 14)
                .zip(yv.par_chunks(1 << 14))
                .for_each(|(d, y)| {
                    for (d, &y) in d.iter_mut().zip(y) {
                        if y <= T::ZERO || y.is_nan() {
                            *d = T::ZERO;
                        }
                    }
                });
            Ok(dz)
        }
    }
}

/// The reference gradients of [`conv2d_reference`] (see the module comment).
pub fn conv2d_backward_reference(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    kernel: &Tensor,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    by_dtype!(x, conv2d_backward::<T>(x, y, dy, kernel, spec, wanted))
}

fn conv2d_backward<T: Real>(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    kernel: &Tensor,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    let g = spec.geometry(x.shape(), kernel.shape(), None)?;
    check_grad_shape("conv2d", dy.shape(), &g.output_shape())?;
    let dz = activation_backward::<T>(y, dy, spec.activation)?;
    let input = if wanted.input {
        Some(conv2d_input_grad::<T>(&dz, kernel, &g)?)
    } else {
        None
    };
    let (kernel, bias) = if wanted.params {
        let (k, b) = conv2d_kernel_grad::<T>(x, &dz, &g)?;
        (Some(k), Some(b))
    } else {
        (None, None)
    };
    Ok(LayerGrads {
        input,
        kernel,
        bias,
    })
}

/// `dx` for the pre-activation gradient `dz`: gathered per input pixel, each input row by one
/// task (so nothing is summed across threads).
pub fn conv2d_input_grad<T: Real>(
    dz: &Tensor,
    kernel: &Tensor,
    g: &ConvGeometry,
) -> Result<Tensor> {
    let mut dx = Tensor::zeros_of(g.input_shape(), T::DTYPE)?;
    if dx.numel() == 0 || dz.numel() == 0 {
        return Ok(dx);
    }
    let (dzv, kd) = (dz.values::<T>()?, kernel.values::<T>()?);
    let (cin, cout) = (g.cin, g.cout);
    // The output coordinate whose tap `k` lands on input coordinate `i`, if any.
    let source = |i: usize, k: usize, pad: usize, stride: usize, out: usize| {
        let p = (i + pad).checked_sub(k)?;
        (p % stride == 0 && p / stride < out).then_some(p / stride)
    };
    dx.values_mut::<T>()?
        .par_chunks_mut(g.w * cin)
        .enumerate()
        .for_each(|(row, dx_row)| {
            let (n, iy) = (row / g.h, row % g.h);
            for (ix, px) in dx_row.chunks_exact_mut(cin).enumerate() {
                for ky in 0..g.kh {
                    let Some(oy) = source(iy, ky, g.pad_top, g.stride[0], g.oh) else {
                        continue;
                    };
                    for kx in 0..g.kw {
                        let Some(ox) = source(ix, kx, g.pad_left, g.stride[1], g.ow) else {
                            continue;
                        };
                        let d = &dzv[((n * g.oh + oy) * g.ow + ox) * cout..][..cout];
                        let k_tap = &kd[(ky * g.kw + kx) * cin * cout..][..cin * cout];
                        for (v, k_row) in px.iter_mut().zip(k_tap.chunks_exact(cout)) {
                            let mut s = T::ZERO;
                            for (&a, &b) in k_row.iter().zip(d) {
                                s += a * b;
                            }
                            *v += s;
                        }
                    }
                }
            }
        });
    Ok(dx)
}

/// `dk` and `dbias` for the pre-activation gradient `dz`: one task per kernel tap, which
/// accumulates the outer products `x[.., ci] dz[.., co]` over every output pixel in order.
pub fn conv2d_kernel_grad<T: Real>(
    x: &Tensor,
    dz: &Tensor,
    g: &ConvGeometry,
) -> Result<(Tensor, Tensor)> {
    let mut dk = Tensor::zeros_of(g.kernel_shape(), T::DTYPE)?;
    let mut db = Tensor::zeros_of([g.cout], T::DTYPE)?;
    let (xd, dzv) = (x.values::<T>()?, dz.values::<T>()?);
    let (cin, cout) = (g.cin, g.cout);
    if dk.numel() > 0 {
        dk.values_mut::<T>()?
            .par_chunks_mut(cin * cout)
            .enumerate()
            .for_each(|(tap, dk_tap)| {
                let (ky, kx) = (tap / g.kw, tap % g.kw);
                for n in 0..g.n {
                    for oy in 0..g.oh {
                        let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.pad_top) else {
                            continue;
                        };
                        if iy >= g.h {
                            continue;
                        }
                        for ox in 0..g.ow {
                            let Some(ix) = (ox * g.stride[1] + kx).checked_sub(g.pad_left) else {
                                continue;
                            };
                            if ix >= g.w {
                                continue;
                            }
                            let xs = &xd[((n * g.h + iy) * g.w + ix) * cin..][..cin];
                            let d = &dzv[((n * g.oh + oy) * g.ow + ox) * cout..][..cout];
                            for (&a, row) in xs.iter().zip(dk_tap.chunks_exact_mut(cout)) {
                                for (o, &b) in row.iter_mut().zip(d) {
                                    *o += a * b;
                                }
                            }
                        }
                    }
                }
            });
    }
    let dbv = db.values_mut::<T>()?;
    for px in dzv.chunks_exact(cout.max(1)) {
        for (o, &v) in dbv.iter_mut().zip(px) {
            *o += v;
        }
    }
    Ok((dk, db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::Padding;

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

    /// (input NHWC, kernel HWIO, stride, padding): odd sizes, strides, every padding.
    type Case = ([usize; 4], [usize; 4], [usize; 2], Padding);
    pub(crate) const CASES: &[Case] = &[
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

    #[test]
    fn matches_the_definition_on_odd_shapes() {
        let mut rng = Rng::new(42);
        for &(xs, ks, stride, padding) in CASES {
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
                // The same kernel in f64 agrees with the definition to rounding.
                let got64 = conv2d_reference(
                    &x.cast(crate::tensor::DType::F64).unwrap(),
                    &k.cast(crate::tensor::DType::F64).unwrap(),
                    Some(&b.cast(crate::tensor::DType::F64).unwrap()),
                    &spec,
                )
                .unwrap();
                for (&g, &w) in got64.values::<f64>().unwrap().iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-12 * scale, "f64: {g} vs {w}");
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

    #[test]
    fn mixed_dtypes_are_refused() {
        let x = Tensor::zeros_of([1, 3, 3, 1], crate::tensor::DType::F64).unwrap();
        let k = Tensor::from_vec([1, 1, 1, 1], &[1.0]).unwrap();
        let e = conv2d_reference(&x, &k, None, &Conv2dSpec::same_relu()).unwrap_err();
        assert!(e.to_string().contains("f32"), "{e}");
    }
}
