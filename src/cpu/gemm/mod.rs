//! Single-precision GEMM, `C = A * B` row-major, with a fused bias and ReLU epilogue.
//!
//! The kernels form a ladder, each rung selectable by name (`keel bench gemm --kernel`):
//! `naive` (triple loop), `blocked` (cache tiling, compiler-vectorized), `packed` (BLIS packing
//! and a portable register-tile kernel), `avx2` and `avx512` (the same loops around
//! hand-written SIMD micro-kernels), and `neon` on aarch64; `avx512bf16` and `amxbf16` round
//! their operands to bfloat16. The fastest f32 rung the CPU supports is the default. See
//! `docs/cpu-kernels.md` for what each rung buys on this machine.

pub mod amx;
pub mod bf16;
#[cfg(test)]
mod bf16_cases;
pub mod blocking;
mod driver;
mod micro;
#[cfg(target_arch = "aarch64")]
mod micro_neon;
#[cfg(target_arch = "x86_64")]
mod micro_x86;
mod naive;
mod pack;

pub use blocking::Blocking;
pub use driver::BSource;
pub use naive::{gemm_blocked, gemm_naive};
pub use pack::{ASource, MatrixA, PackedB, TransposedA, pack_b};

use crate::cpu::isa::Isa;
use micro::Portable;
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
        let v = self.bias.map_or(v, |b| v + b[j]);
        if self.relu && v < 0.0 { 0.0 } else { v }
    }

    /// The epilogue of a row of finished sums from column `j0` on, a pass each for the bias
    /// and ReLU (so that both vectorize), for kernels that finish C outside their registers
    /// (AMX's tiles). The same values as [`Epilogue::apply`] element by element.
    ///
    /// Never inlined: inlined into AMX's `macro_kernel` (where codegen-unit partitioning
    /// happened to allow it, after an unrelated change elsewhere in the crate), its loops
    /// unrolled into 2,000 scalar compares, the function's spills to the stack tripled, and
    /// the bf16 VGG16 pass at batch 8 ran 5-8% slower (Xeon, issue 14's ninth session), though
    /// the tile loop itself was the same.
    #[inline(never)]
    pub fn apply_row(self, row: &mut [f32], j0: usize) {
        if let Some(bias) = self.bias {
            for (v, b) in row.iter_mut().zip(&bias[j0..]) {
                *v += b;
            }
        }
        if self.relu {
            for v in row.iter_mut() {
                // A select, not a conditional store, so that it vectorizes (NaN and -0.0 stay).
                *v = if *v < 0.0 { 0.0 } else { *v };
            }
        }
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
    /// bf16 operands, f32 sums (`vdpbf16ps`): another precision, not just another speed.
    Avx512Bf16,
    /// The same product as `Avx512Bf16` on Intel's tile unit (`tdpbf16ps`, Sapphire Rapids and
    /// later): `amx::status()` says whether it runs here, and if not why.
    AmxBf16,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::Naive,
        Kernel::Blocked,
        Kernel::Packed,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
        Kernel::Avx512Bf16,
        Kernel::AmxBf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Naive => "naive",
            Kernel::Blocked => "blocked",
            Kernel::Packed => "packed",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
            Kernel::Avx512Bf16 => "avx512bf16",
            Kernel::AmxBf16 => "amxbf16",
        }
    }

    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The instruction set the rung needs (AMX's packing is AVX-512 code).
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Avx512 | Kernel::Avx512Bf16 | Kernel::AmxBf16 => Isa::Avx512,
            Kernel::Neon => Isa::Neon,
            _ => Isa::Portable,
        }
    }

    pub fn available(self) -> bool {
        match self {
            Kernel::Avx512Bf16 => bf16::available(),
            Kernel::AmxBf16 => amx::available(),
            _ => self.isa().available(),
        }
    }

    /// Whether the rung rounds its operands to bf16 (its results differ from f32's by design).
    pub fn is_bf16(self) -> bool {
        matches!(self, Kernel::Avx512Bf16 | Kernel::AmxBf16)
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
        Kernel::Avx512Bf16 => bf16::gemm_bf16(m, n, k, a, lda, b, ldb, c, ldc, ep, parallel),
        Kernel::AmxBf16 => amx::gemm_amx(m, n, k, a, lda, b, ldb, c, ldc, ep, parallel),
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

/// The bf16 rung `--precision bf16` runs on: AMX tiles where [`amx::available`] (Intel
/// Sapphire Rapids and later, tile state granted, self-check passed), else AVX512-BF16. Both
/// compute the product [`bf16::gemm_bf16_reference`] defines, within its tolerance.
pub fn bf16_kernel() -> Kernel {
    if amx::available() {
        Kernel::AmxBf16
    } else {
        Kernel::Avx512Bf16
    }
}

/// [`bf16::gemm_bf16_packed`] on [`bf16_kernel`]'s rung.
///
/// # Panics
/// As [`bf16::gemm_bf16_packed`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_packed_best(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &bf16::PackedBBf16,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    if bf16_kernel() == Kernel::AmxBf16 {
        amx::gemm_amx_packed(m, a, lda, b, c, ldc, ep, parallel);
    } else {
        bf16::gemm_bf16_packed(m, a, lda, b, c, ldc, ep, parallel);
    }
}

