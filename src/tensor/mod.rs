//! Tensors: shapes, storage on a device, the layers' parameters, and the op surface.
//!
//! Activations are NHWC and weights keep Keras's layout (conv kernels `(kH, kW, Cin, Cout)`,
//! dense kernels `(in, out)`), so a tensor read from a Keras file is used as stored. This module
//! sits at the bottom of keel: it knows no kernel and no device API.

mod backend;
mod device;
mod geometry;
mod params;
pub mod real;
mod shape;
mod storage;
#[allow(clippy::module_inception)]
mod tensor;

pub use backend::{AdamStep, Backend, CrossEntropy, LayerGrads, Wanted};
pub use device::{Device, DeviceBuffer};
pub use geometry::{
    Activation, Axis, Conv2dSpec, ConvGeometry, GlobalPool, Padding, Pool2dSpec, PoolGeometry,
    check_grad_shape, check_same_shape, cross_entropy_geometry, dense_geometry,
};
pub use params::{LayerCache, LayerParams};
pub use real::Real;
pub use shape::Shape;
pub use storage::{AlignedVec, DType};
pub use tensor::Tensor;
