//! The classifier head trained on top of VGG's base: its layer list and a model of it that
//! runs forward and backward through the op surface, on the same tensors as the base.

mod model;
mod spec;

#[cfg(test)]
mod gradcheck;

pub use model::{Head, HeadTape, Mode, concat_rows, dropout_mask};
pub use spec::{DEFAULT_HEAD, HeadLayer, HeadSpec};
