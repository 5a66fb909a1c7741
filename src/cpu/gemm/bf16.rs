//! BF16 GEMM: `C = epilogue(A * B)` with every operand value rounded to bfloat16 and the
//! products accumulated in f32.
//!
//! bfloat16 keeps f32's exponent and 8 bits of significand, so rounding costs precision but
//! never range, and halves the bytes the kernel moves. Two implementations:
//!
//! - [`gemm_bf16_reference`], which defines the product: each value of A and B rounded to
//!   bfloat16 (round to nearest, ties to even; NaN stays NaN), each product formed in f32 (the
//!   product of two bfloat16 values has at most 16 significant bits, so it is exact unless it
//!   over- or underflows f32's range), the products summed in f32 in order of `k`, then the
//!   epilogue.
//! - [`gemm_bf16`], for x86-64 CPUs with AVX512-BF16: the BLIS loop nest of `driver.rs` around
//!   a 12 x 32 register tile of `vdpbf16ps`. It sums the same exact products in another order
//!   and treats tiny values differently, so it matches the reference within a tolerance, not
//!   bit for bit (see below).
//!
//! # What `vdpbf16ps` computes
//!
//! For each 32-bit lane `j` it reads a pair of bfloat16 values from each source (`lo` in bits
//! 0..16, `hi` in bits 16..32) and does, per the Intel SDM and as measured on this AMD Zen 4:
//!
//! ```text
//! acc[j] = fma(a.hi, b.hi, acc[j])    // rounded to nearest even
//! acc[j] = fma(a.lo, b.lo, acc[j])    // rounded to nearest even
//! ```
//!
//! two fused steps, each rounded once (the product itself is exact), the odd `k` of the pair
//! first. MXCSR is neither read nor written: the rounding is always to nearest even, inputs
//! below f32's normal range (bfloat16 subnormals, and a subnormal accumulator) count as zero,
//! and a result below it is flushed to zero. So, against the reference, the fast path
//!
//! - adds the same products in another order: within a pair the odd `k` first, within a K
//!   block of [`KC`] values from zero, and the blocks' sums one after another into C;
//! - drops every product with an operand whose bfloat16 rounding is subnormal (magnitude
//!   below 2^-126; packing rounds in software exactly as [`round_bf16`] does, so these are
//!   the reference's own subnormal operands, which it keeps);
//! - flushes a partial sum that falls below 2^-126 to zero, where the reference keeps
//!   subnormal products and sums.
//!
//! The last two do not matter for data of ordinary magnitudes, where every product and
//! partial sum is far above 2^-126 or exactly zero.
//!
//! The tests therefore hold the fast path to the reference per element within
//! `1e-5 * (sum_k |a_k b_k| + |bias| + |C before|)` (rounded operands; see `tests` for why that
//! bound), and separately check it bit for bit against a scalar emulation of exactly the
//! sequence of operations above.
//!
//! # Packing
//!
//! `vdpbf16ps` multiplies pairs of adjacent `k`, so both operands are packed as 32-bit pairs
//! `lo = k even, hi = k odd` (an odd K ends with a pair whose `hi` is zero):
//!
//! - B, per K block and panel of [`NR`] = 32 columns: for each pair `p`, the 32 columns' pairs
//!   side by side, `panel[p * 32 + j] = (B[2p][j], B[2p+1][j])`: two 512-bit loads per pair.
//! - A, per panel of [`MR`] = 12 rows: row by row, `panel[r * ks + p] = (A[r][2p],
//!   A[r][2p+1])`, each pair broadcast to all 16 lanes in turn. The row stride `ks` is `kp`
//!   rounded up to a cache line plus one line, so the 12 rows read in step spread over L1's
//!   sets. Rows rather than the f32 kernels' `k`-major panels because the conversion then
//!   writes its 8 pairs with one store, not 8 scattered ones: at 3136 x 256 x 1152 (and
//!   [`KC`] = 512) packing A took 38% of the product the scattered way, 29% this way.
//!
//! A is always packed (the f32 kernels read A in place, but here it must be converted), and
//! packing converts f32 to bfloat16 sixteen values at a time with integer arithmetic. B can
//! be packed once for many products with [`PackedBBf16`] and [`gemm_bf16_packed`].

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::driver::CPtr;
use super::{Epilogue, check_operand};
use crate::cpu::isa::Isa;

/// Rows of the register tile: 12 rows x 2 vectors = 24 accumulators, plus 2 registers of B
/// and one broadcast, in AVX-512's 32 (as in the f32 AVX-512 kernel).
pub const MR: usize = 12;
/// Columns of the register tile: two 512-bit vectors of f32.
pub const NR: usize = 32;
/// Rows of A per packed block.
const MC: usize = 144;
/// Values of `k` per K block; even, so that only the last block can end on half a pair.
/// 9 x 256: VGG's K up to block 3 (1152, 2304) in one block, 4608 in two. Longer than the f32
/// kernel's 512 because packing reads A's rows in runs of KC: at 512 (2 KB runs 4.6 KB
/// apart) it read A at a third of streaming speed on this Zen 4 and took a quarter of the
/// product at 3136 x 256 x 1152 (133 GFLOP/s on one thread; 180-190 at 2304, and 1024^3
/// went from 180 to about 200). B's micro-panel (`KC * NR` bfloat16, 147 KB) and A's (55 KB)
/// then stream from L2 rather than sit in L1, which 24 `vdpbf16ps` per 176 bytes loaded
/// allow.
pub const KC: usize = 2304;

/// Round an f32 to bfloat16, to nearest with ties to even, as its bit pattern.
///
/// Overflow rounds to infinity, subnormals round like any other value (bfloat16 has f32's
/// exponent range, so they stay subnormal or become 2^-126), and a NaN stays a NaN, made quiet,
/// with its sign. This is `half::bf16::from_f32`, which is exactly that rounding in software
/// (checked against a nearest-value definition in the tests), so the reference and the packing
/// code share one definition.
#[inline]
pub fn round_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 a bfloat16 bit pattern stands for: its 16 bits as the top half of an f32. Exact
/// (every bfloat16 is an f32), NaNs included.
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `x` rounded to the nearest bfloat16, as an f32.
#[inline]
pub(super) fn to_bf16_f32(x: f32) -> f32 {
    bf16_to_f32(round_bf16(x))
}

/// The definition of the BF16 product: `C[m x n] = epilogue(A[m x k] * B[k x n])`, row-major
/// with leading dimensions, operands rounded to bfloat16, products summed in f32 in order of
/// `k`. With `ep.accumulate` the sum is added to C first, then the bias and ReLU, as the packed
/// f32 kernels do. Slow (a triple loop): it exists to test [`gemm_bf16`] against.
///
/// # Panics
/// If a slice is too short for its shape, or the bias shorter than `n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_reference(
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
    check_operands(m, n, k, a.len(), lda, b.len(), ldb, c.len(), ldc, ep);
    // Rounded once up front rather than inside the triple loop.
    let a: Vec<f32> = (0..m)
        .flat_map(|i| a[i * lda..][..k].iter().map(|&v| to_bf16_f32(v)))
        .collect();
    let b: Vec<f32> = (0..k)
        .flat_map(|p| b[p * ldb..][..n].iter().map(|&v| to_bf16_f32(v)))
        .collect();
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            let at = i * ldc + j;
            let v = if ep.accumulate { c[at] + s } else { s };
            c[at] = ep.apply(v, j);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn check_operands(
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    lda: usize,
    b_len: usize,
    ldb: usize,
    c_len: usize,
    ldc: usize,
    ep: Epilogue,
) {
    check_operand("A", a_len, m, k, lda);
    check_operand("B", b_len, k, n, ldb);
    check_operand("C", c_len, m, n, ldc);
    if let Some(bias) = ep.bias {
        assert!(
            bias.len() >= n,
            "bias has {} values for {n} columns",
            bias.len()
        );
    }
}

