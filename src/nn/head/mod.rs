//! The classifier head trained on top of the frozen base: its layer list, its parameters, and
//! forward and backward passes written by hand (no autograd), checked against finite
//! differences in the tests.

mod model;
mod ops;
mod real;
mod spec;

#[cfg(test)]
mod gradcheck;

pub use model::{Head, Mode, Param, Tape};
pub use ops::{softmax, softmax_cross_entropy};
pub use real::Real;
pub use spec::{DEFAULT_HEAD, HeadLayer, HeadSpec};
