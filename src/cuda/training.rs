//! The CUDA backend's training ops: backward passes, the loss and the optimizer steps
//! (`kernels/train.cu`).

use super::backend::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Conv2dSpec, CrossEntropy, GlobalPool, LayerGrads, LayerParams,
    Pool2dSpec, Tensor, Wanted,
};

fn not_yet<T>(op: &str) -> Result<T> {
    Err(Error::Invalid(format!(
        "{op} does not run on the CUDA backend yet; use --device cpu"
    )))
}

pub(super) fn conv2d_backward(
    _be: &CudaBackend,
    _x: &Tensor,
    _y: &Tensor,
    _dy: &Tensor,
    _w: &LayerParams,
    _spec: &Conv2dSpec,
    _wanted: Wanted,
) -> Result<LayerGrads> {
    not_yet("conv2d backward")
}

pub(super) fn dense_backward(
    _be: &CudaBackend,
    _x: &Tensor,
    _y: &Tensor,
    _dy: &Tensor,
    _w: &LayerParams,
    _activation: Activation,
    _wanted: Wanted,
) -> Result<LayerGrads> {
    not_yet("dense backward")
}

pub(super) fn max_pool2d_backward(
    _be: &CudaBackend,
    _x: &Tensor,
    _dy: &Tensor,
    _spec: &Pool2dSpec,
) -> Result<Tensor> {
    not_yet("max pool backward")
}

pub(super) fn global_pool_backward(
    _be: &CudaBackend,
    _x: &Tensor,
    _dy: &Tensor,
    _kind: GlobalPool,
) -> Result<Tensor> {
    not_yet("global pool backward")
}

pub(super) fn relu_backward(_be: &CudaBackend, _y: &Tensor, _dy: &Tensor) -> Result<Tensor> {
    not_yet("relu backward")
}

pub(super) fn softmax_cross_entropy(
    _be: &CudaBackend,
    _logits: &Tensor,
    _labels: &[usize],
) -> Result<CrossEntropy> {
    not_yet("softmax cross-entropy")
}

pub(super) fn sum_squares(_be: &CudaBackend, _x: &Tensor) -> Result<f64> {
    not_yet("the L2 penalty")
}

pub(super) fn axpy(_be: &CudaBackend, _alpha: f64, _x: &Tensor, _y: &mut Tensor) -> Result<()> {
    not_yet("axpy")
}

pub(super) fn sgd_step(
    _be: &CudaBackend,
    _w: &mut Tensor,
    _g: &Tensor,
    _velocity: &mut Tensor,
    _lr: f64,
    _momentum: f64,
    _nesterov: bool,
) -> Result<()> {
    not_yet("the SGD step")
}

pub(super) fn adam_step(
    _be: &CudaBackend,
    _w: &mut Tensor,
    _g: &Tensor,
    _m: &mut Tensor,
    _v: &mut Tensor,
    _step: &AdamStep,
) -> Result<()> {
    not_yet("the Adam step")
}