/// Whether [`gemm_bf16`] can run: an x86-64 CPU with AVX-512F and AVX512-BF16, and `KEEL_ISA`
/// (when set) not capping the kernels below `avx512`, since `vdpbf16ps` is an AVX-512
/// instruction and the cap is how a user rules AVX-512 out. An invalid `KEEL_ISA` counts as
/// unavailable here; the backend reports that error itself.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && matches!(Isa::from_env(), Ok(Isa::Avx512))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn assert_available() {
    assert!(
        available(),
        "gemm_bf16 needs an x86-64 CPU with AVX-512F and AVX512-BF16, and KEEL_ISA not below \
         avx512 (this one: {}); check bf16::available() first",
        Isa::from_env().map_or_else(|e| e.to_string(), |i| format!("best ISA {i}"))
    );
}

/// `C[m x n] = epilogue(A[m x k] * B[k x n])` with A and B rounded to bfloat16, on the
/// `vdpbf16ps` kernel; row-major with leading dimensions. `parallel` runs it on the rayon pool
/// (results do not depend on the number of threads). Matches [`gemm_bf16_reference`] within
/// the tolerance in the module documentation.
///
/// # Panics
/// If [`available`] is false, or a slice is too short for its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
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
    assert_available();
    check_operands(m, n, k, a.len(), lda, b.len(), ldb, c.len(), ldc, ep);
    gemm_impl(
        m,
        n,
        k,
        a,
        lda,
        BSrc::Matrix { data: b, ld: ldb },
        c,
        ldc,
        ep,
        parallel,
    );
}

/// [`gemm_bf16`] with B packed beforehand by [`PackedBBf16::new`]: `n` and `k` are B's.
///
/// # Panics
/// As [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_packed(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedBBf16,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    assert_available();
    let (n, k) = (b.n, b.k);
    // B's shape is its own: only A, C and the bias can disagree with it.
    check_operands(m, n, k, a.len(), lda, k * n, n, c.len(), ldc, ep);
    gemm_impl(
        m,
        n,
        k,
        a,
        lda,
        BSrc::Packed {
            packed: b,
            first_panel: 0,
        },
        c,
        ldc,
        ep,
        parallel,
    );
}

/// `C[m x n] = A * B` on one thread, with A already rounded to bfloat16 and laid out as the
/// kernel reads it: row `i` is the pairs `a[i * ks .. i * ks + kp]` (`kp = k / 2`, `lo` the
/// even `k`), in place, so no packing pass. For Winograd's bf16 path, whose input transform
/// writes V straight in this form (`V_e`'s rows are `ks = a^2 Cin / 2` pairs apart). C is
/// written, not accumulated; no bias or ReLU. The products are those of
/// [`gemm_bf16_packed`] on the same rounded A (the same kernel, the same order): identical bits.
///
/// # Panics
/// If [`available`] is false, `k` is odd or over [`KC`] (one K block), `ks < kp`, or a slice
/// is too short.
pub fn gemm_bf16_pairs(m: usize, a: &[u32], ks: usize, b: &PackedBBf16, c: &mut [f32], ldc: usize) {
    assert_available();
    let (k, n) = (b.k, b.n);
    assert!(
        k.is_multiple_of(2) && k <= KC,
        "gemm_bf16_pairs: K = {k} must be even and <= {KC}"
    );
    check_pairs("gemm_bf16_pairs", m, a, ks, b, c, ldc);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    x86::run_pairs(a, ks, m, b, CPtr(c.as_mut_ptr()), ldc);
}

/// The checks of a product over `b` whose A is `m` rows of bf16 pairs in place, `ks` pairs
/// apart (`gemm_bf16_pairs`, `amx::gemm_amx_pairs`; each checks K first): the rows hold K's
/// pairs, and A and C are long enough. Returns K's pairs; `what` names the caller.
pub(super) fn check_pairs(
    what: &str,
    m: usize,
    a: &[u32],
    ks: usize,
    b: &PackedBBf16,
    c: &[f32],
    ldc: usize,
) -> usize {
    let kp = b.k.div_ceil(2);
    assert!(ks >= kp, "{what}: row stride {ks} < {kp} pairs");
    if m > 0 && b.n > 0 {
        assert!(a.len() >= (m - 1) * ks + kp, "{what}: A is too short");
        check_operand("C", c.len(), m, b.n, ldc);
    }
    kp
}

/// One cache line of packed pairs: the element type of the packing buffers, so that every
/// panel starts 64-byte aligned without `unsafe`.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u32; 16]);

/// The first `len` pairs of `buf`, grown (zeroed) as needed.
pub(super) fn pairs_mut(buf: &mut Vec<Line>, len: usize) -> &mut [u32] {
    let lines = len.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0; 16]));
    }
    &mut bytemuck::cast_slice_mut(&mut buf[..lines])[..len]
}

/// All of B rounded and packed once, for a B reused across many products (a convolution's
/// weights). K blocks of [`KC`] follow each other; within a block the panels of [`NR`] columns
/// of the whole width, each in the pair layout of the module documentation.
#[derive(Clone, Debug)]
pub struct PackedBBf16 {
    data: Vec<Line>,
    k: usize,
    n: usize,
}

