//! [`Backend`] on a GPU (or on the CPU build of its kernels): tensors live in device memory and
//! stay there between layers; only [`Backend::upload`] and [`Backend::to_host`] cross.
//!
//! Convolutions are im2col then the ladder's best fp32 GEMM with bias and ReLU fused into its
//! epilogue, in chunks of images so the column matrix stays within a fixed budget. Training
//! ops (backward passes, optimizer steps) are CUDA II's work: until then they say so.

use std::sync::Arc;

use super::gemm::{self, Operands, Precision, Rung};
use super::gpu::{Args, DevMem, Gpu, Launch};
use super::source::OPS;
use super::training;
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, CrossEntropy, DType, Device, DeviceBuffer,
    GlobalPool, LayerGrads, LayerParams, Pool2dSpec, Tensor, Wanted, dense_geometry,
};

/// Largest im2col matrix per GEMM call: big enough to fill an H200, small enough for any GPU.
pub(super) const COLS_BUDGET_BYTES: usize = 256 << 20;

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    pub(super) rung: &'static Rung,
    /// The convolutions' arithmetic (`--precision`); everything else computes in fp32.
    precision: Precision,
}

/// A layer's weights on the device, kept in its [`LayerParams`] cache.
pub(super) struct DeviceWeights {
    pub kernel: DevMem,
    pub bias: Option<DevMem>,
}

impl CudaBackend {
    /// The backend for `gpu`, with the ladder's best fp32 GEMM that runs there.
    pub fn new(gpu: Arc<Gpu>) -> CudaBackend {
        let rung = gemm::best(Precision::Fp32);
        CudaBackend {
            gpu,
            rung,
            precision: Precision::Fp32,
        }
    }

    /// Convolutions in `precision` (fp32 by default).
    pub fn with_precision(mut self, precision: Precision) -> CudaBackend {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Use GEMM rung `name` (fp32 only: the backend's numbers must match the CPU's).
    pub fn with_rung(mut self, name: &str) -> Result<CudaBackend> {
        let r = gemm::rung(name)?;
        if r.precision != Precision::Fp32 {
            return Err(Error::Invalid(format!(
                "GEMM rung {name} computes in {}; the CUDA backend uses fp32 rungs",
                r.precision.name()
            )));
        }
        self.rung = r;
        Ok(self)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub(super) fn device_id(&self) -> Device {
        Device::Cuda(self.gpu.ordinal())
    }

    /// The device memory of `x`, which must be an f32 tensor on this backend's device.
    pub(super) fn mem<'a>(&self, x: &'a Tensor, what: &str) -> Result<&'a DevMem> {
        let on = x.device();
        let buf = x.device_buffer().filter(|_| on == self.device_id());
        let mem = buf.and_then(|b| b.downcast::<DevMem>());
        match mem {
            Some(m) if x.dtype() == DType::F32 => Ok(m),
            Some(_) => Err(Error::Invalid(format!(
                "{what}: the CUDA backend computes in f32, this tensor is {}",
                x.dtype()
            ))),
            None => Err(Error::Invalid(format!(
                "{what}: the CUDA backend computes on {} but this tensor is on {on}; upload it first",
                self.device_id()
            ))),
        }
    }

    pub(super) fn tensor(
        &self,
        shape: impl Into<crate::tensor::Shape>,
        mem: DevMem,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let len = shape.numel();
        Tensor::from_device(
            shape,
            DeviceBuffer::new(self.device_id(), DType::F32, len, Arc::new(mem)),
        )
    }

    pub(super) fn alloc_f32(&self, len: usize) -> Result<DevMem> {
        self.gpu.alloc(len * 4)
    }

