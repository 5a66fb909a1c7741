//! Tensors: shapes, aligned storage, the device they live on, and the typed op surface.
//!
//! Activations are NHWC and weights keep Keras's layout (conv kernels `(kH, kW, Cin, Cout)`,
//! dense kernels `(in, out)`), so a tensor read from a Keras file is used as stored.

mod backend;
mod device;
mod shape;
mod storage;
#[allow(clippy::module_inception)]
mod tensor;

pub use backend::{
    Activation, Axis, Backend, Conv2dSpec, ConvGeometry, GlobalPool, LayerCache, Padding,
    Pool2dSpec, PoolGeometry, dense_geometry,
};
pub use device::Device;
pub use shape::Shape;
pub use storage::{AlignedVec, DType};
pub use tensor::Tensor;
