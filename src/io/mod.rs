//! Everything that crosses keel's edge: weight files (Keras .h5 through our own HDF5 reader,
//! safetensors), images, .npy arrays, labels, downloads, and atomic writes.

pub mod atomic;
pub mod batch;
pub mod dataset;
pub mod export;
pub mod feature_cache;
pub mod fetch;
pub mod hdf5;
pub mod image;
pub mod keras;
pub mod labels;
pub mod npy;
mod pixels;
mod resize;
pub mod safetensors;

use std::path::Path;

use crate::error::Result;
use crate::nn::WeightSet;

/// Load weights from a Keras `.h5` file or a keel `.safetensors` file (chosen by extension).
pub fn load_weights(path: &Path) -> Result<WeightSet> {
    let is_safetensors = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        safetensors::read_weights(path)
    } else {
        keras::read_weights(path)
    }
}
