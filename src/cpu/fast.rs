//! The fast CPU backend, keel's default: the convolution algorithm picked per layer
//! ([`ConvAlgo::auto`]), forward and backward; dense layers and their gradients on the packed
//! GEMM; VGG's 2x2 pooling and its gradient as streaming passes; all on the best ISA this CPU
//! has. The rest (softmax, global pools, element-wise ops, optimizer steps) is memory-bound
//! and small, and runs the reference kernels. f64 tensors (gradient checks) go to the
//! reference kernels too.

use super::conv::{
    ConvAlgo, conv2d_backward_bf16, conv2d_backward_with, conv2d_bf16, conv2d_pool_with,
    conv2d_with,
};
use super::gemm::{self, Epilogue, Kernel};
use super::isa::Isa;
use super::pool2x2::{is_2x2_stride2, max_pool_2x2, max_pool_2x2_backward};
use super::reference::{self as r, CpuReference, activation_backward, host};
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, CrossEntropy, DType, Device, GlobalPool, LayerGrads,
    LayerParams, Pool2dSpec, Tensor, Wanted, check_grad_shape, dense_geometry,
};

/// The fast CPU backend.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    isa: Isa,
    /// Forces one convolution algorithm where it applies (benchmarks); None picks per layer.
    algo: Option<ConvAlgo>,
    /// `--precision bf16`: every GEMM-shaped product (forward convolutions, the input
    /// gradients of convolutions, dense layers forward and backward) rounds its operands to
    /// bfloat16 and sums in f32. Weights, activations between layers, kernel gradients,
    /// pooling, losses and optimizer steps stay f32.
    bf16: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// The best ISA this CPU has, algorithms picked per layer.
    pub fn new() -> Cpu {
        Cpu {
            isa: Isa::best(),
            algo: None,
            bf16: false,
        }
    }

    /// A backend on a given ISA.
    pub fn with_isa(isa: Isa) -> Result<Cpu> {
        if !isa.available() {
            return Err(Error::Invalid(format!("this CPU cannot run {isa} kernels")));
        }
        Ok(Cpu {
            isa,
            algo: None,
            bf16: false,
        })
    }

    /// The products in bf16 operands and f32 sums (AVX512-BF16's `vdpbf16ps`; see the field);
    /// an error on a CPU without it, or with KEEL_ISA below avx512.
    pub fn with_bf16(mut self) -> Result<Cpu> {
        if !super::gemm::bf16::available() {
            return Err(Error::Invalid(
                "--precision bf16 on the CPU needs AVX512-BF16 (AMD Zen 4 and later, Intel Cooper \
                 Lake and Sapphire Rapids and later), which this CPU lacks or KEEL_ISA caps"
                    .into(),
            ));
        }
        self.isa = Isa::Avx512;
        self.bf16 = true;
        Ok(self)
    }

    /// Use `algo` for every convolution it supports (others still pick their own).
    pub fn with_algo(mut self, algo: ConvAlgo) -> Cpu {
        self.algo = Some(algo);
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn algo(&self) -> Option<ConvAlgo> {
        self.algo
    }

    /// The algorithm for a forward layer: the forced one where it applies, else the tuned one
    /// (`keel tune`), else keel's rule.
    fn pick(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<ConvAlgo> {
        let g = spec.geometry(x.shape(), w.kernel().shape(), w.bias().map(Tensor::shape))?;
        Ok(ConvAlgo::choose_forward(self.algo, &g))
    }
}

/// Whether the operands are f64 (then the reference kernels run them).
fn is_f64(x: &Tensor) -> bool {
    x.dtype() == DType::F64
}

/// `a^T` of a row-major `rows x cols` matrix.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    let mut t = Tensor::zeros([cols, rows])?;
    let td = t.data_mut();
    for (i, row) in a.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate() {
            td[j * rows + i] = v;
        }
    }
    Ok(t)
}

