//! The CUDA backend (the `cuda` feature): [`CudaBackend`] implements
//! [`crate::tensor::Backend`] with kernels from `kernels/`, compiled at run time by NVRTC for
//! the device's architecture (cubins cached on disk by source digest and architecture), loaded
//! through cudarc without any CUDA at build time.
//!
//! The same sources also build for the CPU (g++ and `kernels/emu/cuda_emu.h`), and [`Gpu`]
//! runs either: that is how CI, which has no GPU, executes every kernel and every line of the
//! launch code a GPU would run.
//!
//! - [`source`]: the embedded sources and how a module's text is assembled;
//! - [`nvrtc`]: compiling for `sm_80`/`sm_90`/`sm_90a`, with ptxas's resource report;
//! - [`emu`]: the CPU build; [`driver`]: a real GPU; [`gpu`]: one interface over both;
//! - [`gemm`]: the GEMM ladder's rungs and their launcher; [`tma`]: Hopper's TMA descriptors;
//! - [`backend`]: the op surface on device-resident tensors;
//! - [`check`]: `keel gpu-check`, every kernel validated and timed against cuBLAS.

pub mod backend;
pub mod cache;
pub mod check;
pub mod check_conv;
pub mod check_vgg;
pub mod conv;
pub mod cublas;
pub mod driver;
pub mod emu;
pub mod gemm;
pub mod gpu;
pub mod nvrtc;
pub mod source;
pub mod tma;
pub mod training;

pub use backend::CudaBackend;
pub use gpu::{Args, DevMem, Gpu, Launch};
