//! Fast convolutions: every algorithm computes exactly what `conv2d_reference` defines, and
//! each stays selectable by name (`keel bench conv --algo`):
//!
//! - `direct`: register-tiled direct loops, for layers with few input channels (block1_conv1);
//! - `implicit-gemm`: the packed GEMM with im2col gathered block by block, never stored; any
//!   kernel size, stride and padding (with few input channels and stride 1, gathered from a
//!   channel-planar copy of the image: `planar.rs`);
//! - `winograd2` / `winograd4`: F(2x2,3x3) / F(4x4,3x3) for 3x3 stride-1 layers.
//!
//! [`ConvAlgo::auto`] picks per layer; the choices and the measurements behind them are in
//! docs/cpu-kernels.md. The gradients (`backward.rs`) reuse them: the input gradient of a
//! stride-1 convolution is a forward convolution of the output gradient, and the kernel
//! gradient is the packed GEMM over the transposed im2col.

mod backward;
mod bf16;
mod direct;
mod im2col;
mod planar;
mod winograd;

use std::sync::OnceLock;

pub use backward::{conv2d_backward_bf16, conv2d_backward_with};
pub use bf16::conv2d_bf16;
pub use direct::conv_direct;
pub use im2col::{Im2col, Im2colT};
pub use planar::PlanarIm2col;
pub use winograd::{Variant, WinogradWeights, conv_winograd, kernel_grad_winograd};

use crate::cpu::conv2d_reference;
use crate::cpu::gemm::{self, BSource, Epilogue};
use crate::cpu::isa::Isa;
use crate::cpu::pool2x2::max_pool_2x2;
use crate::error::{Error, Result};
use crate::tensor::{Activation, Conv2dSpec, ConvGeometry, LayerParams, Pool2dSpec, Tensor};

/// A convolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvAlgo {
    Reference,
    Direct,
    ImplicitGemm,
    Winograd2,
    Winograd4,
}

impl ConvAlgo {
    pub const ALL: [ConvAlgo; 5] = [
        ConvAlgo::Reference,
        ConvAlgo::Direct,
        ConvAlgo::ImplicitGemm,
        ConvAlgo::Winograd2,
        ConvAlgo::Winograd4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Reference => "reference",
            ConvAlgo::Direct => "direct",
            ConvAlgo::ImplicitGemm => "implicit-gemm",
            ConvAlgo::Winograd2 => "winograd2",
            ConvAlgo::Winograd4 => "winograd4",
        }
    }

    pub fn parse(s: &str) -> Option<ConvAlgo> {
        ConvAlgo::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Whether the algorithm can run this geometry (Winograd needs 3x3, stride 1).
    pub fn supports(self, g: &ConvGeometry) -> bool {
        match self {
            ConvAlgo::Winograd2 | ConvAlgo::Winograd4 => {
                g.kh == 3 && g.kw == 3 && g.stride == [1, 1]
            }
            _ => true,
        }
    }

    /// `forced` where it can run `g`, else keel's choice.
    pub fn choose(forced: Option<ConvAlgo>, g: &ConvGeometry) -> ConvAlgo {
        match forced {
            Some(a) if a.supports(g) => a,
            _ => ConvAlgo::auto(g),
        }
    }

    /// For a forward convolution: `forced` where it can run `g`, else what `keel tune`
    /// measured fastest for this geometry on this CPU model, else keel's rule ([`Self::auto`]).
    pub fn choose_forward(forced: Option<ConvAlgo>, g: &ConvGeometry) -> ConvAlgo {
        match forced {
            Some(a) if a.supports(g) => a,
            _ => crate::cpu::tune::current()
                .and_then(|t| t.conv_algo(g))
                .unwrap_or_else(|| ConvAlgo::auto(g)),
        }
    }

    /// keel's choice for a layer: F(4x4) Winograd for 3x3 stride-1 layers with enough input
    /// channels and tiles to keep its GEMMs fed, implicit GEMM otherwise (few input channels,
    /// and small images, where it is faster and keeps no transformed copy of the weights:
    /// VGG's block5 filters would take 113 MB as F(4x4)). The direct loops were the choice
    /// for block1_conv1's 3 channels while the im2col gather divided per value; since it no
    /// longer does, implicit GEMM ran that layer 1.2-1.7x faster (Xeon, batch 1 and 8, 1 and
    /// 2 threads) and direct stays as a rung to study.
    pub fn auto(g: &ConvGeometry) -> ConvAlgo {
        if g.cin >= 8 && ConvAlgo::Winograd4.supports(g) && g.n * g.oh * g.ow >= WINOGRAD_MIN_PIXELS
        {
            ConvAlgo::Winograd4
        } else {
            ConvAlgo::ImplicitGemm
        }
    }
}

/// Output pixels (over the batch) from which F(4x4) Winograd beats implicit GEMM.
const WINOGRAD_MIN_PIXELS: usize = 24 * 24;

impl std::fmt::Display for ConvAlgo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the fast algorithms derive from a layer's weights, made on first use and kept in the
/// layer's [`crate::tensor::LayerCache`]: the Winograd transforms cost a pass over the weights
/// in f64, too slow to redo per image, and the input gradient's flipped kernel is a copy of
/// the weights (with its own plan).
#[derive(Debug, Default)]
pub struct ConvPlan {
    winograd2: OnceLock<WinogradWeights>,
    winograd4: OnceLock<WinogradWeights>,
    /// Implicit GEMM's B, the kernel packed once for the GEMM of `Isa`. Packed per call, it
    /// cost each thread a pass over its share of the weights per image (9.4 MB per layer of
    /// VGG's block5, where implicit GEMM runs at batch 1), and kept the threads splitting
    /// columns, each gathering all of im2col; packed, they split the rows.
    packed: OnceLock<(Isa, gemm::PackedB)>,
    flipped: OnceLock<LayerParams>,
    /// The same for the bf16 kernels (`--precision bf16`).
    bf16: bf16::Bf16Plan,
}

