//! CPU kernels.
//!
//! [`Cpu`] is the fast backend keel runs by default: hand-written SIMD GEMM (`gemm`), and
//! direct, implicit-GEMM and Winograd convolutions with their gradients (`conv`), dispatched at
//! run time on the ISA the CPU has (`isa`).
//!
//! [`CpuReference`] and the `*_reference` kernels (`reference/`) are the simple kernels that
//! define what every op computes, forward and backward. They stay forever as the ground truth
//! that faster kernels are tested against.

pub mod alloc;
#[cfg(test)]
mod bf16_tests;
pub mod conv;
mod fast;
pub mod gemm;
pub mod isa;
pub mod machine;
pub mod peak;
pub(crate) mod pool2x2;
pub(crate) mod prefetch;
pub(crate) mod reference;
pub(crate) mod stream;
pub mod tune;

pub use fast::Cpu;
pub use reference::*;
