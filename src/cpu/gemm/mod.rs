//! Single-precision GEMM, `C = A * B` row-major, with a fused bias and ReLU epilogue.
//!
//! The kernels form a ladder, each rung selectable by name (`keel bench gemm --kernel`):
//! `naive` (triple loop), `blocked` (cache tiling, compiler-vectorized), `packed` (BLIS packing
//! and a portable register-tile kernel), `avx2` and `avx512` (the same loops around
//! hand-written SIMD micro-kernels), and `neon` on aarch64. The fastest the CPU supports is the
//! default. See
//! `docs/cpu-kernels.md` for what each rung buys on this machine.

pub mod bf16;
pub mod blocking;
mod driver;
mod micro;
#[cfg(target_arch = "aarch64")]
mod micro_neon;
#[cfg(target_arch = "x86_64")]
mod micro_x86;
mod naive;
mod pack;

pub use driver::BSource;
pub use naive::{gemm_blocked, gemm_naive};
pub use pack::{ASource, MatrixA, PackedB, TransposedA, pack_b};

use crate::cpu::isa::Isa;
use micro::{Micro, Portable};
#[cfg(target_arch = "aarch64")]
use micro_neon::Neon;
#[cfg(target_arch = "x86_64")]
use micro_x86::{Avx2, Avx512};

/// What happens to each element of C after the sum: `relu(sum + bias[j])`, or with
/// `accumulate` the sum added to what C holds (a gradient summed over blocks of a batch).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per column (one value per output channel in a convolution).
    pub bias: Option<&'a [f32]>,
    /// Negative results become zero; NaN stays NaN, as in the reference kernels.
    pub relu: bool,
    /// `C += A * B` rather than `C = A * B`.
    pub accumulate: bool,
}

impl<'a> Epilogue<'a> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        relu: false,
        accumulate: false,
    };

    /// `C += A * B`.
    pub const ACCUMULATE: Epilogue<'static> = Epilogue {
        bias: None,
        relu: false,
        accumulate: true,
    };

    pub fn new(bias: Option<&'a [f32]>, relu: bool) -> Self {
        Epilogue {
            bias,
            relu,
            accumulate: false,
        }
    }

    /// The epilogue of one element in column `j`, for the scalar kernels.
    #[inline]
    pub fn apply(self, v: f32, j: usize) -> f32 {
        let v = v + self.bias.map_or(0.0, |b| b[j]);
        if self.relu && v < 0.0 { 0.0 } else { v }
    }
}

/// A rung of the GEMM ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Naive,
    Blocked,
    Packed,
    Avx2,
    Avx512,
    Neon,
}

impl Kernel {
    pub const ALL: [Kernel; 6] = [
        Kernel::Naive,
        Kernel::Blocked,
        Kernel::Packed,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Naive => "naive",
            Kernel::Blocked => "blocked",
            Kernel::Packed => "packed",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The instruction set the rung needs.
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Avx512 => Isa::Avx512,
            Kernel::Neon => Isa::Neon,
            _ => Isa::Portable,
        }
    }

    pub fn available(self) -> bool {
        self.isa().available()
    }

    /// The packed kernel for an instruction set.
    pub fn for_isa(isa: Isa) -> Kernel {
        match isa {
            Isa::Portable => Kernel::Packed,
            Isa::Avx2 => Kernel::Avx2,
            Isa::Avx512 => Kernel::Avx512,
            Isa::Neon => Kernel::Neon,
        }
    }

    /// The fastest kernel this CPU runs: the packed kernel of [`Isa::best`].
    pub fn best() -> Kernel {
        Kernel::for_isa(Isa::best())
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `C[m x n] = epilogue(A[m x k] * B[k x n])`, row-major with leading dimensions, with the
/// fastest kernel this CPU has, on the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
) {
    gemm_with(Kernel::best(), m, n, k, a, lda, b, ldb, c, ldc, ep, true);
}

/// [`gemm`] with a chosen rung of the ladder. `parallel` runs the packed kernels on the rayon
/// pool (the naive and blocked rungs are single-threaded).
///
/// # Panics
/// If the kernel's ISA is not available, or a slice is too short for its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    check_operand("A", a.len(), m, k, lda);
    check_operand("B", b.len(), k, n, ldb);
    check_operand("C", c.len(), m, n, ldc);
    match kernel {
        Kernel::Naive => gemm_naive(m, n, k, a, lda, b, ldb, c, ldc, ep),
        Kernel::Blocked => gemm_blocked(m, n, k, a, lda, b, ldb, c, ldc, ep),
        _ => {
            let a = MatrixA {
                data: a,
                rows: m,
                cols: k,
                ld: lda,
            };
            let b = BSource::Matrix { data: b, ld: ldb };
            gemm_source(kernel.isa(), &a, b, n, c, ldc, ep, parallel);
        }
    }
}

fn check_operand(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    assert!(
        ld >= cols,
        "{name}: leading dimension {ld} < {cols} columns"
    );
    if rows > 0 && cols > 0 {
        assert!(
            len >= (rows - 1) * ld + cols,
            "{name}: {len} values cannot hold {rows} x {cols} with leading dimension {ld}"
        );
    }
}

/// The general product behind every packed kernel: A from any [`ASource`] (a matrix, or an
/// image read as im2col), B plain or packed beforehand with [`pack_b_for`] for the same `isa`.
///
/// # Panics
/// If `isa` is not available on this CPU.
#[allow(clippy::too_many_arguments)]
pub fn gemm_source(
    isa: Isa,
    a: &dyn ASource,
    b: BSource,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    assert!(isa.available(), "this CPU cannot run {isa} kernels");
    match isa {
        Isa::Portable => driver::gemm::<Portable>(a, b, n, c, ldc, ep, parallel),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::gemm::<Avx2>(a, b, n, c, ldc, ep, parallel),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => driver::gemm::<Avx512>(a, b, n, c, ldc, ep, parallel),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => driver::gemm::<Neon>(a, b, n, c, ldc, ep, parallel),
        #[allow(unreachable_patterns)]
        _ => unreachable!("available() is false for another architecture's ISAs"),
    }
}

/// Pack row-major `b` (`k x n`, leading dimension `ldb`) once, for repeated products with the
/// kernel of `isa`.
pub fn pack_b_for(isa: Isa, b: &[f32], ldb: usize, k: usize, n: usize) -> PackedB {
    let (kc, nr) = blocking(isa);
    PackedB::new(b, ldb, k, n, kc, nr)
}

/// `(KC, NR)` of the kernel of `isa`: what a [`PackedB`] must be packed with.
fn blocking(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Portable => (Portable::KC, Portable::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (Avx2::KC, Avx2::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (Avx512::KC, Avx512::NR),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => (Neon::KC, Neon::NR),
        #[allow(unreachable_patterns)]
        _ => (Portable::KC, Portable::NR),
    }
}

#[cfg(test)]
mod tests;