impl ConvPlan {
    /// The plan in `w`'s cache (made empty if the cache is empty); None if another backend
    /// filled the cache.
    pub fn of(w: &LayerParams) -> Option<&ConvPlan> {
        w.cache().get_or_init(ConvPlan::default)
    }

    /// Bytes of prepared weights held.
    pub fn bytes(&self) -> usize {
        let flipped = self.flipped.get().map_or(0, |f| {
            4 * f.kernel().numel() + ConvPlan::of(f).map_or(0, ConvPlan::bytes)
        });
        [&self.winograd2, &self.winograd4]
            .iter()
            .filter_map(|c| c.get())
            .map(WinogradWeights::bytes)
            .sum::<usize>()
            + self.packed.get().map_or(0, |(_, p)| p.bytes())
            + flipped
            + self.bf16.bytes()
    }
}

/// `act(conv(x, kernel) + bias)` with `algo` on `isa`, using (and filling) the plan in `w`'s
/// cache.
pub fn conv2d_with(
    algo: ConvAlgo,
    isa: Isa,
    x: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
) -> Result<Tensor> {
    conv(algo, isa, x, w, spec, false)
}

/// [`conv2d_with`] followed by VGG's 2x2 stride-2 max pooling. Winograd does the pooling in
/// its output transform, so the full-size output is never written; the other algorithms
/// convolve, then pool.
pub fn conv2d_pool_with(
    algo: ConvAlgo,
    isa: Isa,
    x: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
) -> Result<Tensor> {
    match algo {
        ConvAlgo::Winograd2 | ConvAlgo::Winograd4 => conv(algo, isa, x, w, spec, true),
        _ => {
            let y = conv(algo, isa, x, w, spec, false)?;
            max_pool_2x2(isa, &y, &Pool2dSpec::vgg())
        }
    }
}

fn conv(
    algo: ConvAlgo,
    isa: Isa,
    x: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    pool: bool,
) -> Result<Tensor> {
    assert!(
        !pool || matches!(algo, ConvAlgo::Winograd2 | ConvAlgo::Winograd4),
        "only Winograd pools in its output transform"
    );
    let (kernel, bias) = (w.kernel(), w.bias());
    let plan = ConvPlan::of(w);
    let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    f32_host(&[x, kernel])?;
    if let Some(b) = bias {
        f32_host(&[b])?;
    }
    if !algo.supports(&g) {
        return Err(Error::Invalid(format!(
            "{algo} needs a 3x3 stride-1 convolution, got {}x{} stride {:?}",
            g.kh, g.kw, g.stride
        )));
    }
    if !isa.available() {
        return Err(Error::Invalid(format!("this CPU cannot run {isa} kernels")));
    }
    if algo == ConvAlgo::Reference {
        return conv2d_reference(x, kernel, bias, spec);
    }
    let shape = if pool {
        Pool2dSpec::vgg()
            .geometry(&g.output_shape())?
            .output_shape()
    } else {
        g.output_shape()
    };
    let mut out = Tensor::for_overwrite(shape)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let relu = spec.activation == Activation::Relu;
    let bias = bias.map(Tensor::data);
    let (xd, kd) = (x.data(), kernel.data());
    match algo {
        ConvAlgo::Reference => unreachable!("handled above"),
        ConvAlgo::Direct => conv_direct(isa, xd, kd, bias, relu, &g, out.data_mut()),
        ConvAlgo::ImplicitGemm => {
            let (nhwc, planar);
            let a: &dyn gemm::ASource = if PlanarIm2col::suits(&g) {
                planar = PlanarIm2col::new(xd, g);
                &planar
            } else {
                nhwc = Im2col { x: xd, g };
                &nhwc
            };
            let k = g.kh * g.kw * g.cin;
            let packed = plan
                .map(|p| {
                    p.packed
                        .get_or_init(|| (isa, gemm::pack_b_for(isa, kd, g.cout, k, g.cout)))
                })
                .filter(|(packed_for, _)| *packed_for == isa);
            let b = match packed {
                Some((_, p)) if gemm::streams_packed_b(p.bytes()) => BSource::Streamed(p),
                Some((_, p)) => BSource::Packed(p),
                None => BSource::Matrix {
                    data: kd,
                    ld: g.cout,
                },
            };
            let ep = Epilogue::new(bias, relu);
            gemm::gemm_source(isa, a, b, g.cout, out.data_mut(), g.cout, ep, true);
        }
        ConvAlgo::Winograd2 | ConvAlgo::Winograd4 => {
            let (variant, cell) = if algo == ConvAlgo::Winograd2 {
                (Variant::F2, plan.map(|p| &p.winograd2))
            } else {
                (Variant::F4, plan.map(|p| &p.winograd4))
            };
            let make = || WinogradWeights::new(variant, isa, kd, g.cin, g.cout);
            let owned;
            let w = match cell {
                Some(c) => {
                    let w = c.get_or_init(make);
                    if w.isa == isa {
                        w
                    } else {
                        owned = make();
                        &owned
                    }
                }
                None => {
                    owned = make();
                    &owned
                }
            };
            conv_winograd(w, xd, bias, relu, &g, pool, out.data_mut());
        }
    }
    Ok(out)
}

/// The fast kernels read f32 host memory: refuse anything else with the reason.
pub(crate) fn f32_host(ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        t.values::<f32>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
