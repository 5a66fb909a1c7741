//! Convolutions in bf16 (`--precision bf16` on a CPU with AVX512-BF16): the products of every
//! GEMM take bf16 operands (`vdpbf16ps`), sums and everything between the GEMMs stay f32.
//!
//! - Winograd: transforms in f32, with each `U_e` rounded to bf16 once (half the memory of
//!   the f32 transform) and each `V_e` rounded as it is packed. F(4x4) runs on other
//!   interpolation points than the f32 path's ([`Variant::F4Bf16`]): with the usual ones its
//!   transforms amplified bf16's rounding past the accuracy bar on VGG16 (block5_pool 2.43e-2
//!   of max|ref| from Keras, against the 2e-2 bar, so keel ran F(2x2) past 128 input channels
//!   and bf16 gained little); with these, F(4x4) on every layer gives 1.60e-2.
//! - Implicit GEMM: im2col rows gathered block by block (never the whole matrix) into an f32
//!   buffer, rounded as the bf16 GEMM packs them, against the kernel rounded and packed once.
//! - Direct (the first layer, 3 input channels): stays f32. Its K of 27 cannot fill a pair
//!   layout's depth, and it is 0.6% of VGG16's FLOPs.
//!
//! The error this adds is measured on the real VGG16 in docs/cpu-kernels.md (block5_pool within
//! `2e-2 * max|ref|` of Keras is the bar).

use std::cell::Cell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{ConvAlgo, ConvPlan, Im2col, Variant, WinogradWeights, conv_winograd};
use crate::cpu::gemm::bf16::PackedBBf16;
use crate::cpu::gemm::gemm_bf16_packed_best;
use crate::cpu::gemm::{ASource, Epilogue};
use crate::cpu::isa::Isa;
use crate::cpu::pool2x2::max_pool_2x2;
use crate::error::{Error, Result};
use crate::tensor::{Activation, Conv2dSpec, LayerParams, Pool2dSpec, Tensor};

/// Floats of im2col gathered per block: 4 MB, which stays in L2/L3 while the GEMM reads it.
const IM2COL_BLOCK_FLOATS: usize = 1 << 20;

