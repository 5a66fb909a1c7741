//! Images to a network input batch: decode, resize as Keras's `load_img`, preprocess, stack.

use std::path::PathBuf;

use rayon::prelude::*;

use super::image::{Interpolation, load_img};
use crate::error::Result;
use crate::nn::preprocess_rgb8;
use crate::tensor::Tensor;

/// Load `paths` at `size` (H, W) with `interp`, preprocess each as Keras's caffe mode, and
/// stack them into `(N, H, W, 3)`. Decoding runs in parallel; the first failing path is the
/// error.
pub fn load_preprocessed(
    paths: &[PathBuf],
    size: [usize; 2],
    interp: Interpolation,
) -> Result<Tensor> {
    let items: Vec<Tensor> = paths
        .par_iter()
        .map(|p| {
            let img = load_img(p, Some((size[0], size[1])), interp)?;
            preprocess_rgb8(img.height, img.width, &img.data)?.reshape([size[0], size[1], 3])
        })
        .collect::<Result<_>>()?;
    Tensor::stack(&items)
}
