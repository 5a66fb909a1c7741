//! The gradients of a convolution on the fast kernels.
//!
//! With `dz` the gradient with respect to the pre-activation output (the ReLU's mask applied,
//! since the forward pass fused the ReLU):
//!
//! - **Input gradient.** `dx[iy, ix, ci] = sum_{ky, kx, co} k[ky, kx, ci, co] dz[iy + pt - ky, ix + pl - kx, co]`
//!   for stride 1. Substituting `ky' = kh - 1 - ky` turns it into a forward correlation of `dz`
//!   with the kernel rotated by 180 degrees and its channel axes swapped,
//!   `k'[ky', kx', co, ci] = k[kh-1-ky', kw-1-kx', ci, co]`, padded by `kh - 1 - pt` before
//!   (and whatever makes the output `h` long after). For VGG's 3x3 "same" layers that is again
//!   a 3x3 "same" convolution, so it runs on the whole forward ladder, Winograd included. The
//!   flipped kernel is derived from the weights and kept in their cache beside the forward
//!   plan. Other strides fall back to the reference loops.
//! - **Kernel gradient.** `dk = im2col(x)^T dz`, `(kh kw Cin) x pixels` times `pixels x Cout`:
//!   the packed GEMM with A gathered from the image block by block ([`Im2colT`]), never stored.
//!   Where the forward pass would use Winograd (3x3 stride 1, enough tiles), the kernel
//!   gradient uses it too, read the other way round ([`kernel_grad_winograd`]): 4x fewer
//!   multiplies for F(4x4), as in the forward pass.
//! - **Bias gradient.** Column sums of `dz`, in fixed chunks of pixels added in order.
//!
//! Every element is summed in an order that depends on neither the thread count nor timing,
//! so training is reproducible bit for bit.

use rayon::prelude::*;

use super::{
    ConvAlgo, ConvPlan, Im2colT, Variant, conv2d_bf16, conv2d_with, f32_host, kernel_grad_winograd,
};
use crate::cpu::gemm::{self, BSource, Epilogue};
use crate::cpu::isa::Isa;
use crate::cpu::{activation_backward, conv2d_input_grad};
use crate::error::Result;
use crate::tensor::{
    Activation, Conv2dSpec, ConvGeometry, LayerGrads, LayerParams, Padding, Tensor, Wanted,
    check_grad_shape,
};

/// Pixels per partial sum of the bias gradient.
const BIAS_CHUNK: usize = 1024;

/// The gradients of `conv2d(x, w, spec) = y` given `dy`, on `isa`; the input gradient's
/// convolution uses `forced` where it applies, else keel's choice per geometry.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with(
    forced: Option<ConvAlgo>,
    isa: Isa,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    backward(forced, isa, false, x, y, dy, w, spec, wanted)
}

/// [`conv2d_backward_with`] for `--precision bf16`: the input gradient, a forward convolution
/// of `dz` with the flipped kernel, runs on the bf16 kernels like the forward pass
/// ([`conv2d_bf16`]: operands rounded to bfloat16, f32 sums). The kernel and bias gradients
/// stay f32: they are sums over every pixel of the batch, and the update they feed is applied
/// to f32 weights.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_bf16(
    forced: Option<ConvAlgo>,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    backward(forced, Isa::Avx512, true, x, y, dy, w, spec, wanted)
}