thread_local! {
    /// The im2col block of the implicit GEMM, reused (see [`conv2d_bf16`]).
    static IM2COL_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// What a layer's weights become for the bf16 kernels, made on first use and kept beside the
/// f32 plan.
#[derive(Debug, Default)]
pub struct Bf16Plan {
    winograd2: OnceLock<WinogradWeights>,
    winograd4: OnceLock<WinogradWeights>,
    /// The kernel as a `(9 Cin) x Cout` B operand, rounded and packed.
    kernel: OnceLock<PackedBBf16>,
}

impl Bf16Plan {
    /// Bytes of prepared weights held.
    pub fn bytes(&self) -> usize {
        [&self.winograd2, &self.winograd4]
            .iter()
            .filter_map(|c| c.get())
            .map(WinogradWeights::bytes)
            .sum::<usize>()
            + self.kernel.get().map_or(0, PackedBBf16::bytes)
    }
}

/// `act(conv(x) + bias)` with `algo` in bf16, then VGG's 2x2 pool when `pool`.
pub fn conv2d_bf16(
    algo: ConvAlgo,
    x: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    pool: bool,
) -> Result<Tensor> {
    if !crate::cpu::gemm::bf16::available() {
        return Err(Error::Invalid(
            "bf16 convolutions need AVX512-BF16, which this CPU lacks (or KEEL_ISA caps it)".into(),
        ));
    }
    let (kernel, bias) = (w.kernel(), w.bias());
    let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    super::f32_host(&[x, kernel])?;
    if let Some(b) = bias {
        super::f32_host(&[b])?;
    }
    // The first layer, and anything that is not a GEMM underneath, runs in f32.
    let f32_path = matches!(algo, ConvAlgo::Reference | ConvAlgo::Direct) || g.cin < 8;
    if f32_path || !algo.supports(&g) {
        let algo = if algo.supports(&g) {
            algo
        } else {
            ConvAlgo::ImplicitGemm
        };
        return if pool {
            super::conv2d_pool_with(algo, Isa::Avx512, x, w, spec)
        } else {
            super::conv2d_with(algo, Isa::Avx512, x, w, spec)
        };
    }
    let plan = ConvPlan::of(w).map(|p| &p.bf16);
    let relu = spec.activation == Activation::Relu;
    let bias = bias.map(Tensor::data);
    let (xd, kd) = (x.data(), kernel.data());
    match algo {
        ConvAlgo::Winograd2 | ConvAlgo::Winograd4 => {
            // F(4x4) in bf16 runs on its own points (see `Variant::F4Bf16`).
            let (variant, cell) = if algo == ConvAlgo::Winograd2 {
                (Variant::F2, plan.map(|p| &p.winograd2))
            } else {
                (Variant::F4Bf16, plan.map(|p| &p.winograd4))
            };
            let make = || WinogradWeights::new_bf16(variant, kd, g.cin, g.cout);
            let owned;
            let ww = match cell {
                Some(c) => c.get_or_init(make),
                None => {
                    owned = make();
                    &owned
                }
            };
            let shape = if pool {
                Pool2dSpec::vgg()
                    .geometry(&g.output_shape())?
                    .output_shape()
            } else {
                g.output_shape()
            };
            let mut out = Tensor::for_overwrite(shape)?;
            if out.numel() > 0 {
                conv_winograd(ww, xd, bias, relu, &g, pool, out.data_mut());
            }
            Ok(out)
        }
        _ => {
            let k = g.kh * g.kw * g.cin;
            let make = || PackedBBf16::new(kd, g.cout, k, g.cout);
            let owned;
            let b = match plan {
                Some(p) => p.kernel.get_or_init(make),
                None => {
                    owned = make();
                    &owned
                }
            };
            let mut out = Tensor::for_overwrite(g.output_shape())?;
            let rows = g.n * g.oh * g.ow;
            let a = Im2col { x: xd, g };
            let block = (IM2COL_BLOCK_FLOATS / k.max(1)).clamp(1, rows.max(1));
            // Kept from call to call: every element a block uses is gathered before it is
            // read (a fresh 4 MB buffer was a memset per layer).
            let mut buf = IM2COL_BUF.take();
            if buf.len() < block * k {
                buf = vec![0f32; block * k];
            }
            let ep = Epilogue::new(bias, relu);
            let od = out.data_mut();
            let threads = rayon::current_num_threads();
            for r0 in (0..rows).step_by(block) {
                let mc = block.min(rows - r0);
                // Panels of one row: row-major im2col rows, gathered by all threads (on one,
                // the gather took as long as the bf16 GEMM after it at block5, batch 1).
                let per = mc.div_ceil(threads).max(1);
                buf[..mc * k]
                    .par_chunks_mut(per * k)
                    .enumerate()
                    .for_each(|(i, rows)| a.pack(r0 + i * per, rows.len() / k, 0, k, 1, rows));
                gemm_bf16_packed_best(
                    mc,
                    &buf[..mc * k],
                    k,
                    b,
                    &mut od[r0 * g.cout..(r0 + mc) * g.cout],
                    g.cout,
                    ep,
                    true,
                );
            }
            IM2COL_BUF.set(buf);
            if pool {
                max_pool_2x2(Isa::Avx512, &out, &Pool2dSpec::vgg())
            } else {
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv2d_reference;
    use crate::rng::Rng;

    fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape, &rng.uniform_vec(n, -1.0, 1.0)).unwrap()
    }

    fn abs(t: &Tensor) -> Tensor {
        let v: Vec<f32> = t.data().iter().map(|v| v.abs()).collect();
        Tensor::from_vec(t.dims(), &v).unwrap()
    }

    /// Every bf16 algorithm against the f32 reference on odd shapes, with and without the pool.
    /// Per element, `|got - want| <= tol * S`, where `S = conv(|x|, |w|) + |bias|` bounds the
    /// sum's magnitude: rounding both operands to bf16 moves each product by at most
    /// `2 * 2^-9` of its size (3.9e-3 of S in all); Winograd's transforms add their own
    /// amplification of that rounding. Tolerances, about 4 times the worst seen (1.6e-3,
    /// 2.3e-3, 1.4e-2; F(4x4) was 2.2e-2 on its f32 points, with a tolerance of 9e-2): implicit
    /// GEMM 8e-3, F(2x2) 1e-2, F(4x4) 6e-2. NaN never passes (the comparison is written so).
    #[test]
    fn bf16_convolutions_match_the_reference_within_bf16_rounding() {
        if !crate::cpu::gemm::bf16::available() {
            eprintln!("SKIP bf16 convolutions: this CPU lacks AVX512-BF16 (or KEEL_ISA caps it)");
            return;
        }
        let mut rng = Rng::new(5);
        let spec = Conv2dSpec::same_relu();
        let linear = Conv2dSpec {
            activation: Activation::Linear,
            ..spec
        };
        for &(n, h, w, cin, cout) in &[
            (1, 1, 1, 8, 1),
            (1, 3, 5, 9, 17),
            (2, 7, 9, 17, 33),
            (1, 17, 13, 63, 65),
            (1, 30, 31, 129, 40),
        ] {
            let x = random(&[n, h, w, cin], &mut rng);
            let k = random(&[3, 3, cin, cout], &mut rng);
            let b = random(&[cout], &mut rng);
            let params = LayerParams::new(k.clone(), Some(b.clone()));
            let want = conv2d_reference(&x, &k, Some(&b), &spec).unwrap();
            let scale = conv2d_reference(&abs(&x), &abs(&k), Some(&abs(&b)), &linear).unwrap();
            for (algo, tol) in [
                (ConvAlgo::ImplicitGemm, 8e-3),
                (ConvAlgo::Winograd2, 1e-2),
                (ConvAlgo::Winograd4, 6e-2),
            ] {
                let got = conv2d_bf16(algo, &x, &params, &spec, false).unwrap();
                assert_eq!(got.dims(), want.dims());
                let mut worst = 0f32;
                for ((g, w), s) in got.data().iter().zip(want.data()).zip(scale.data()) {
                    let err = (g - w).abs() / s.max(1e-30);
                    assert!(err <= tol, "{algo} {n}x{h}x{w}x{cin}->{cout}: {g} vs {w}");
                    worst = worst.max(err);
                }
                eprintln!("{algo} {n}x{h}x{w}x{cin}->{cout}: worst {worst:.2e} (tol {tol:.0e})");
                if h >= 2 && w >= 2 {
                    // Pooled in the output transform (Winograd) or after: the pool of the
                    // same-algorithm output, bit for bit.
                    let pooled = conv2d_bf16(algo, &x, &params, &spec, true).unwrap();
                    let want_pool = max_pool_2x2(Isa::Portable, &got, &Pool2dSpec::vgg()).unwrap();
                    assert_eq!(pooled.dims(), want_pool.dims());
                    assert!(
                        pooled
                            .data()
                            .iter()
                            .zip(want_pool.data())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{algo}: the pooled output is not the pool of the output"
                    );
                }
            }
        }
    }
}