impl Cpu {
    /// `C (m x n) = A (m x k) B (k x n)` on this backend's packed kernel (bf16 operands under
    /// `--precision bf16`).
    fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ep: Epilogue,
    ) -> Result<Tensor> {
        let mut c = Tensor::zeros([m, n])?;
        if m > 0 && n > 0 && self.bf16 {
            let ld = k.max(1);
            let kernel = gemm::bf16_kernel();
            gemm::gemm_with(kernel, m, n, k, a, ld, b, n, c.data_mut(), n, ep, true);
        } else if m > 0 && n > 0 {
            gemm::gemm_with(
                Kernel::for_isa(self.isa),
                m,
                n,
                k,
                a,
                k.max(1),
                b,
                n,
                c.data_mut(),
                n,
                ep,
                true,
            );
        }
        Ok(c)
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

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn reduced_precision(&self) -> Option<&'static str> {
        self.bf16.then_some("bf16")
    }

    fn upload(&self, x: Tensor) -> Result<Tensor> {
        host(x, self.name())
    }

    fn to_host(&self, x: Tensor) -> Result<Tensor> {
        host(x, self.name())
    }

    fn conv2d(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<Tensor> {
        if is_f64(x) {
            return CpuReference.conv2d(x, w, spec);
        }
        if self.bf16 {
            return conv2d_bf16(self.pick(x, w, spec)?, x, w, spec, false);
        }
        conv2d_with(self.pick(x, w, spec)?, self.isa, x, w, spec)
    }

    fn conv2d_pool(
        &self,
        x: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        pool: &Pool2dSpec,
    ) -> Result<Tensor> {
        if is_f64(x) {
            return CpuReference.conv2d_pool(x, w, spec, pool);
        }
        let algo = self.pick(x, w, spec)?;
        if self.bf16 && is_2x2_stride2(pool) {
            return conv2d_bf16(algo, x, w, spec, true);
        }
        if self.bf16 {
            let y = conv2d_bf16(algo, x, w, spec, false)?;
            return self.max_pool2d(&y, pool);
        }
        if is_2x2_stride2(pool) {
            // Winograd pools in its output transform; the others convolve, then pool.
            return conv2d_pool_with(algo, self.isa, x, w, spec);
        }
        let y = conv2d_with(algo, self.isa, x, w, spec)?;
        self.max_pool2d(&y, pool)
    }

    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        if is_2x2_stride2(spec) && !is_f64(x) {
            x.values::<f32>()?;
            max_pool_2x2(self.isa, x, spec)
        } else {
            r::max_pool2d_reference(x, spec)
        }
    }

    fn dense(&self, x: &Tensor, w: &LayerParams, activation: Activation) -> Result<Tensor> {
        if is_f64(x) {
            return CpuReference.dense(x, w, activation);
        }
        let (kernel, bias) = (w.kernel(), w.bias());
        let [n, fin, fout] = dense_geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
        let bias = bias.map(Tensor::values::<f32>).transpose()?;
        let ep = Epilogue::new(bias, activation == Activation::Relu);
        self.matmul(x.values()?, kernel.values()?, n, fin, fout, ep)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        r::softmax_reference(x)
    }

    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        r::global_pool_reference(x, kind)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        r::relu_reference(x)
    }

    fn mul(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        r::mul_reference(x, mask)
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        wanted: Wanted,
    ) -> Result<LayerGrads> {
        if is_f64(x) {
            return CpuReference.conv2d_backward(x, y, dy, w, spec, wanted);
        }
        if self.bf16 {
            return conv2d_backward_bf16(self.algo, x, y, dy, w, spec, wanted);
        }
        conv2d_backward_with(self.algo, self.isa, x, y, dy, w, spec, wanted)
    }

    /// `dx = dz W^T` and `dW = x^T dz` as GEMMs on explicit transposes (the head's matrices
    /// are small; the copies cost far less than the products).
    fn dense_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        activation: Activation,
        wanted: Wanted,
    ) -> Result<LayerGrads> {
        if is_f64(x) {
            return CpuReference.dense_backward(x, y, dy, w, activation, wanted);
        }
        let [n, fin, fout] = dense_geometry(x.shape(), w.kernel().shape(), None)?;
        check_grad_shape("dense", dy.shape(), &[n, fout].into())?;
        let dz = activation_backward::<f32>(y, dy, activation)?;
        let (xd, kd, dzv) = (x.values::<f32>()?, w.kernel().values::<f32>()?, dz.data());
        let input = if wanted.input {
            let kt = transpose(kd, fin, fout)?;
            Some(self.matmul(dzv, kt.data(), n, fout, fin, Epilogue::NONE)?)
        } else {
            None
        };
        let (kernel, bias) = if wanted.params {
            let xt = transpose(xd, n, fin)?;
            let dk = self.matmul(xt.data(), dzv, fin, n, fout, Epilogue::NONE)?;
            let mut db = Tensor::zeros([fout])?;
            let dbv = db.data_mut();
            for row in dzv.chunks_exact(fout.max(1)) {
                for (o, &g) in dbv.iter_mut().zip(row) {
                    *o += g;
                }
            }
            (Some(dk), Some(db))
        } else {
            (None, None)
        };
        Ok(LayerGrads {
            input,
            kernel,
            bias,
        })
    }

    fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        if is_2x2_stride2(spec) && !is_f64(x) {
            x.values::<f32>()?;
            dy.values::<f32>()?;
            max_pool_2x2_backward(x, dy, spec)
        } else {
            r::max_pool2d_backward_reference(x, dy, spec)
        }
    }

    fn global_pool_backward(&self, x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        r::global_pool_backward_reference(x, dy, kind)
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        r::relu_backward_reference(y, dy)
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
        r::softmax_cross_entropy_reference(logits, labels)
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        r::sum_squares_reference(x)
    }

    fn axpy(&self, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
        r::axpy_reference(alpha, x, y)
    }

    fn sgd_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        velocity: &mut Tensor,
        lr: f64,
        momentum: f64,
        nesterov: bool,
    ) -> Result<()> {
        r::sgd_step_reference(w, g, velocity, lr, momentum, nesterov)
    }

    fn adam_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<()> {
        r::adam_step_reference(w, g, m, v, step)
    }
}