    /// Weights on the device: a device tensor as it is, a host tensor uploaded once and kept
    /// in the layer's cache (emptied whenever the weights change).
    pub(super) fn weights(&self, w: &LayerParams) -> Result<Arc<DeviceWeights>> {
        if w.kernel().device() != Device::Cpu {
            let kernel = self.mem(w.kernel(), "kernel")?.clone();
            let bias = w.bias().map(|b| self.mem(b, "bias").cloned()).transpose()?;
            return Ok(Arc::new(DeviceWeights { kernel, bias }));
        }
        let cached = w.cache().get_or_init(|| {
            let up = || -> Result<Arc<DeviceWeights>> {
                let kernel = self.gpu.upload(w.kernel().values::<f32>()?)?;
                let bias = match w.bias() {
                    Some(b) => Some(self.gpu.upload(b.values::<f32>()?)?),
                    None => None,
                };
                Ok(Arc::new(DeviceWeights { kernel, bias }))
            };
            up().map_err(|e| e.to_string())
        });
        match cached {
            Some(Ok(d)) => Ok(d.clone()),
            Some(Err(e)) => Err(Error::cuda("uploading weights", e)),
            // The slot holds another backend's data (the same layer run on the CPU first).
            None => Err(Error::Invalid(
                "these weights' cache belongs to another backend; use a fresh copy of the \
                 model for the CUDA backend"
                    .into(),
            )),
        }
    }

    pub(super) fn launch_ops(&self, kernel: &str, launch: Launch, args: Args) -> Result<()> {
        let f = self.gpu.function(&OPS, kernel)?;
        // SAFETY: each caller passes exactly the parameters `kernels/ops.cu` declares for
        // `kernel`, with buffers sized for the shapes it passes (allocated from them here).
        unsafe { self.gpu.launch(&f, launch, args) }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        if self.gpu.is_emulated() {
            "cuda-cpu-build"
        } else {
            "cuda"
        }
    }

    fn device(&self) -> Device {
        self.device_id()
    }

    fn upload(&self, x: Tensor) -> Result<Tensor> {
        match x.device() {
            d if d == self.device_id() => Ok(x),
            Device::Cpu => {
                let shape = x.shape().clone();
                let mem = self.gpu.upload(x.values::<f32>().map_err(|_| {
                    Error::Invalid(format!(
                        "the CUDA backend computes in f32; cannot upload a {} tensor",
                        x.dtype()
                    ))
                })?)?;
                self.tensor(shape, mem)
            }
            d => Err(Error::Invalid(format!(
                "a tensor on {d} cannot be uploaded to {}; bring it to the host first",
                self.device_id()
            ))),
        }
    }

    fn to_host(&self, x: Tensor) -> Result<Tensor> {
        if x.device() == Device::Cpu {
            return Ok(x);
        }
        let mem = self.mem(&x, "to_host")?;
        let v: Vec<f32> = self.gpu.to_vec(mem, x.numel())?;
        Tensor::from_vec(x.shape().clone(), &v)
    }

    fn conv2d(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<Tensor> {
        let g = spec.geometry(x.shape(), w.kernel().shape(), w.bias().map(|b| b.shape()))?;
        let xm = self.mem(x, "conv2d input")?;
        let dw = self.weights(w)?;
        let pixels = g.oh * g.ow;
        let kdim = g.kh * g.kw * g.cin;
        let out = self.alloc_f32(g.n * pixels * g.cout)?;
        let per_image = pixels * kdim * 4;
        let chunk = (COLS_BUDGET_BYTES / per_image.max(1)).clamp(1, g.n.max(1));
        let cols = self.gpu.alloc(chunk * per_image)?;
        let in_image = g.h * g.w * g.cin * 4;
        let mut b0 = 0;
        while b0 < g.n {
            let nb = chunk.min(g.n - b0);
            let xv = xm.view(b0 * in_image, nb * in_image)?;
            let args = Args::new()
                .mem(&xv)
                .mem(&cols)
                .i32s(&[nb, g.h, g.w, g.cin, g.kh, g.kw])
                .i32s(&[g.stride[0], g.stride[1], g.pad_top, g.pad_left, g.oh, g.ow]);
            self.launch_ops(
                "im2col_nhwc",
                self.gpu.grid_stride(nb * pixels * kdim),
                args,
            )?;
            let c = out.view(b0 * pixels * g.cout * 4, nb * pixels * g.cout * 4)?;
            gemm::gemm(
                &self.gpu,
                self.rung,
                &Operands {
                    a: &cols,
                    b: &dw.kernel,
                    c: &c,
                    bias: dw.bias.as_ref(),
                    m: nb * pixels,
                    n: g.cout,
                    k: kdim,
                    relu: spec.activation == Activation::Relu,
                },
            )?;
            b0 += nb;
        }
        // The column buffer is freed when this returns: wait until the GEMMs have read it.
        self.gpu.synchronize()?;
        self.tensor(g.output_shape(), out)
    }

    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        let g = spec.geometry(x.shape())?;
        let xm = self.mem(x, "max_pool2d input")?;
        let len = g.n * g.oh * g.ow * g.c;
        let out = self.alloc_f32(len)?;
        let args = Args::new()
            .mem(xm)
            .mem(&out)
            .i32s(&[g.n, g.h, g.w, g.c, g.size[0], g.size[1]])
            .i32s(&[g.stride[0], g.stride[1], g.pad_top, g.pad_left, g.oh, g.ow]);
        self.launch_ops("max_pool_nhwc", self.gpu.grid_stride(len), args)?;
        self.tensor(g.output_shape(), out)
    }