impl PackedBBf16 {
    /// Round and pack row-major `b` (`k x n`, leading dimension `ldb`).
    ///
    /// # Panics
    /// If [`available`] is false (the packing uses AVX-512), or `b` is too short.
    pub fn new(b: &[f32], ldb: usize, k: usize, n: usize) -> PackedBBf16 {
        assert_available();
        check_operand("B", b.len(), k, n, ldb);
        let panels = n.div_ceil(NR);
        let len = k.div_ceil(2) * panels * NR;
        let mut data = Vec::new();
        let dst = pairs_mut(&mut data, len);
        #[cfg(target_arch = "x86_64")]
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let block = &mut dst[pc / 2 * panels * NR..][..kc.div_ceil(2) * panels * NR];
            // SAFETY: `assert_available` checked AVX-512F.
            unsafe { x86::pack_b(&b[pc * ldb..], ldb, n, kc, panels, block) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = dst;
        PackedBBf16 { data, k, n }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<Line>()
    }

    /// Panels `first..first+count` of the K block starting at `pc` (a multiple of [`KC`]).
    pub(super) fn panels(&self, pc: usize, first: usize, count: usize) -> &[u32] {
        let panels = self.n.div_ceil(NR);
        let kp = KC.min(self.k - pc).div_ceil(2);
        let start = pc / 2 * panels * NR + first * kp * NR;
        &bytemuck::cast_slice(&self.data)[start..][..count * kp * NR]
    }
}

/// Where B comes from.
#[derive(Clone, Copy)]
pub(super) enum BSrc<'a> {
    /// Row-major f32, rounded and packed block by block during the product.
    Matrix { data: &'a [f32], ld: usize },
    /// Packed beforehand; this product's column 0 is the start of panel `first_panel`.
    Packed {
        packed: &'a PackedBBf16,
        first_panel: usize,
    },
}

/// The product after the checks. The work splits as in `driver.rs`: one rayon task per thread,
/// each running the whole loop nest on its own rectangle of C (rows, or columns when M is
/// small) and packing its own blocks. Every element of C is summed by one task over the same
/// K blocks in the same order, so the result does not depend on the number of threads.
#[allow(clippy::too_many_arguments)]
fn gemm_impl(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: BSrc,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No products: the reference's epilogue of an empty sum is the definition.
        let b: &[f32] = &[];
        gemm_bf16_reference(m, n, 0, a, lda, b, n, c, ldc, ep);
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let cp = CPtr(c.as_mut_ptr());
    if threads == 1 {
        run(a, lda, m, k, b, n, cp, ldc, ep);
        return;
    }
    let panels = n.div_ceil(NR);
    if m <= MC * threads && panels > 1 {
        // Small M: split the columns, so that each thread packs only its share of B.
        let chunks = threads.min(panels);
        let per = panels.div_ceil(chunks) * NR;
        (0..chunks).into_par_iter().for_each(|ch| {
            let j0 = ch * per;
            if j0 >= n {
                return;
            }
            let b = match b {
                BSrc::Matrix { data, ld } => BSrc::Matrix {
                    data: &data[j0..],
                    ld,
                },
                BSrc::Packed {
                    packed,
                    first_panel,
                } => BSrc::Packed {
                    packed,
                    first_panel: first_panel + j0 / NR,
                },
            };
            let ep = Epilogue {
                bias: ep.bias.map(|bias| &bias[j0..]),
                ..ep
            };
            // SAFETY: column j0 < n is inside C's first row; this task writes only columns
            // j0..j0+per of C's rows.
            let c = unsafe { cp.add(j0) };
            run(a, lda, m, k, b, per.min(n - j0), c, ldc, ep);
        });
    } else {
        // Otherwise split the rows, in whole micro-panels, as evenly as they go.
        let per = m.div_ceil(MR).div_ceil(threads) * MR;
        (0..threads).into_par_iter().for_each(|t| {
            let i0 = t * per;
            if i0 >= m {
                return;
            }
            // SAFETY: row i0 < m is inside C; this task writes only rows i0..i0+per.
            let c = unsafe { cp.add(i0 * ldc) };
            run(&a[i0 * lda..], lda, per.min(m - i0), k, b, n, c, ldc, ep);
        });
    }
}

/// The loop nest for `m` rows of A (from `a`'s start) and columns `0..n` of B and of C at `c`,
/// on this thread.
#[allow(clippy::too_many_arguments)]
fn run(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    b: BSrc,
    n: usize,
    c: CPtr,
    ldc: usize,
    ep: Epilogue,
) {
    #[cfg(target_arch = "x86_64")]
    x86::run(a, lda, m, k, b, n, c, ldc, ep);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, lda, m, k, b, n, c, ldc, ep);
        unreachable!("available() is false off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;
    use std::cell::Cell;

    use super::{BSrc, CPtr, KC, Line, MC, MR, NR, pairs_mut};
    use crate::cpu::gemm::Epilogue;
    use crate::cpu::gemm::micro_x86::prefetch_c_tile;

    /// Columns of B per packed block.
    const NC: usize = 4096;

    thread_local! {
        /// This thread's packed A block, reused from call to call.
        static A_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
        /// This thread's packed B block, reused from call to call.
        static B_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    }

    /// Pairs between the starts of two rows of a packed A panel holding `kp` pairs a row: whole
    /// cache lines, plus one so that the 12 rows, read in step by the micro-kernel, fall into
    /// different L1 sets (rows a multiple of 4 KB apart would share one set and evict each
    /// other).
    pub(in crate::cpu::gemm) fn a_stride(kp: usize) -> usize {
        kp.next_multiple_of(16) + 16
    }

    /// See [`super::run`]. Only called after `available()` said yes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        a: &[f32],
        lda: usize,
        m: usize,
        k: usize,
        b: BSrc,
        n: usize,
        c: CPtr,
        ldc: usize,
        ep: Epilogue,
    ) {
        // Row blocks of about MC and equal sizes, as in driver.rs.
        let mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR).max(MR);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let panels = nc.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let kp = kc.div_ceil(2);
                let last = pc + kc == k;
                let mut bbuf = B_BUF.take();
                let bpanels: &[u32] = match b {
                    BSrc::Packed {
                        packed,
                        first_panel,
                    } => packed.panels(pc, first_panel + jc / NR, panels),
                    BSrc::Matrix { data, ld } => {
                        let dst = pairs_mut(&mut bbuf, panels * kp * NR);
                        // SAFETY: the caller checked AVX-512F (through `available`).
                        unsafe { pack_b(&data[pc * ld + jc..], ld, nc, kc, panels, dst) };
                        dst
                    }
                };
                let mut abuf = A_BUF.take();
                for ic in (0..m).step_by(mc) {
                    let mcb = mc.min(m - ic);
                    let apanels = pairs_mut(&mut abuf, mcb.div_ceil(MR) * MR * a_stride(kp));
                    // SAFETY: as for `pack_b`.
                    unsafe { pack_a(&a[ic * lda + pc..], lda, mcb, kc, apanels) };
                    let bias = ep.bias.filter(|_| last).map(|b| &b[jc..]);
                    // SAFETY: AVX-512F and AVX512-BF16 as for `pack_b`. Rows ic..ic+mcb and
                    // columns jc..jc+nc are inside this task's rectangle of C, which only this
                    // task writes; the packed blocks have the sizes `macro_kernel` needs, and
                    // the bias (n values from this task's first column) covers them.
                    unsafe {
                        macro_kernel(
                            APairs::Packed(apanels),
                            bpanels,
                            kp,
                            mcb,
                            nc,
                            c.add(ic * ldc + jc),
                            ldc,
                            pc > 0 || ep.accumulate,
                            bias,
                            last && ep.relu,
                        )
                    };
                }
                A_BUF.set(abuf);
                B_BUF.set(bbuf);
            }
        }
    }

    /// Where the micro-kernel's rows of A come from.
    #[derive(Clone, Copy)]
    enum APairs<'a> {
        /// Packed by `pack_a`: panels of MR rows, `a_stride(kp)` pairs apart.
        Packed(&'a [u32]),
        /// In the caller's memory, rows `ks` pairs apart from `base`, for the first `full`
        /// panels; the last rows (fewer than MR) copied into `tail`, `a_stride(kp)` apart.
        InPlace {
            base: *const u32,
            ks: usize,
            full: usize,
            tail: &'a [u32],
        },
    }

    impl APairs<'_> {
        /// The first row of row panel `ip`, and the stride between its rows.
        fn panel(&self, ip: usize, kp: usize) -> (*const u32, usize) {
            match *self {
                APairs::Packed(p) => (p[ip * MR * a_stride(kp)..].as_ptr(), a_stride(kp)),
                // SAFETY (of the `add`): panel ip < full starts at row ip * MR < m, inside
                // the caller's A (checked by `gemm_bf16_pairs`).
                APairs::InPlace { base, ks, full, .. } if ip < full => {
                    (unsafe { base.add(ip * MR * ks) }, ks)
                }
                APairs::InPlace { tail, .. } => (tail.as_ptr(), a_stride(kp)),
            }
        }
    }

    /// See [`super::gemm_bf16_pairs`]: its checks done.
    pub(super) fn run_pairs(
        a: &[u32],
        ks: usize,
        m: usize,
        b: &super::PackedBBf16,
        c: CPtr,
        ldc: usize,
    ) {
        let (kp, n) = (b.k.div_ceil(2), b.n);
        let full = m / MR;
        let tail_ks = a_stride(kp);
        let mut abuf = A_BUF.take();
        // Rows past the last one in the tail panel are left as they are: the micro-kernel's
        // results for them land in rows of its edge buffer that are never copied to C.
        let tail = pairs_mut(&mut abuf, MR * tail_ks);
        for r in 0..m - full * MR {
            tail[r * tail_ks..][..kp].copy_from_slice(&a[(full * MR + r) * ks..][..kp]);
        }
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let bpanels = b.panels(0, jc / NR, nc.div_ceil(NR));
            let apanels = APairs::InPlace {
                base: a.as_ptr(),
                ks,
                full,
                tail,
            };
            // SAFETY: AVX-512F and AVX512-BF16 (checked by the caller through `available`);
            // A's rows, B's panels and C's m x n are as `macro_kernel` needs (checked by the
            // caller), and this thread is the only writer of C.
            unsafe {
                macro_kernel(
                    apanels,
                    bpanels,
                    kp,
                    m,
                    nc,
                    c.add(jc),
                    ldc,
                    false,
                    None,
                    false,
                )
            };
        }
        A_BUF.set(abuf);
    }

    /// bfloat16 roundings of 16 f32 bit patterns, each in the top half of its lane with the
    /// bottom half zero: the same rounding as `round_bf16`, as integer arithmetic (adding
    /// `0x7fff` plus the kept part's lowest bit carries into the kept part exactly when the
    /// dropped half is above the tie, or at it with the kept part odd). Not `vcvtne2ps2bf16`:
    /// that flushes subnormal inputs to zero, and the packed values should be the reference's.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round16(x: __m512i) -> __m512i {
        let one = _mm512_set1_epi32(1);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), one);
        let rounded = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        let magnitude = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
        // A NaN is truncated with its quiet bit set, as `half` does; rounding could carry it
        // into infinity.
        let quiet = _mm512_or_si512(x, _mm512_set1_epi32(0x0040_0000));
        let r = _mm512_mask_blend_epi32(nan, rounded, quiet);
        _mm512_and_si512(r, _mm512_set1_epi32(0xffff_0000_u32 as i32))
    }

    /// Up to 16 f32 values as bit patterns, zero past `src.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load16(src: &[f32]) -> __m512i {
        debug_assert!(src.len() <= 16);
        let mask = ((1u32 << src.len()) - 1) as u16;
        // SAFETY: the mask enables exactly the `src.len()` lanes backed by `src`; masked-off
        // lanes are not read (AVX-512 suppresses their faults) and come back zero.
        unsafe { _mm512_maskz_loadu_epi32(mask, src.as_ptr().cast()) }
    }

    /// Round and pack `kc` rows and `n` columns (zero-padded to `panels * NR`) of row-major `b`,
    /// leading dimension `ldb`, into pair panels: `dst[(q * kp + p) * NR + j] =
    /// (B[2p][q * NR + j], B[2p + 1][q * NR + j])` with `kp = kc.div_ceil(2)`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(in crate::cpu::gemm) unsafe fn pack_b(
        b: &[f32],
        ldb: usize,
        n: usize,
        kc: usize,
        panels: usize,
        dst: &mut [u32],
    ) {
        let kp = kc.div_ceil(2);
        assert_eq!(dst.len(), panels * kp * NR);
        let zero = _mm512_setzero_si512();
        for p in 0..kp {
            let r0 = &b[2 * p * ldb..];
            // The second row of the pair, absent in the last pair of an odd block.
            let r1 = (2 * p + 1 < kc).then(|| &b[(2 * p + 1) * ldb..]);
            for q in 0..panels {
                for h in 0..NR / 16 {
                    let col = q * NR + h * 16;
                    let width = n.saturating_sub(col).min(16);
                    let v = if width == 0 {
                        zero
                    } else {
                        let lo = round16(load16(&r0[col..col + width]));
                        let hi = r1.map_or(zero, |r1| round16(load16(&r1[col..col + width])));
                        _mm512_or_si512(_mm512_srli_epi32::<16>(lo), hi)
                    };
                    let out = &mut dst[(q * kp + p) * NR + h * 16..][..16];
                    // SAFETY: `out` holds 16 u32, one 512-bit store.
                    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
                }
            }
        }
    }

    /// Round and pack `rows` rows and `kc` columns of row-major `a` (leading dimension `lda`)
    /// into pair panels of MR rows, row-major with row stride `ks = a_stride(kp)`:
    /// `dst[(panel * MR + r) * ks + p] = (A[r'][2p], A[r'][2p+1])` with `r' = panel * MR + r`,
    /// zero past the last row and past `kp` pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(in crate::cpu::gemm) unsafe fn pack_a(
        a: &[f32],
        lda: usize,
        rows: usize,
        kc: usize,
        dst: &mut [u32],
    ) {
        let ks = a_stride(kc.div_ceil(2));
        assert_eq!(dst.len(), rows.div_ceil(MR) * MR * ks);
        for (row, out) in dst.chunks_exact_mut(ks).enumerate() {
            if row >= rows {
                out.fill(0);
                continue;
            }
            let src = &a[row * lda..][..kc];
            for (chunk, out) in src.chunks(16).zip(out.chunks_exact_mut(8)) {
                // 16 values of k become 8 pairs: each rounding shifted to its lane's bottom
                // half, then every lane truncated to 16 bits (`vpmovdw`), which leaves even k
                // in the low half of each 32-bit pair. A short last chunk loads zeros.
                let v = _mm512_srli_epi32::<16>(round16(load16(chunk)));
                // SAFETY: `out` holds 8 u32, one 256-bit store.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(v)) };
            }
            // The pairs past the last chunk, so the row's padding holds no garbage.
            out[kc.div_ceil(16) * 8..].fill(0);
        }
    }

    /// The ir and jr loops over one block: `mc` rows of packed A and the packed B panels
    /// covering `nc` columns of C at `c`. `load_c` adds what C holds (a later K block, or
    /// `accumulate`); `bias` (from C's first column here) and `relu` are set on the last K
    /// block only.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `c` points to `mc` rows of `nc` writable floats,
    /// `ldc` apart, that no other thread touches; `apanels` holds `mc.div_ceil(MR)` panels of
    /// `MR` rows of `a_stride(kp)` pairs and `bpanels` `nc.div_ceil(NR)` panels of `kp * NR`;
    /// `bias`, if any, has at least `nc` values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn macro_kernel(
        apanels: APairs,
        bpanels: &[u32],
        kp: usize,
        mc: usize,
        nc: usize,
        c: CPtr,
        ldc: usize,
        load_c: bool,
        bias: Option<&[f32]>,
        relu: bool,
    ) {
        let mut edge = [0f32; MR * NR];
        let mut edge_bias = [0f32; NR];
        // B's panels outermost: each (up to KC / 2 * NR pairs, 147 KB) is read from L3 once
        // and stays in L2 while all of the block's A panels (at most MC rows) pass it, rather
        // than the whole B block (2.4 MB at VGG's block5, K = 4608) being read again from L3
        // for each A panel: about 2% on block5_conv1 at batch 1 (Zen 4).
        for (jp, bp) in bpanels.chunks_exact(kp * NR).enumerate() {
            let j0 = jp * NR;
            let nrb = NR.min(nc - j0);
            let bias = match bias {
                Some(b) if nrb == NR => b[j0..j0 + NR].as_ptr(),
                Some(b) => {
                    edge_bias[..nrb].copy_from_slice(&b[j0..j0 + nrb]);
                    edge_bias.as_ptr()
                }
                None => std::ptr::null(),
            };
            for ip in 0..mc.div_ceil(MR) {
                let (ap, ks) = apanels.panel(ip, kp);
                let i0 = ip * MR;
                let mrb = MR.min(mc - i0);
                // SAFETY: (i0, j0) is inside the caller's mc x nc block of C. A full tile
                // writes MR x NR inside it; a ragged one goes through `edge`, a full tile with
                // row stride NR, and only its rows and columns inside C are copied in and
                // back. `ap` holds MR rows of ks >= kp pairs and `bp` kp * NR; a non-null bias
                // points to NR floats (of `b` or `edge_bias`).
                unsafe {
                    let ctile = c.0.add(i0 * ldc + j0);
                    let (a, b) = (ap, bp.as_ptr());
                    if mrb == MR && nrb == NR {
                        tile::<MR>(kp, a, ks, b, ctile, ldc, load_c, bias, relu);
                        continue;
                    }
                    if load_c {
                        for r in 0..mrb {
                            let row = edge[r * NR..].as_mut_ptr();
                            std::ptr::copy_nonoverlapping(ctile.add(r * ldc), row, nrb);
                        }
                    }
                    let e = edge.as_mut_ptr();
                    // A ragged last row panel (VGG's pixel counts end 4 rows past a multiple
                    // of 12) runs a 4- or 8-row tile rather than 12 rows of work on zeros.
                    match mrb {
                        0..=4 => tile::<4>(kp, a, ks, b, e, NR, load_c, bias, relu),
                        5..=8 => tile::<8>(kp, a, ks, b, e, NR, load_c, bias, relu),
                        _ => tile::<MR>(kp, a, ks, b, e, NR, load_c, bias, relu),
                    }
                    for r in 0..mrb {
                        let row = edge[r * NR..].as_ptr();
                        std::ptr::copy_nonoverlapping(row, ctile.add(r * ldc), nrb);
                    }
                }
            }
        }
    }

    /// 512 bits of pairs as the bfloat16 vector type `vdpbf16ps` takes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits; every pattern is a valid value of either.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// The register tile: `C[0..ROWS, 0..NR] (+)= A * B` over `kp` pairs, then the bias and
    /// ReLU. Each pair step loads two vectors of B and, per row, broadcasts one pair of A for
    /// two `vdpbf16ps`: 24 of them to 14 loads.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `a` is a packed A panel, rows of `kp` pairs `ks`
    /// apart (only the first ROWS rows are read), `b` a packed B panel of `kp * NR`; `c`
    /// points to ROWS rows of NR writable floats `ldc` apart; `bias` is null or points to NR
    /// floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const ROWS: usize>(
        kp: usize,
        a: *const u32,
        ks: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        load_c: bool,
        bias: *const f32,
        relu: bool,
    ) {
        // C is read and written only after the loop: its lines can arrive meanwhile.
        prefetch_c_tile(ROWS, NR, c, ldc);
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        // Row starts computed once: the loop then addresses each pair of A as base + p.
        // SAFETY: rows r < ROWS <= MR start inside the panel.
        let rows: [*const u32; ROWS] = std::array::from_fn(|r| unsafe { a.add(r * ks) });
        for p in 0..kp {
            // SAFETY: p < kp: the B panel holds NR pairs at p * NR, each A row kp pairs.
            unsafe {
                let b0 = bh(_mm512_loadu_si512(b.add(p * NR).cast()));
                let b1 = bh(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = bh(_mm512_set1_epi32(*rows[r].add(p) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], b0, av);
                    acc[1] = _mm512_dpbf16_ps(acc[1], b1, av);
                }
            }
        }
        let zero = _mm512_setzero_ps();
        for (r, acc) in acc.iter().enumerate() {
            for (h, &v) in acc.iter().enumerate() {
                // SAFETY: row r < ROWS holds NR = 32 writable floats; a non-null bias 32.
                unsafe {
                    let dst = c.add(r * ldc + h * 16);
                    let mut v = v;
                    if load_c {
                        v = _mm512_add_ps(v, _mm512_loadu_ps(dst));
                    }
                    if !bias.is_null() {
                        v = _mm512_add_ps(v, _mm512_loadu_ps(bias.add(h * 16)));
                    }
                    if relu {
                        // max(0, v) returns v when v is NaN (the second operand), as the
                        // reference does.
                        v = _mm512_max_ps(zero, v);
                    }
                    _mm512_storeu_ps(dst, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reference against f64 sums, the fast path against the reference (within a
    //! tolerance) and against a scalar emulation of `vdpbf16ps` (bit for bit).
    //!
    //! Tolerance of fast against reference, per element: `1e-5 * S + 1e-30`, where `S` is
    //! `sum_k |a_k b_k|` over the rounded operands, plus `|bias|`, plus `|C|` before an
    //! accumulating product. Both sum the same exact products (a bfloat16 product has 16
    //! significant bits) in f32 and differ only in the order of the additions; each rounds by
    //! at most `2^-24` of its partial sum, itself at most `S`. That bounds each result within
    //! `k * 2^-24 * S` of the exact sum, but only in the worst case: with terms of random sign,
    //! as here, partial sums stay near `sqrt(p) * S / k` and the errors total about
    //! `2^-24 * S` (the largest difference seen, printed by `fast_matches_the_reference`, is
    //! 1.8e-7 S); with terms of one sign (ReLU activations times positive weights) the
    //! roundings walk randomly to about `sqrt(k) * 2^-24 * S`, 4e-6 S at VGG's largest K of
    //! 4608. `1e-5` covers both, while a wrong, missing or doubled product is off by a whole
    //! `|a_k b_k|`, about `S / k` (2e-4 S at k = 4608); the emulation test catches any smaller
    //! slip bit for bit. The data are uniform in [-1, 1], so no product or partial sum comes
    //! near 2^-126, where the fast path's flushing would cost up to `2^-126` a step (see the
    //! module docs).

    use super::*;
    use crate::cpu::gemm::bf16_cases::{Case, epilogues};
    use crate::rng::Rng;

    /// Whether a fast-path test must be skipped here, with the line saying so.
    fn skip(test: &str) -> bool {
        if available() {
            return false;
        }
        eprintln!("SKIP {test}: this CPU lacks avx512bf16 (or KEEL_ISA caps it below avx512)");
        true
    }

    /// The bfloat16 neighbours of a finite `x` (toward zero and away from it) and which one
    /// is nearest, ties to even: rounding defined by distance, independently of bit tricks.
    fn nearest_by_distance(x: f32) -> u16 {
        let down = (x.to_bits() >> 16) as u16;
        let up = down + 1;
        let value = |h: u16| {
            // Past the largest finite value the next pattern is infinity, which IEEE rounding
            // treats as 2^128 when deciding.
            if h & 0x7fff == 0x7f80 {
                2f64.powi(128).copysign(x as f64)
            } else {
                bf16_to_f32(h) as f64
            }
        };
        let (dd, du) = ((x as f64 - value(down)).abs(), (x as f64 - value(up)).abs());
        if dd < du || (dd == du && down & 1 == 0) {
            down
        } else {
            up
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let cases: [(u32, u16); 18] = [
            (0x3f80_0000, 0x3f80), // 1
            (0x3f80_7fff, 0x3f80), // just below the tie
            (0x3f80_8000, 0x3f80), // tie, kept part even: down
            (0x3f80_8001, 0x3f81), // just above the tie
            (0x3f81_8000, 0x3f82), // tie, kept part odd: up
            (0xbf81_8000, 0xbf82), // the same, negative
            (0x3fff_8000, 0x4000), // a tie that carries into the exponent
            (0x7f7f_ffff, 0x7f80), // the largest f32 overflows to infinity
            (0x7f7f_7fff, 0x7f7f), // ... but not just below bfloat16's max + half an ulp
            (0x7f80_0000, 0x7f80), // infinities stay
            (0xff80_0000, 0xff80),
            (0x0000_0000, 0x0000), // zeros keep their sign
            (0x8000_0000, 0x8000),
            (0x0000_8000, 0x0000), // subnormal tie, even: down to zero
            (0x0001_8000, 0x0002), // subnormal tie, odd: up
            (0x0000_8001, 0x0001), // subnormal above the tie
            (0x007f_ffff, 0x0080), // largest subnormal rounds up to the smallest normal
            (0x8000_0001, 0x8000), // a tiny negative becomes -0
        ];
        for (x, want) in cases {
            let got = round_bf16(f32::from_bits(x));
            assert_eq!(
                got, want,
                "round_bf16({x:#010x}) = {got:#06x}, want {want:#06x}"
            );
        }
        // NaNs stay NaN with their sign and come back quiet, even one whose payload lives
        // only in the dropped half (truncating it alone would give infinity).
        for (x, want) in [
            (0x7fc0_0000, 0x7fc0),
            (0x7f80_0001, 0x7fc0),
            (0xff80_0001, 0xffc0),
            (0x7fbf_ffff, 0x7fff),
            (0xffff_ffff, 0xffff),
        ] {
            let got = round_bf16(f32::from_bits(x));
            assert_eq!(got, want, "round_bf16({x:#010x})");
            assert!(bf16_to_f32(got).is_nan());
        }
        // Random bit patterns of every class against the nearest-value definition.
        let mut rng = Rng::new(1);
        for _ in 0..200_000 {
            let x = f32::from_bits(rng.next_u64() as u32);
            if x.is_finite() {
                assert_eq!(
                    round_bf16(x),
                    nearest_by_distance(x),
                    "{:#010x}",
                    x.to_bits()
                );
            } else {
                assert_eq!(
                    round_bf16(x) == 0x7f80 | (x.to_bits() >> 16) as u16 & 0x8000,
                    x.is_infinite()
                );
            }
        }
    }

    #[test]
    fn every_bf16_converts_exactly_and_back() {
        for h in 0..=u16::MAX {
            let x = bf16_to_f32(h);
            assert_eq!(x.to_bits(), u32::from(h) << 16);
            if x.is_nan() {
                assert!(bf16_to_f32(round_bf16(x)).is_nan());
            } else {
                assert_eq!(round_bf16(x), h, "{h:#06x}");
            }
        }
    }

    /// Random f32 bit patterns of every class, a quarter of them NaN, infinity, subnormal or
    /// zero; the rest uniform in [-1, 1].
    fn odd_values(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| match rng.below(16) {
                0 => f32::from_bits(rng.next_u64() as u32),
                1 => f32::from_bits(0x7f80_0000 | rng.below(1 << 23) as u32),
                2 => f32::from_bits(rng.below(1 << 23) as u32 | (rng.below(2) as u32) << 31),
                3 => f32::from_bits(0x7f7f_8000 | rng.below(0x8000) as u32),
                _ => rng.uniform(-1.0, 1.0),
            })
            .collect()
    }

    fn pair_of(lo: f32, hi: f32) -> u32 {
        u32::from(round_bf16(lo)) | u32::from(round_bf16(hi)) << 16
    }

    /// The packed B holds exactly `round_bf16` of each value in the documented layout: pairs
    /// of rows, panels of NR columns, K blocks of KC, zero past the last row and column.
    #[test]
    fn packed_b_layout_and_rounding() {
        if skip("packed_b_layout_and_rounding") {
            return;
        }
        let mut rng = Rng::new(2);
        for (k, n, ldb) in [(1, 1, 1), (7, 45, 50), (KC + 37, 70, 70), (2 * KC, 33, 40)] {
            let b = odd_values(&mut rng, k * ldb);
            let packed = PackedBBf16::new(&b, ldb, k, n);
            assert_eq!((packed.k(), packed.n()), (k, n));
            let panels = n.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                for q in 0..panels {
                    let panel = packed.panels(pc, q, 1);
                    assert_eq!(panel.len(), kc.div_ceil(2) * NR);
                    for p in 0..kc.div_ceil(2) {
                        for jj in 0..NR {
                            let j = q * NR + jj;
                            let at = |row: usize| {
                                if row < kc && j < n {
                                    b[(pc + row) * ldb + j]
                                } else {
                                    0.0
                                }
                            };
                            let want = pair_of(at(2 * p), at(2 * p + 1));
                            assert_eq!(panel[p * NR + jj], want, "k={k} n={n} pc={pc} p={p} j={j}");
                        }
                    }
                }
            }
        }
    }

    /// Packed A likewise: pairs along k, rows of MR-row panels `a_stride` apart, zero past
    /// the last row and k.
    #[test]
    fn packed_a_layout_and_rounding() {
        if skip("packed_a_layout_and_rounding") {
            return;
        }
        let mut rng = Rng::new(3);
        for (rows, kc, lda) in [
            (1usize, 1usize, 1usize),
            (17, 37, 40),
            (24, 32, 32),
            (5, 64, 70),
        ] {
            let a = odd_values(&mut rng, rows * lda);
            let ks = x86::a_stride(kc.div_ceil(2));
            let mut dst = vec![0xdead_beef; rows.div_ceil(MR) * MR * ks];
            // SAFETY: `available` checked AVX-512F.
            unsafe { x86::pack_a(&a, lda, rows, kc, &mut dst) };
            for (i, &got) in dst.iter().enumerate() {
                let (row, p) = (i / ks, i % ks);
                let at = |col: usize| {
                    if row < rows && col < kc {
                        a[row * lda + col]
                    } else {
                        0.0
                    }
                };
                assert_eq!(got, pair_of(at(2 * p), at(2 * p + 1)), "row {row} pair {p}");
            }
        }
    }

    impl Case {
        fn fast(&self, ep: Epilogue, parallel: bool) -> Vec<f32> {
            let mut c = self.c_start(ep);
            gemm_bf16(
                self.m, self.n, self.k, &self.a, self.lda, &self.b, self.ldb, &mut c, self.ldc, ep,
                parallel,
            );
            c
        }
    }

    /// The reference is the f32 sum of exact products: within the summation bound
    /// `(k + 2) * 2^-24 * S` of the f64 sum of the same rounded operands.
    #[test]
    fn reference_matches_f64_on_rounded_operands() {
        for (s, &(m, n, k)) in [(1, 1, 1), (3, 17, 63), (17, 5, 300), (9, 40, 1100)]
            .iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, 2, 10 + s as u64);
            let sums = case.abs_sums();
            for ep in epilogues(&case.bias) {
                let got = case.reference(ep);
                for i in 0..m {
                    for j in 0..n {
                        let mut want = 0f64;
                        for p in 0..k {
                            want += to_bf16_f32(case.a[i * case.lda + p]) as f64
                                * to_bf16_f32(case.b[p * case.ldb + j]) as f64;
                        }
                        if ep.accumulate {
                            want += case.c0[i * case.ldc + j] as f64;
                        }
                        want += ep.bias.map_or(0.0, |b| b[j] as f64);
                        if ep.relu && want < 0.0 {
                            want = 0.0;
                        }
                        let tol = (k + 2) as f64 * 2f64.powi(-24) * case.scale(&sums, ep, i, j);
                        let g = got[i * case.ldc + j] as f64;
                        assert!(
                            (g - want).abs() <= tol + 1e-30,
                            "{m}x{n}x{k} {ep:?}: C[{i},{j}] = {g}, want {want}"
                        );
                    }
                }
                case.assert_padding_untouched(&got, "reference");
            }
        }
    }

    /// The operands really are rounded: 1 + 2^-9 is not a bfloat16 (7 bits of fraction) and
    /// rounds to 1, so the product is exactly 1 where f32 would give 1 + 2^-9.
    #[test]
    fn reference_rounds_its_operands() {
        let x = 1.0 + 2f32.powi(-9);
        let mut c = [0f32];
        gemm_bf16_reference(1, 1, 1, &[x], 1, &[1.0], 1, &mut c, 1, Epilogue::NONE);
        assert_eq!(c[0], 1.0);
        // 1 + 3 * 2^-9 is a tie between 1 + 2^-8 and 1 + 2^-7: to even, the latter.
        let y = 1.0 + 3.0 * 2f32.powi(-9);
        gemm_bf16_reference(1, 1, 1, &[y], 1, &[1.0], 1, &mut c, 1, Epilogue::NONE);
        assert_eq!(c[0], 1.0 + 2f32.powi(-7));
    }

    const DIMS: [usize; 6] = [1, 3, 17, 63, 100, 129];

    /// Larger and special shapes: several K blocks with an odd last one, a column split when
    /// parallel (small m, wide n), N past NC, M past MC.
    const BIG: [(usize, usize, usize); 6] = [
        (197, 131, 301),
        (60, 70, KC + 13),
        (19, 37, 2 * KC + 1),
        (20, 300, 700),
        (13, 4200, 37),
        (290, 40, 20),
    ];

    fn all_shapes() -> Vec<(usize, usize, usize)> {
        let mut shapes = Vec::new();
        for m in DIMS {
            for n in DIMS {
                for k in DIMS {
                    shapes.push((m, n, k));
                }
            }
        }
        shapes.extend(BIG);
        shapes
    }

    #[test]
    fn fast_matches_the_reference() {
        if skip("fast_matches_the_reference") {
            return;
        }
        let mut worst = 0f64;
        for (s, (m, n, k)) in all_shapes().into_iter().enumerate() {
            let case = Case::new(m, n, k, s % 3, 1000 + s as u64);
            for ep in epilogues(&case.bias) {
                let want = case.reference(ep);
                for parallel in [false, true] {
                    let got = case.fast(ep, parallel);
                    let what = format!("{m}x{n}x{k} parallel={parallel} {ep:?}");
                    worst = worst.max(case.check(&got, &want, ep, &what));
                }
            }
        }
        eprintln!("fast vs reference: largest |error| / S = {worst:.3e} (tolerance 1e-5)");
    }

    /// The fast path's exact sequence of operations, in scalar f32: per K block a sum from
    /// zero over pairs, each pair as two fused multiply-adds (odd k first) with subnormal
    /// inputs read as zero and subnormal results flushed; each block's sum then added to C
    /// (a plain f32 addition), then the bias and ReLU.
    fn emulate(case: &Case, ep: Epilogue) -> Vec<f32> {
        let flush = |x: f32| {
            if x.is_subnormal() {
                0f32.copysign(x)
            } else {
                x
            }
        };
        let a = |i: usize, p: usize| flush(to_bf16_f32(case.a[i * case.lda + p]));
        let b = |p: usize, j: usize| flush(to_bf16_f32(case.b[p * case.ldb + j]));
        let mut c = case.c_start(ep);
        for i in 0..case.m {
            for j in 0..case.n {
                let at = i * case.ldc + j;
                let mut v = c[at];
                for pc in (0..case.k).step_by(KC) {
                    let end = (pc + KC).min(case.k);
                    let mut s = 0f32;
                    for p in (pc..end).step_by(2) {
                        let (ah, bh) = if p + 1 < end {
                            (a(i, p + 1), b(p + 1, j))
                        } else {
                            (0.0, 0.0)
                        };
                        s = flush(ah.mul_add(bh, s));
                        s = flush(a(i, p).mul_add(b(p, j), s));
                    }
                    v = if pc > 0 || ep.accumulate { s + v } else { s };
                }
                if let Some(bias) = ep.bias {
                    v += bias[j];
                }
                if ep.relu && v < 0.0 {
                    v = 0.0;
                }
                c[at] = v;
            }
        }
        c
    }

    /// Bit for bit against [`emulate`], on data with subnormal values sprinkled in (which
    /// the fast path reads as zero) and k spanning several K blocks with an odd last one.
    #[test]
    fn fast_is_bit_exact_against_an_emulation_of_vdpbf16ps() {
        if skip("fast_is_bit_exact_against_an_emulation_of_vdpbf16ps") {
            return;
        }
        let mut rng = Rng::new(4);
        for (s, &(m, n, k)) in [
            (5, 3, 1),
            (13, 70, 9),
            (37, 45, KC + 13),
            (100, 33, 513),
            (7, 40, 2 * KC + 3),
        ]
        .iter()
        .enumerate()
        {
            let mut case = Case::new(m, n, k, 1, 2000 + s as u64);
            for v in case.a.iter_mut().chain(case.b.iter_mut()) {
                if rng.below(30) == 0 {
                    *v = f32::from_bits(1 + rng.below(0x007f_ffff) as u32);
                }
            }
            for ep in epilogues(&case.bias) {
                let want = emulate(&case, ep);
                let got = case.fast(ep, true);
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (got[i * case.ldc + j], want[i * case.ldc + j]);
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{m}x{n}x{k} {ep:?}: C[{i},{j}] = {g}, emulated {w}"
                        );
                    }
                }
            }
        }
    }

    /// The documented differences at the bottom of the range: a subnormal bfloat16 operand
    /// counts as zero and a subnormal result is flushed, where the reference keeps both; an
    /// f32 subnormal that rounds up to the smallest normal bfloat16 counts in both.
    #[test]
    fn fast_path_reads_subnormals_as_zero() {
        if skip("fast_path_reads_subnormals_as_zero") {
            return;
        }
        let product = |x: f32, y: f32, fast: bool| {
            let mut c = [f32::NAN];
            if fast {
                gemm_bf16(1, 1, 1, &[x], 1, &[y], 1, &mut c, 1, Epilogue::NONE, false);
            } else {
                gemm_bf16_reference(1, 1, 1, &[x], 1, &[y], 1, &mut c, 1, Epilogue::NONE);
            }
            c[0]
        };
        let sub = 2f32.powi(-127); // a bfloat16 subnormal (0x0040)
        let big = 2f32.powi(100);
        assert_eq!(product(sub, big, false), 2f32.powi(-27));
        assert_eq!(product(sub, big, true), 0.0);
        // 2^-63 * 2^-64 = 2^-127: normal operands, subnormal result.
        let (x, y) = (2f32.powi(-63), 2f32.powi(-64));
        assert_eq!(product(x, y, false), 2f32.powi(-127));
        assert_eq!(product(x, y, true), 0.0);
        let almost = f32::from_bits(0x007f_ffff);
        assert_eq!(product(almost, 1.0, false), 2f32.powi(-126));
        assert_eq!(product(almost, 1.0, true), 2f32.powi(-126));
    }

    /// A NaN or infinity in A or B makes the same elements of C non-finite as in the
    /// reference (a NaN in A row i: all of row i NaN, never a number), through bias and ReLU.
    #[test]
    fn nan_and_infinity_propagate() {
        if skip("nan_and_infinity_propagate") {
            return;
        }
        let (m, n, k) = (20, 40, 30);
        let clean = Case::new(m, n, k, 0, 7);
        for (what, row, col, value) in [
            ("NaN in A", Some((5, 11)), None, f32::NAN),
            ("NaN in B", None, Some((7, 3)), f32::NAN),
            ("infinity in A", Some((2, 0)), None, f32::INFINITY),
            ("-infinity in B", None, Some((29, 39)), f32::NEG_INFINITY),
        ] {
            let mut case = Case::new(m, n, k, 0, 7);
            if let Some((i, p)) = row {
                case.a[i * case.lda + p] = value;
            }
            if let Some((p, j)) = col {
                case.b[p * case.ldb + j] = value;
            }
            // ReLU would turn a -infinity into 0; it is on only for the NaNs.
            let ep = Epilogue::new(Some(&clean.bias), value.is_nan());
            let want = case.reference(ep);
            for parallel in [false, true] {
                let got = case.fast(ep, parallel);
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (got[i * case.ldc + j], want[i * case.ldc + j]);
                        let hit =
                            row.is_some_and(|(r, _)| r == i) || col.is_some_and(|(_, c)| c == j);
                        assert_eq!(!w.is_finite(), hit, "{what}: reference C[{i},{j}] = {w}");
                        assert!(
                            g.is_nan() == w.is_nan()
                                && (w.is_nan() || w.is_finite() == g.is_finite()),
                            "{what}: C[{i},{j}] = {g}, reference {w}"
                        );
                        if w.is_infinite() {
                            assert_eq!(g, w, "{what}: C[{i},{j}]");
                        }
                        if value.is_nan() && row.is_some_and(|(r, _)| r == i) {
                            assert!(g.is_nan(), "{what}: C[{i},{j}] = {g}");
                        }
                    }
                }
            }
        }
    }

    /// Each element is summed by one task in a fixed order, so 1, 2 or 3 threads give the same
    /// bits, whether the work splits by rows or (small M) by columns.
    #[test]
    fn fast_is_identical_across_thread_counts() {
        if skip("fast_is_identical_across_thread_counts") {
            return;
        }
        for (s, &(m, n, k)) in [(300, 64, 700), (20, 300, 700), (37, 33, KC + 13)]
            .iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, 1, 3000 + s as u64);
            let ep = Epilogue::new(Some(&case.bias), true);
            let runs: Vec<Vec<u32>> = [1, 2, 3]
                .into_iter()
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool");
                    let c = pool.install(|| case.fast(ep, true));
                    c.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(
                runs[1] == runs[0] && runs[2] == runs[0],
                "{m}x{n}x{k}: results differ between thread counts"
            );
        }
    }

    /// B packed once gives the same bits as B packed during the product.
    #[test]
    fn packed_b_gives_the_same_bits() {
        if skip("packed_b_gives_the_same_bits") {
            return;
        }
        for (s, &(m, n, k)) in [
            (1, 1, 1),
            (17, 63, 100),
            (20, 300, 700),
            (13, 4200, 37),
            (97, 131, KC + 13),
        ]
        .iter()
        .enumerate()
        {
            let case = Case::new(m, n, k, 2, 4000 + s as u64);
            let packed = PackedBBf16::new(&case.b, case.ldb, k, n);
            assert!(packed.bytes() >= k.div_ceil(2) * n * 4);
            for ep in epilogues(&case.bias) {
                for parallel in [false, true] {
                    let want = case.fast(ep, parallel);
                    let mut got = case.c_start(ep);
                    gemm_bf16_packed(
                        m, &case.a, case.lda, &packed, &mut got, case.ldc, ep, parallel,
                    );
                    let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{m}x{n}x{k} parallel={parallel} {ep:?}"
                    );
                }
            }
        }
    }

    /// An empty sum is the epilogue of zero (added to C when accumulating); an empty C is
    /// left alone.
    #[test]
    fn empty_shapes() {
        let bias = [1.0, -2.0, 3.0];
        let fast = available();
        for ep in [
            Epilogue::new(Some(&bias), true),
            Epilogue {
                bias: Some(&bias),
                relu: false,
                accumulate: true,
            },
        ] {
            let mut want = vec![0.5f32; 6];
            gemm_bf16_reference(2, 3, 0, &[], 0, &[], 3, &mut want, 3, ep);
            let expect: Vec<f32> = (0..6)
                .map(|i| ep.apply(if ep.accumulate { 0.5 } else { 0.0 }, i % 3))
                .collect();
            assert_eq!(want, expect);
            if fast {
                let mut got = vec![0.5f32; 6];
                gemm_bf16(2, 3, 0, &[], 0, &[], 3, &mut got, 3, ep, true);
                assert_eq!(got, want);
            }
        }
        if fast {
            let mut c = [7f32; 4];
            gemm_bf16(
                0,
                4,
                5,
                &[],
                5,
                &[1.0; 20],
                4,
                &mut c,
                4,
                Epilogue::NONE,
                true,
            );
            gemm_bf16(
                2,
                0,
                5,
                &[1.0; 10],
                5,
                &[],
                0,
                &mut c,
                2,
                Epilogue::NONE,
                true,
            );
            assert_eq!(c, [7.0; 4]);
        } else {
            eprintln!(
                "SKIP empty_shapes (fast path): this CPU lacks avx512bf16 (or KEEL_ISA caps it \
                 below avx512)"
            );
        }
    }

    #[test]
    #[should_panic(expected = "cannot hold")]
    fn short_operands_panic() {
        let mut c = [0f32; 4];
        gemm_bf16_reference(
            2,
            2,
            3,
            &[1.0; 5],
            3,
            &[1.0; 6],
            2,
            &mut c,
            2,
            Epilogue::NONE,
        );
    }

    /// Not a test: GFLOP/s of [`gemm_bf16`] against the f32 GEMM's best kernel, on 1 and 2
    /// threads, median of 5 runs each. Run by hand on an idle machine:
    /// `cargo test --release --lib gemm::bf16::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand"]
    fn speed_against_f32() {
        if skip("speed_against_f32") {
            return;
        }
        for (m, n, k) in [(1024, 1024, 1024), (3136, 256, 1152)] {
            let mut rng = Rng::new(5);
            let a = rng.uniform_vec(m * k, -1.0, 1.0);
            let b = rng.uniform_vec(k * n, -1.0, 1.0);
            let mut c = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                let mut time = |f: &mut dyn FnMut(&mut [f32])| {
                    f(&mut c); // warm-up: buffers, caches, pool threads
                    let mut runs: Vec<f64> = (0..5)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            f(&mut c);
                            t.elapsed().as_secs_f64()
                        })
                        .collect();
                    runs.sort_by(f64::total_cmp);
                    flops / runs[2] / 1e9
                };
                let (bf, f32_) = pool.install(|| {
                    let bf =
                        time(&mut |c| gemm_bf16(m, n, k, &a, k, &b, n, c, n, Epilogue::NONE, true));
                    let f = time(&mut |c| {
                        crate::cpu::gemm::gemm(m, n, k, &a, k, &b, n, c, n, Epilogue::NONE)
                    });
                    (bf, f)
                });
                eprintln!(
                    "{m}x{n}x{k} on {threads}: bf16 {bf:.1}, f32 {f32_:.1} GFLOP/s, ratio {:.2}",
                    bf / f32_
                );
            }
        }
    }
}
