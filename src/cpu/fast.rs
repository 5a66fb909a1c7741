//! The fast CPU backend, keel's default: the convolution algorithm picked per layer
//! ([`ConvAlgo::auto`]), dense layers on the packed GEMM, both on the best ISA this CPU has.
//! 2x2 max pooling has a streaming kernel; softmax and global pooling are small and use the
//! reference kernels.

use super::conv::{ConvAlgo, ConvPlan, conv2d_pool_with, conv2d_with};
use super::gemm::{self, Epilogue, Kernel};
use super::isa::Isa;
use super::pool2x2::{is_2x2_stride2, max_pool_2x2};
use super::{global_pool_reference, max_pool2d_reference, softmax_reference};
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, Backend, Conv2dSpec, ConvGeometry, GlobalPool, LayerCache, Pool2dSpec, Tensor,
    dense_geometry,
};

/// The fast CPU backend.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    isa: Isa,
    /// Forces one convolution algorithm where it applies (benchmarks); None picks per layer.
    algo: Option<ConvAlgo>,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// The best ISA (capped by `KEEL_ISA`), algorithms picked per layer.
    pub fn new() -> Cpu {
        Cpu {
            isa: Isa::selected(),
            algo: None,
        }
    }

    /// A backend on a given ISA.
    pub fn with_isa(isa: Isa) -> Result<Cpu> {
        if !isa.available() {
            return Err(Error::Invalid(format!("this CPU cannot run {isa} kernels")));
        }
        Ok(Cpu { isa, algo: None })
    }

    /// Use `algo` for every convolution it supports (others still pick their own).
    pub fn with_algo(mut self, algo: ConvAlgo) -> Cpu {
        self.algo = Some(algo);
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn conv(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        plan: Option<&ConvPlan>,
    ) -> Result<Tensor> {
        let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
        conv2d_with(self.pick(&g), self.isa, x, kernel, bias, spec, plan)
    }

    /// The algorithm for a layer: the forced one where it applies, else keel's choice.
    fn pick(&self, g: &ConvGeometry) -> ConvAlgo {
        match self.algo {
            Some(a) if a.supports(g) => a,
            _ => ConvAlgo::auto(g),
        }
    }
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        match self.isa {
            Isa::Portable => "cpu-portable",
            Isa::Avx2 => "cpu-avx2",
            Isa::Avx512 => "cpu-avx512",
            Isa::Neon => "cpu-neon",
        }
    }

    fn conv2d(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        self.conv(x, kernel, bias, spec, None)
    }

    fn conv2d_cached(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        cache: &LayerCache,
    ) -> Result<Tensor> {
        let plan = cache.get_or_init(ConvPlan::default);
        self.conv(x, kernel, bias, spec, plan)
    }

    fn conv2d_pool_cached(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
        pool: &Pool2dSpec,
        cache: &LayerCache,
    ) -> Result<Tensor> {
        let plan = cache.get_or_init(ConvPlan::default);
        let g = spec.geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
        let algo = self.pick(&g);
        if is_2x2_stride2(pool) {
            // Winograd pools in its output transform; the others convolve, then pool.
            return conv2d_pool_with(algo, self.isa, x, kernel, bias, spec, plan);
        }
        let y = self.conv(x, kernel, bias, spec, plan)?;
        self.max_pool2d(&y, pool)
    }

    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        if is_2x2_stride2(spec) {
            max_pool_2x2(self.isa, x, spec)
        } else {
            max_pool2d_reference(x, spec)
        }
    }

    fn dense(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        activation: Activation,
    ) -> Result<Tensor> {
        let [n, fin, fout] = dense_geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
        let mut out = Tensor::zeros([n, fout])?;
        let ep = Epilogue::new(bias.map(Tensor::data), activation == Activation::Relu);
        gemm::gemm_with(
            Kernel::for_isa(self.isa),
            n,
            fout,
            fin,
            x.data(),
            fin,
            kernel.data(),
            fout,
            out.data_mut(),
            fout,
            ep,
            true,
        );
        Ok(out)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        softmax_reference(x)
    }

    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        global_pool_reference(x, kind)
    }
}
