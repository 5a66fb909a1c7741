//! The reference kernels: the plain loops that define what every op computes, and
//! [`CpuReference`], the backend made of them.
//!
//! They stay forever as the ground truth the fast kernels are tested against, and they are
//! written once over [`crate::tensor::Real`], so the same code runs in f64 for the gradient
//! checks (`gradcheck.rs`). Loops are cache-friendly NHWC loops the compiler vectorizes, with
//! rayon across output rows; every output element is summed by one task in a fixed order.

mod conv;
mod dense;
mod elementwise;
mod loss;
mod pool;

#[cfg(test)]
pub(crate) mod gradcheck;

pub use conv::{
    activation_backward, conv2d_backward_reference, conv2d_input_grad, conv2d_kernel_grad,
    conv2d_reference,
};
pub use dense::{dense_backward_reference, dense_reference};
pub use elementwise::{
    adam_step_reference, axpy_reference, mul_reference, relu_backward_reference, relu_reference,
    sgd_step_reference, sum_squares_reference,
};
pub use loss::{softmax_cross_entropy_reference, softmax_reference};
pub use pool::{
    global_pool_backward_reference, global_pool_reference, max_pool2d_backward_reference,
    max_pool2d_reference,
};

use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, CrossEntropy, Device, GlobalPool, LayerGrads,
    LayerParams, Pool2dSpec, Tensor, Wanted,
};

/// Run the generic kernel `$f::<T>` for the element type of `$x` (f32 or f64). The other
/// operands are checked when the kernel reads them as `T`.
macro_rules! by_dtype {
    ($x:expr, $f:ident :: <T> ( $($arg:expr),* $(,)? )) => {
        match $x.dtype() {
            $crate::tensor::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::DType::F64 => $f::<f64>($($arg),*),
            other => Err($crate::error::Error::Invalid(format!(
                "the reference kernels compute in f32 or f64, not {other}"
            ))),
        }
    };
}
pub(crate) use by_dtype;

/// A tensor in host memory, or an error naming the device it is on: what the CPU backends
/// accept from `upload` and `to_host`.
pub(crate) fn host(x: Tensor, backend: &str) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(x),
        d => Err(Error::Invalid(format!(
            "the {backend} backend reads host memory, but this tensor is on {d}"
        ))),
    }
}

/// The reference CPU backend: the ground truth every fast kernel is tested against, and the
/// only backend that computes in f64.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReference;

impl Backend for CpuReference {
    fn name(&self) -> &'static str {
        "cpu-reference"
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, x: Tensor) -> Result<Tensor> {
        host(x, self.name())
    }

    fn to_host(&self, x: Tensor) -> Result<Tensor> {
        host(x, self.name())
    }

    fn conv2d(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<Tensor> {
        conv2d_reference(x, w.kernel(), w.bias(), spec)
    }

    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        max_pool2d_reference(x, spec)
    }

    fn dense(&self, x: &Tensor, w: &LayerParams, activation: Activation) -> Result<Tensor> {
        dense_reference(x, w.kernel(), w.bias(), activation)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        softmax_reference(x)
    }

    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        global_pool_reference(x, kind)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        relu_reference(x)
    }

    fn mul(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        mul_reference(x, mask)
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
        conv2d_backward_reference(x, y, dy, w.kernel(), spec, wanted)
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
        dense_backward_reference(x, y, dy, w.kernel(), activation, wanted)
    }

    fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        max_pool2d_backward_reference(x, dy, spec)
    }

    fn global_pool_backward(&self, x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        global_pool_backward_reference(x, dy, kind)
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        relu_backward_reference(y, dy)
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
        softmax_cross_entropy_reference(logits, labels)
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        sum_squares_reference(x)
    }

    fn axpy(&self, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
        axpy_reference(alpha, x, y)
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
        sgd_step_reference(w, g, velocity, lr, momentum, nesterov)
    }

    fn adam_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<()> {
        adam_step_reference(w, g, m, v, step)
    }
}
