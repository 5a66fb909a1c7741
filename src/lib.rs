//! keel: a from-scratch tensor engine for transfer learning on VGG.
//!
//! It loads Keras's VGG16/VGG19 weights (`.h5`) natively, runs the network with its own kernels
//! and reproduces Keras's numbers. The layout follows the architecture:
//! [`tensor`] (shapes, storage, the op surface), [`cpu`] (kernels), [`nn`] (layers and VGG),
//! [`io`] (HDF5/Keras, safetensors, images, .npy, datasets), [`transfer`] (frozen base, head
//! training and fine-tuning, model folders), `viz` (pictures: curves, confusion matrices,
//! activation maps, Grad-CAM; the `viz` feature), `cli` (the `keel` command; the `cli`
//! feature).
//!
//! The edges are Cargo features, all on by default: `cli` (clap), `fetch` (ureq), `progress`
//! (indicatif), `viz` (plotters). A program that only runs and trains models depends on keel
//! with `default-features = false` and compiles none of them.

#[cfg(feature = "cli")]
pub mod cli;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod digest;
pub mod error;
pub mod io;
pub mod nn;
pub mod rng;
pub mod tensor;
pub mod transfer;
#[cfg(feature = "viz")]
pub mod viz;

pub use error::{Error, Result};
