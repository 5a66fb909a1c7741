//! Micro-kernels: the innermost `MR x NR` tile of C, held in registers for a whole K block.
//!
//! Each step of `k` loads one packed row of B (`NR` values, a few vector registers), broadcasts
//! each of the `MR` packed A values in turn and does `MR * NR / lanes` fused multiply-adds into
//! the accumulators. `MR` and `NR` are chosen so the accumulators plus the B registers fill the
//! register file without spilling: 12 x 32 uses 24 of AVX-512's 32 registers, 6 x 16 uses 12 of
//! AVX2's 16. That ratio of FMAs to loads is what lets the kernel run at the FMA units' speed.

use crate::cpu::isa::Isa;

/// One register-blocked tile kernel. Implementations differ only in ISA and tile shape.
pub trait Micro: Sync {
    const MR: usize;
    const NR: usize;
    const ISA: Isa;

    /// `C[0..MR, 0..NR] (+)= A * B_panel`, then `+ bias` and ReLU if asked. With `accumulate`
    /// the accumulators start from C, so each element is one multiply-add chain in k order
    /// across K blocks: the block sizes (and so the tuner) never change a result's bits. A is a packed
    /// panel (`lda == 0`, element `(r, p)` at `p * MR + r`) or `MR` rows of a row-major matrix
    /// `lda` apart (element `(r, p)` at `r * lda + p`), which skips packing when N is narrow.
    ///
    /// # Safety
    /// `a` holds the `kc * MR` values of A in the layout `lda` says and `b` holds `kc * NR`; `c` points to `MR` rows of `NR`
    /// writable floats with row stride `ldc`; `bias` is null or points to `NR` floats; the
    /// CPU supports `Self::ISA` (checked by the caller through [`Isa::available`]).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    );

    /// [`Micro::tile`] for a ragged panel where only the first `rows` (< MR) rows matter, into
    /// a full `MR x NR` scratch tile `c`. Kernels may compute only those rows; by default the
    /// whole tile is computed.
    ///
    /// # Safety
    /// As for [`Micro::tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_rows(
        rows: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    ) {
        let _ = rows;
        // SAFETY: forwarded to the caller.
        unsafe { Self::tile(kc, a, lda, b, c, ldc, accumulate, bias, relu) }
    }

    /// Whether the driver asks L2 for the next A micro-panel read in place while the tiles of
    /// this one run (`driver::prefetch_rows`). Measured per kernel: it made the AVX2 kernel
    /// 3-4% faster over VGG16's GEMM shapes on a Zen 3 (issue 14's fourth session), and on a
    /// Xeon (family 6 model 167, ninth session) 15-19% faster where K is one block
    /// (50176x64x576, 12544x128x576) and 8% slower on 12544x128x1152; the AVX-512 kernel ran
    /// without it as fast or faster on every VGG16 shape there, 12544x128x1152 25% and
    /// 3136x256x2304 13% on one thread. Zen 4's AVX-512 kernel has not been measured with it.
    const FETCHES_NEXT_A: bool = true;

    /// Whether [`Micro::tile_packing_b`] packs B's panel inside its k loop. When it does, the
    /// driver packs a block's whole panels during the block's first row of tiles instead of
    /// in a pass of its own.
    const PACKS_B_IN_TILE: bool = false;

    /// [`Micro::tile`] with B's panel read from row-major B in place (`NR` columns of `kc`
    /// rows, `ldb` apart) and stored packed to `packed` on the way, for the tiles after it.
    /// The default packs first, then runs [`Micro::tile`].
    ///
    /// # Safety
    /// As for [`Micro::tile`], with `b` holding `kc` rows of `NR` readable floats `ldb` apart
    /// and `packed` `kc * NR` writable floats that overlap nothing else here.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_packing_b(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        packed: *mut f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    ) {
        // SAFETY: the caller guarantees the sizes above; `packed` overlaps nothing else.
        unsafe {
            for p in 0..kc {
                std::ptr::copy_nonoverlapping(b.add(p * ldb), packed.add(p * Self::NR), Self::NR);
            }
            Self::tile(kc, a, lda, packed, c, ldc, accumulate, bias, relu)
        }
    }

    /// [`Micro::tile`] that also asks L2 for the next packed B panel (`kc * NR` floats at
    /// `next`), for the first row of tiles over B blocks read from memory
    /// ([`super::driver`]'s `BSource::Streamed`). The default asks for the whole panel first,
    /// then runs the tile; a kernel that spreads the requests over its k loop keeps them from
    /// stalling the FMAs while the lines arrive.
    ///
    /// # Safety
    /// As for [`Micro::tile`]; `next` is only prefetched, never read, and may point anywhere.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_fetching_b(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        next: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    ) {
        super::driver::prefetch_panel(next, kc * Self::NR);
        // SAFETY: forwarded to the caller.
        unsafe { Self::tile(kc, a, lda, b, c, ldc, accumulate, bias, relu) }
    }
}

/// Plain Rust tile of 4 x 16: fixed-size arrays the compiler keeps in vector registers of
/// whatever width the build target has. The `packed` rung of the ladder and the fallback on
/// CPUs without AVX2.
pub struct Portable;

impl Micro for Portable {
    const MR: usize = 4;
    const NR: usize = 16;
    const ISA: Isa = Isa::Portable;

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    ) {
        // SAFETY: the caller guarantees the sizes documented on `Micro::tile`.
        let b = unsafe { std::slice::from_raw_parts(b, kc * 16) };
        // With `accumulate`, the sum continues from C's values: one chain per element in k
        // order, so how K is cut into blocks never changes a bit of the result.
        let mut acc = [[0f32; 16]; 4];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r < MR of the caller's tile holds NR readable floats.
                let row = unsafe { std::slice::from_raw_parts(c.add(r * ldc), 16) };
                acc.copy_from_slice(row);
            }
        }
        for (p, bp) in b.chunks_exact(16).enumerate() {
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: (r, p) is inside A in the layout `lda` says.
                let av = unsafe { *a.add(if lda == 0 { p * 4 + r } else { r * lda + p }) };
                for (c, &b) in acc.iter_mut().zip(bp) {
                    *c += av * b;
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row r < MR of the caller's tile holds NR writable floats.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), 16) };
            for j in 0..16 {
                let mut v = acc[j];
                if !bias.is_null() {
                    // SAFETY: a non-null bias points to NR floats.
                    v += unsafe { *bias.add(j) };
                }
                if relu && v < 0.0 {
                    v = 0.0;
                }
                row[j] = v;
            }
        }
    }
}
