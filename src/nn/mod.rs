//! Neural-network layers and models: VGG16/VGG19 with keras.applications semantics.
//!
//! Everything here speaks to the op surface ([`crate::tensor::Backend`]) only, never to a
//! particular backend.

mod arch;
pub mod fit;
pub mod head;
pub mod metrics;
pub mod optim;
mod preprocess;
pub mod schedule;
mod summary;
mod vgg;
mod weights;

pub use arch::{
    Arch, ClassifierActivation, IMAGENET_CLASSES, IMAGENET_FC_UNITS, IMAGENET_WIDTHS, LayerKind,
    LayerSpec, Pooling, VggConfig,
};
pub use preprocess::{CAFFE_BGR_MEAN, preprocess_caffe, preprocess_rgb8};
pub use summary::summary_table;
pub use vgg::Vgg;
pub use weights::{Identity, LayerWeights, NamedTensor, TOP_LAYERS, WeightSet};
