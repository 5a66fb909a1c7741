//! Pictures keel draws: training curves and confusion matrices for model folders (and, to
//! come, feature maps and Grad-CAM). Drawing stays out of `io/`, which only moves bytes.

pub mod plots;
