//! `keras.applications.vgg16.preprocess_input` in its default "caffe" mode.
//!
//! VGG was trained in Caffe on BGR images with the ImageNet mean subtracted and no scaling, so
//! the input must be prepared the same way: RGB -> BGR, then subtract the per-channel mean.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// ImageNet channel means in BGR order, as Keras subtracts them.
pub const CAFFE_BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

/// `(N, H, W, 3)` RGB values (0..255, any float) -> BGR minus [`CAFFE_BGR_MEAN`], in f32 as
/// Keras computes it (bit-identical to Keras's output).
pub fn preprocess_caffe(rgb: &Tensor) -> Result<Tensor> {
    let [_, _, _, c] = rgb.shape().nhwc("preprocess_input input")?;
    if c != 3 {
        return Err(Error::Shape(format!(
            "preprocess_input needs 3 channels (RGB), got {}",
            rgb.shape()
        )));
    }
    let mut out = rgb.clone();
    for px in out.data_mut().chunks_exact_mut(3) {
        let [r, g, b] = [px[0], px[1], px[2]];
        px[0] = b - CAFFE_BGR_MEAN[0];
        px[1] = g - CAFFE_BGR_MEAN[1];
        px[2] = r - CAFFE_BGR_MEAN[2];
    }
    Ok(out)
}

/// An `(H, W, 3)` RGB byte image as one preprocessed item `(1, H, W, 3)`.
pub fn preprocess_rgb8(height: usize, width: usize, rgb: &[u8]) -> Result<Tensor> {
    let values: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
    preprocess_caffe(&Tensor::from_vec([1, height, width, 3], &values)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_to_bgr_and_subtracts_the_mean() {
        let x = preprocess_rgb8(1, 2, &[10, 20, 30, 255, 0, 7]).unwrap();
        assert_eq!(
            x.data(),
            &[
                30. - 103.939,
                20. - 116.779,
                10. - 123.68,
                7. - 103.939,
                0. - 116.779,
                255. - 123.68
            ]
        );
        assert!(preprocess_caffe(&Tensor::zeros([1, 2, 2, 4]).unwrap()).is_err());
    }
}
