//! Pictures keel draws: training curves and confusion matrices for model folders, activation
//! maps and filters of the conv base, and Grad-CAM and saliency maps of a prediction. Drawing
//! stays out of `io/`, which only moves bytes.

pub mod filters;
pub mod gradcam;
pub mod maps;
pub mod plots;
pub mod report;
