//! Neural-network layers and models: VGG16/VGG19 with keras.applications semantics, the
//! classifier head, and what trains them (optimizers, schedules, the training loop).
//!
//! Everything here speaks to the op surface ([`crate::tensor::Backend`]) only, never to a
//! particular backend, and keeps its tensors wherever that backend computes.

mod arch;
pub mod classifier;
pub mod fit;
pub mod head;
pub mod metrics;
pub mod optim;
pub mod param;
mod preprocess;
pub mod schedule;
mod summary;
mod tail;
mod vgg;
mod weights;

pub use arch::{
    Arch, ClassifierActivation, IMAGENET_CLASSES, IMAGENET_FC_UNITS, IMAGENET_WIDTHS, LayerKind,
    LayerSpec, Pooling, VggConfig,
};
pub use classifier::Classifier;
pub use preprocess::{CAFFE_BGR_MEAN, preprocess_caffe, preprocess_rgb8};
pub use summary::summary_table;
pub use tail::{ConvTail, TailTape};
pub use vgg::Vgg;
pub use weights::{Identity, LayerWeights, NamedTensor, TOP_LAYERS, WeightSet};
