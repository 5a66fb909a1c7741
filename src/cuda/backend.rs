//! [`Backend`] on a GPU (or on the CPU build of its kernels): tensors live in device memory and
//! stay there between layers; only [`Backend::upload`] and [`Backend::to_host`] cross.
//!
//! Convolutions run on the convolution ladder (`kernels/conv.cu`, `super::conv`): the direct
//! kernel for VGG's first layer, implicit GEMM in the backend's precision for the rest, with
//! bias and ReLU fused and a block's 2x2 max pool fused into its last convolution. Dense
//! layers use the GEMM ladder's best fp32 rung. The training ops are in `super::training`.

use std::sync::Arc;

use super::conv::{self as conv_ladder, ConvOperands};
use super::gemm::{self, Operands, Precision, Rung};
use super::gpu::{Args, DevMem, Gpu, Launch};
use super::source::OPS;
use super::training;
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, CrossEntropy, DType, Device, DeviceBuffer,
    GlobalPool, LayerGrads, LayerParams, Pool2dSpec, Tensor, Wanted, dense_geometry,
};

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
    /// The kernel as bf16 bits, made on first use by a BF16 convolution.
    bf16: std::sync::Mutex<Option<DevMem>>,
}

impl DeviceWeights {
    fn new(kernel: DevMem, bias: Option<DevMem>) -> DeviceWeights {
        DeviceWeights {
            kernel,
            bias,
            bf16: std::sync::Mutex::default(),
        }
    }
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
            return Ok(Arc::new(DeviceWeights::new(kernel, bias)));
        }
        let cached = w.cache().get_or_init(|| {
            let up = || -> Result<Arc<DeviceWeights>> {
                let kernel = self.gpu.upload(w.kernel().values::<f32>()?)?;
                let bias = match w.bias() {
                    Some(b) => Some(self.gpu.upload(b.values::<f32>()?)?),
                    None => None,
                };
                Ok(Arc::new(DeviceWeights::new(kernel, bias)))
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

    /// A convolution on the ladder's best rung for this precision and geometry, with VGG's
    /// max pool fused when `pool`, in as many launches as the grid's 65535 row tiles need.
    fn convolve(
        &self,
        x: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        pool: bool,
    ) -> Result<Tensor> {
        let g = spec.geometry(x.shape(), w.kernel().shape(), w.bias().map(|b| b.shape()))?;
        if pool && (g.oh < 2 || g.ow < 2) {
            // Keras's pool of a 1-pixel-wide map is empty; say so as the unfused path does.
            let y = self.convolve(x, w, spec, false)?;
            return self.max_pool2d(&y, &Pool2dSpec::vgg());
        }
        let xm = self.mem(x, "conv2d input")?;
        let dw = self.weights(w)?;
        let rung = conv_ladder::best(self.precision, &g, pool);
        let kernel = match rung.precision {
            Precision::Bf16 => self.bf16_kernel(&dw)?,
            _ => dw.kernel.clone(),
        };
        let [n, oh, ow, c] = conv_ladder::output_dims(&g, pool);
        let out = self.alloc_f32(n * oh * ow * c)?;
        // Rows of the implicit GEMM per image, and images per launch.
        let rows = if pool { 4 * oh * ow } else { g.oh * g.ow };
        let per_launch = (65535 * rung.bm as usize / rows.max(1)).clamp(1, g.n);
        let (in_image, out_image) = (g.h * g.w * g.cin * 4, oh * ow * c * 4);
        let mut b0 = 0;
        while b0 < g.n {
            let nb = per_launch.min(g.n - b0);
            let geometry = crate::tensor::ConvGeometry { n: nb, ..g };
            conv_ladder::conv2d(
                &self.gpu,
                rung,
                &ConvOperands {
                    x: &xm.view(b0 * in_image, nb * in_image)?,
                    kernel: &kernel,
                    bias: dw.bias.as_ref(),
                    out: &out.view(b0 * out_image, nb * out_image)?,
                    geometry,
                    relu: spec.activation == Activation::Relu,
                    pool,
                },
            )?;
            b0 += nb;
        }
        self.tensor([n, oh, ow, c], out)
    }

    /// The layer's kernel as bf16 bits (round to nearest even, as the `half` crate rounds),
    /// converted on the device once per set of weights.
    fn bf16_kernel(&self, dw: &DeviceWeights) -> Result<DevMem> {
        let mut slot = dw.bf16.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let len = dw.kernel.bytes() / 4;
        let out = self.gpu.alloc(len * 2)?;
        let args = Args::new().mem(&dw.kernel).mem(&out).value(len as i64);
        self.launch_ops("f32_to_bf16", self.gpu.grid_stride(len), args)?;
        *slot = Some(out.clone());
        Ok(out)
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

    fn reduced_precision(&self) -> Option<&'static str> {
        (self.precision != Precision::Fp32).then_some(self.precision.name())
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
        self.convolve(x, w, spec, false)
    }

    fn conv2d_pool(
        &self,
        x: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        pool: &Pool2dSpec,
    ) -> Result<Tensor> {
        // The implicit-GEMM rungs fuse VGG's pool (2x2, stride 2, valid) into the epilogue;
        // any other pool runs after the convolution.
        if *pool == Pool2dSpec::vgg() {
            self.convolve(x, w, spec, true)
        } else {
            let y = self.conv2d(x, w, spec)?;
            self.max_pool2d(&y, pool)
        }
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