#[allow(clippy::too_many_arguments)]
fn backward(
    forced: Option<ConvAlgo>,
    isa: Isa,
    bf16: bool,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    let g = spec.geometry(x.shape(), w.kernel().shape(), None)?;
    check_grad_shape("conv2d", dy.shape(), &g.output_shape())?;
    f32_host(&[x, y, dy, w.kernel()])?;
    let dz = activation_backward::<f32>(y, dy, spec.activation)?;
    let input = if wanted.input {
        Some(input_grad(forced, isa, bf16, &dz, w, &g)?)
    } else {
        None
    };
    let (kernel, bias) = if wanted.params {
        let (k, b) = kernel_grad(ConvAlgo::choose(forced, &g), isa, x, &dz, &g)?;
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

/// The padding of the transposed (flipped-kernel) convolution, `[top, bottom, left, right]`,
/// when the forward one has stride 1 and it is non-negative; None otherwise.
fn transposed_padding(g: &ConvGeometry) -> Option<[usize; 4]> {
    if g.stride != [1, 1] {
        return None;
    }
    let axis = |k: usize, pad: usize, input: usize, out: usize| {
        let before = (k - 1).checked_sub(pad)?;
        let after = (input + k - 1).checked_sub(out + before)?;
        Some((before, after))
    };
    let (top, bottom) = axis(g.kh, g.pad_top, g.h, g.oh)?;
    let (left, right) = axis(g.kw, g.pad_left, g.w, g.ow)?;
    Some([top, bottom, left, right])
}

/// `k'[ky, kx, co, ci] = k[kh-1-ky, kw-1-kx, ci, co]`.
pub fn flip_kernel(k: &[f32], g: &ConvGeometry) -> Result<LayerParams> {
    let (kh, kw, cin, cout) = (g.kh, g.kw, g.cin, g.cout);
    let mut f = Tensor::zeros([kh, kw, cout, cin])?;
    let fd = f.data_mut();
    for ky in 0..kh {
        for kx in 0..kw {
            let src = &k[((kh - 1 - ky) * kw + (kw - 1 - kx)) * cin * cout..][..cin * cout];
            let dst = &mut fd[(ky * kw + kx) * cout * cin..][..cout * cin];
            for (ci, row) in src.chunks_exact(cout).enumerate() {
                for (co, &v) in row.iter().enumerate() {
                    dst[co * cin + ci] = v;
                }
            }
        }
    }
    Ok(LayerParams::new(f, None))
}

fn input_grad(
    forced: Option<ConvAlgo>,
    isa: Isa,
    bf16: bool,
    dz: &Tensor,
    w: &LayerParams,
    g: &ConvGeometry,
) -> Result<Tensor> {
    let Some(padding) = transposed_padding(g) else {
        return conv2d_input_grad::<f32>(dz, w.kernel(), g);
    };
    let spec = Conv2dSpec {
        stride: [1, 1],
        padding: Padding::Explicit(padding),
        activation: Activation::Linear,
    };
    let owned;
    let flipped = match ConvPlan::of(w) {
        Some(plan) => match plan.flipped.get() {
            Some(f) => f,
            None => {
                let f = flip_kernel(w.kernel().data(), g)?;
                plan.flipped.get_or_init(|| f)
            }
        },
        None => {
            owned = flip_kernel(w.kernel().data(), g)?;
            &owned
        }
    };
    let gt = spec.geometry(dz.shape(), flipped.kernel().shape(), None)?;
    let algo = ConvAlgo::choose(forced, &gt);
    if bf16 {
        conv2d_bf16(algo, dz, flipped, &spec, false)
    } else {
        conv2d_with(algo, isa, dz, flipped, &spec)
    }
}

/// `dk` and `db`: by Winograd where the forward pass would use it (`algo`), else the GEMM over
/// the transposed im2col.
fn kernel_grad(
    algo: ConvAlgo,
    isa: Isa,
    x: &Tensor,
    dz: &Tensor,
    g: &ConvGeometry,
) -> Result<(Tensor, Tensor)> {
    let mut dk = Tensor::zeros(g.kernel_shape())?;
    match algo {
        ConvAlgo::Winograd2 | ConvAlgo::Winograd4 if algo.supports(g) => {
            let variant = if algo == ConvAlgo::Winograd2 {
                Variant::F2
            } else {
                Variant::F4
            };
            kernel_grad_winograd(variant, isa, x.data(), dz.data(), g, dk.data_mut());
        }
        _ => {
            let a = Im2colT { x: x.data(), g: *g };
            let b = BSource::Matrix {
                data: dz.data(),
                ld: g.cout,
            };
            gemm::gemm_source(
                isa,
                &a,
                b,
                g.cout,
                dk.data_mut(),
                g.cout,
                Epilogue::NONE,
                true,
            );
        }
    }
    Ok((dk, bias_grad(dz.data(), g.cout)?))
}

/// Column sums of `dz` (`pixels x cout`): per fixed chunk of pixels in f64, then the chunks in
/// order.
fn bias_grad(dz: &[f32], cout: usize) -> Result<Tensor> {
    let mut db = Tensor::zeros([cout])?;
    if cout == 0 {
        return Ok(db);
    }
    let parts: Vec<Vec<f64>> = dz
        .par_chunks(BIAS_CHUNK * cout)
        .map(|rows| {
            let mut s = vec![0f64; cout];
            for px in rows.chunks_exact(cout) {
                for (a, &v) in s.iter_mut().zip(px) {
                    *a += f64::from(v);
                }
            }
            s
        })
        .collect();
    let mut total = vec![0f64; cout];
    for p in &parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    for (o, t) in db.data_mut().iter_mut().zip(total) {
        *o = t as f32;
    }
    Ok(db)
}