    fn dense(&self, x: &Tensor, w: &LayerParams, activation: Activation) -> Result<Tensor> {
        let [n, fin, fout] =
            dense_geometry(x.shape(), w.kernel().shape(), w.bias().map(|b| b.shape()))?;
        let xm = self.mem(x, "dense input")?;
        let dw = self.weights(w)?;
        let out = self.alloc_f32(n * fout)?;
        gemm::gemm(
            &self.gpu,
            self.rung,
            &Operands {
                a: xm,
                b: &dw.kernel,
                c: &out,
                bias: dw.bias.as_ref(),
                m: n,
                n: fout,
                k: fin,
                relu: activation == Activation::Relu,
            },
        )?;
        self.tensor([n, fout], out)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let cols = *dims
            .last()
            .ok_or_else(|| Error::Shape("softmax of a scalar".into()))?;
        if cols == 0 {
            return Err(Error::Shape(format!(
                "softmax over an empty axis: {}",
                x.shape()
            )));
        }
        let rows = x.numel() / cols;
        let xm = self.mem(x, "softmax input")?;
        let out = self.alloc_f32(x.numel())?;
        let args = Args::new()
            .mem(xm)
            .mem(&out)
            .i32(rows as i32)
            .i32(cols as i32);
        self.launch_ops("softmax_rows", self.gpu.grid_stride(rows), args)?;
        self.tensor(x.shape().clone(), out)
    }

    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        let [n, h, w, c] = x.shape().nhwc("global pool input")?;
        let xm = self.mem(x, "global pool input")?;
        let out = self.alloc_f32(n * c)?;
        let args = Args::new()
            .mem(xm)
            .mem(&out)
            .i32(n as i32)
            .i32((h * w) as i32)
            .i32(c as i32)
            .i32((kind == GlobalPool::Max) as i32);
        self.launch_ops("global_pool_nhwc", self.gpu.grid_stride(n * c), args)?;
        self.tensor([n, c], out)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        let xm = self.mem(x, "relu input")?;
        let out = self.alloc_f32(x.numel())?;
        let args = Args::new().mem(xm).mem(&out).value(x.numel() as i64);
        self.launch_ops("relu_f32", self.gpu.grid_stride(x.numel()), args)?;
        self.tensor(x.shape().clone(), out)
    }

    fn mul(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if x.shape() != mask.shape() {
            return Err(Error::Shape(format!(
                "mul: {} and {} differ",
                x.shape(),
                mask.shape()
            )));
        }
        let xm = self.mem(x, "mul input")?;
        let mm = self.mem(mask, "mul mask")?;
        let out = self.alloc_f32(x.numel())?;
        let args = Args::new()
            .mem(xm)
            .mem(mm)
            .mem(&out)
            .value(x.numel() as i64);
        self.launch_ops("mul_f32", self.gpu.grid_stride(x.numel()), args)?;
        self.tensor(x.shape().clone(), out)
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
        training::conv2d_backward(self, x, y, dy, w, spec, wanted)
    }

    fn dense_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        activation: Activation,
        wanted: Wanted,
    ) -> Result<LayerGrads> {
        training::dense_backward(self, x, y, dy, w, activation, wanted)
    }

    fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        training::max_pool2d_backward(self, x, dy, spec)
    }

    fn global_pool_backward(&self, x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        training::global_pool_backward(self, x, dy, kind)
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        training::relu_backward(self, y, dy)
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
        training::softmax_cross_entropy(self, logits, labels)
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        training::sum_squares(self, x)
    }

    fn axpy(&self, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
        training::axpy(self, alpha, x, y)
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
        training::sgd_step(self, w, g, velocity, lr, momentum, nesterov)
    }

    fn adam_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<()> {
        training::adam_step(self, w, g, m, v, step)
    }
}
