//! The CUDA backend (behind the `cuda` feature).
//!
//! Reserved: it will implement [`crate::tensor::Backend`] with kernels compiled at run time by
//! NVRTC from the sources in `kernels/`, loaded through `cudarc` without a CUDA install at
//! build time. Nothing in `src/nn` will change when it lands.
