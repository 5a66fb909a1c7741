//! CPU kernels.
//!
//! [`Cpu`] is the fast backend keel runs by default: hand-written SIMD GEMM (`gemm`), and
//! direct, implicit-GEMM and Winograd convolutions (`conv`), dispatched at run time on the ISA
//! the CPU has (`isa`).
//!
//! [`CpuReference`] and the `*_reference` kernels are the simple kernels that define what every
//! op computes. They stay forever as the ground truth that faster kernels are tested against
//! (cache-friendly NHWC loops the compiler vectorizes, rayon across output rows).

pub mod alloc;
pub mod conv;
mod conv2d;
mod dense;
mod fast;
pub mod gemm;
pub mod isa;
pub mod peak;
mod pool;
pub(crate) mod pool2x2;
mod softmax;

pub use conv2d::conv2d_reference;
pub use dense::dense_reference;
pub use fast::Cpu;
pub use pool::{global_pool_reference, max_pool2d_reference};
pub use softmax::softmax_reference;

use crate::error::Result;
use crate::tensor::{Activation, Backend, Conv2dSpec, GlobalPool, Pool2dSpec, Tensor};

/// The reference CPU backend: the ground truth every fast kernel is tested against.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReference;

impl Backend for CpuReference {
    fn name(&self) -> &'static str {
        "cpu-reference"
    }

    fn conv2d(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor> {
        conv2d_reference(x, kernel, bias, spec)
    }

    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        max_pool2d_reference(x, spec)
    }

    fn dense(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        activation: Activation,
    ) -> Result<Tensor> {
        dense_reference(x, kernel, bias, activation)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        softmax_reference(x)
    }

    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        global_pool_reference(x, kind)
    }
}
