//! Decoded pixels: what image files become and what the resizers and the preprocessing read.
//! A type of its own so that decoding (`image.rs`) and resizing (`resize.rs`) both depend on
//! it and not on each other.

/// 8-bit RGB, row-major HWC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}