/// Whether [`gemm_bf16_pairs_best`] reads an A of bf16 pairs `k` deep in place: on
/// AVX512-BF16 an even `k` (a pair must not straddle two elements) within one K block, on
/// AMX also whole tile rows of 32 values ([`amx::pairs_fit`]; VGG's 64 to 512 channels are).
pub fn bf16_pairs_fit(k: usize) -> bool {
    if bf16_kernel() == Kernel::AmxBf16 {
        amx::pairs_fit(k)
    } else {
        k.is_multiple_of(2) && k <= bf16::KC
    }
}

/// [`bf16::gemm_bf16_pairs`] on [`bf16_kernel`]'s rung (where [`bf16_pairs_fit`]).
///
/// # Panics
/// As [`bf16::gemm_bf16_pairs`] or [`amx::gemm_amx_pairs`].
pub fn gemm_bf16_pairs_best(
    m: usize,
    a: &[u32],
    ks: usize,
    b: &bf16::PackedBBf16,
    c: &mut [f32],
    ldc: usize,
) {
    if bf16_kernel() == Kernel::AmxBf16 {
        amx::gemm_amx_pairs(m, a, ks, b, c, ldc);
    } else {
        bf16::gemm_bf16_pairs(m, a, ks, b, c, ldc);
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
    gemm_source_blocked(isa, blocking_for(isa), a, b, n, c, ldc, ep, parallel);
}

/// [`gemm_source`] with explicit block sizes (what `keel tune` tries). They change the speed
/// only: C is bit-identical whatever `blk` is.
///
/// # Panics
/// If `isa` is not available on this CPU, or B was packed with another `kc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_source_blocked(
    isa: Isa,
    blk: Blocking,
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
        Isa::Portable => driver::gemm::<Portable>(a, b, n, c, ldc, ep, parallel, blk),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::gemm::<Avx2>(a, b, n, c, ldc, ep, parallel, blk),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => driver::gemm::<Avx512>(a, b, n, c, ldc, ep, parallel, blk),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => driver::gemm::<Neon>(a, b, n, c, ldc, ep, parallel, blk),
        #[allow(unreachable_patterns)]
        _ => unreachable!("available() is false for another architecture's ISAs"),
    }
}

/// Whether a layer's packed weights of `bytes` in all (every product the layer runs reads
/// them back to back) should be passed as [`BSource::Streamed`]: more than `STREAMED_B_MIN`
/// cannot have stayed in this core's L2 since the last time they were read.
pub fn streams_packed_b(bytes: usize) -> bool {
    bytes > STREAMED_B_MIN
}

/// Bytes of packed weights above which they are read from L3 or memory. Measured on VGG16 at
/// 240x240, batch 1 (Xeon with 2 MB of L2 per core): prefetching Winograd's `U` helped from
/// block3 on (4.7 MB and more), and made block2 (1.2 and 2.4 MB, still mostly in cache)
/// slower.
const STREAMED_B_MIN: usize = 4 << 20;

/// The leading dimension, `ld` or a little more (whole 64-byte lines), at which an A the
/// kernel of `isa` reads in place does not crowd its rows into a few L1 sets. With `ld` a
/// multiple of 4 KB the driver would otherwise copy A, block by block, to rows further
/// apart (see `driver::aliases_in_l1`); an A laid out at this spacing from the start is read
/// as it is.
pub fn spread_ld(isa: Isa, ld: usize) -> usize {
    let (mr, _) = blocking::tile(isa);
    (ld..)
        .step_by(16)
        .find(|&ld| !driver::aliases_in_l1(ld, mr))
        .expect("some spacing spreads the rows")
}

/// Pack row-major `b` (`k x n`, leading dimension `ldb`) once, for repeated products with the
/// kernel of `isa` (with its block sizes on this machine, [`blocking_for`]).
pub fn pack_b_for(isa: Isa, b: &[f32], ldb: usize, k: usize, n: usize) -> PackedB {
    let (_, nr) = blocking::tile(isa);
    PackedB::new(b, ldb, k, n, blocking_for(isa).kc_for(k), nr)
}

/// Where the block sizes in use came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingSource {
    /// Measured on this CPU model by `keel tune`.
    Tuned,
    /// The analytical model of [`blocking::model`], from the caches read at start-up.
    Model,
}

/// The block sizes the kernel of `isa` uses on this machine, and where they came from: the
/// ones `keel tune` measured fastest on this CPU model, when it has been run, else the cache
/// model's. Worked out once per process, so weights packed early stay valid.
pub fn blocking_choice(isa: Isa) -> (Blocking, BlockingSource) {
    use std::sync::OnceLock;
    static CHOSEN: OnceLock<Vec<(Isa, Blocking, BlockingSource)>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let tuned = crate::cpu::tune::current();
        Isa::ladder()
            .iter()
            .map(|&isa| {
                let (mr, nr) = blocking::tile(isa);
                match tuned.and_then(|t| t.blocking(isa)) {
                    Some(b) if b.valid_for(mr, nr) => (isa, b, BlockingSource::Tuned),
                    _ => (
                        isa,
                        blocking::model(crate::cpu::machine::get(), mr, nr, 4),
                        BlockingSource::Model,
                    ),
                }
            })
            .collect()
    });
    chosen
        .iter()
        .find(|(i, ..)| *i == isa)
        .map(|&(_, b, s)| (b, s))
        .unwrap_or_else(|| {
            let (mr, nr) = blocking::tile(isa);
            (
                blocking::model(crate::cpu::machine::get(), mr, nr, 4),
                BlockingSource::Model,
            )
        })
}

/// The block sizes the kernel of `isa` uses on this machine ([`blocking_choice`]).
pub fn blocking_for(isa: Isa) -> Blocking {
    blocking_choice(isa).0
}

#[cfg(test)]
mod tests;
