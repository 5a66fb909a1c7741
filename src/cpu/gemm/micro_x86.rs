//! The x86-64 micro-kernels, AVX2+FMA (6 x 16) and AVX-512F (12 x 32), in intrinsics.
//!
//! The accumulators are arrays of registers indexed by constants; after unrolling LLVM keeps
//! every one of them in a register (checked in the disassembly: no stack traffic in the loop).
//! The A values are broadcast straight from the packed panel (`vbroadcastss` folds into the
//! FMA's memory operand), so a step of `k` costs `NR / lanes` loads, `MR` broadcasts and
//! `MR * NR / lanes` FMAs.

use std::arch::x86_64::*;
use std::ptr::{null, null_mut};

use super::micro::Micro;
use crate::cpu::isa::Isa;

/// Element `(r, p)` of the A operand: packed (`p * MR + r`) or row-major rows `lda` apart.
///
/// # Safety
/// The element must be inside the caller's A operand.
#[inline(always)]
unsafe fn a_at<const STRIDED: bool, const MR: usize>(
    a: *const f32,
    lda: usize,
    p: usize,
    r: usize,
) -> *const f32 {
    // SAFETY: forwarded to the caller.
    unsafe {
        if STRIDED {
            a.add(r * lda + p)
        } else {
            a.add(p * MR + r)
        }
    }
}

/// Asks for the cache lines of a `rows x cols` tile of C, for writing, before a k loop that
/// only stores to it at the end. Without it the stores of a short loop stall on their lines:
/// at K = 27 the loop lasts about 700 cycles and a miss to memory half of that, and the
/// 50176x64x27 product ran 15-20% faster with it (Zen 4, one thread). With a long loop it
/// costs a few instructions per tile.
#[inline(always)]
pub(super) fn prefetch_c_tile(rows: usize, cols: usize, c: *mut f32, ldc: usize) {
    for r in 0..rows {
        for col in (0..cols).step_by(16) {
            // `wrapping_add`: the address is only a hint and is never dereferenced.
            crate::cpu::prefetch::l1_for_write(c.wrapping_add(r * ldc + col));
        }
    }
}

/// How many rows ahead a tile that packs B asks for B's rows, into L2 (both kernels; the
/// AVX-512 one takes the Zen 3 value untuned). Rows `ldb` apart fall
/// into a few L1 sets only (1 KB apart: 4 of 64), so lines asked into L1 were evicted before
/// use; into L2, 32 rows ahead measured best on a Zen 3 (16 and 64 a few percent slower, and
/// 8 or 16 into L1 no faster than packing first).
const PACK_AHEAD: usize = 32;

/// Steps of k per trip of the AVX2 tile's loop. With one step per trip, LLVM recomputed the
/// row addresses of A read in place every step (8 integer and branch instructions beside 12
/// FMAs), and 1024^3 ran at 82% of the two 256-bit FMA pipes' peak on a Xeon (family 6 model
/// 167, issue 14's ninth session, `KEEL_ISA=avx2`); with two steps, A is addressed from one
/// register per row (6 such instructions per 24 FMAs) and 1024^3 ran at 91%, VGG16's GEMM
/// shapes 9-17% faster (K = 27: 2%). Four spill registers: 12 accumulators, 2 B rows and the broadcast leave one of
/// the 16 ymm registers free, and LLVM hoists the next steps' loads.
const UNROLL_AVX2: usize = 2;

pub struct Avx2;

impl Micro for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    const ISA: Isa = Isa::Avx2;

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
        // SAFETY: the caller checked AVX2 and FMA and the buffer sizes (see `Micro::tile`).
        unsafe {
            avx2::<false, false>(
                kc,
                a,
                lda,
                b,
                16,
                null_mut(),
                null(),
                c,
                ldc,
                accumulate,
                bias,
                relu,
            )
        }
    }

    const PACKS_B_IN_TILE: bool = true;

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
        // SAFETY: the caller checked AVX2 and FMA and the buffer sizes (see
        // `Micro::tile_packing_b`).
        unsafe {
            avx2::<true, false>(
                kc,
                a,
                lda,
                b,
                ldb,
                packed,
                null(),
                c,
                ldc,
                accumulate,
                bias,
                relu,
            )
        }
    }

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
        // SAFETY: the caller checked AVX2 and FMA and the buffer sizes (see `Micro::tile`);
        // `next` is only prefetched, never read.
        unsafe {
            avx2::<false, true>(
                kc,
                a,
                lda,
                b,
                16,
                null_mut(),
                next,
                c,
                ldc,
                accumulate,
                bias,
                relu,
            )
        }
    }
}

/// [`tile_avx2`] for A packed (`lda == 0`) or in place: the one place that picks the variant.
///
/// # Safety
/// As for [`Micro::tile`], and with `PACK_B` as for [`Micro::tile_packing_b`] (B in place,
/// rows `ldb` apart, packed into `packed`); without, `ldb` is 16 and `packed` unused. With
/// `FETCH`, as for [`Micro::tile_fetching_b`] (`next` only prefetched); without, `next` is
/// unused.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn avx2<const PACK_B: bool, const FETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    packed: *mut f32,
    next: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    relu: bool,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        if lda == 0 {
            tile_avx2::<false, PACK_B, FETCH>(
                kc, a, 0, b, ldb, packed, next, c, ldc, accumulate, bias, relu,
            )
        } else {
            tile_avx2::<true, PACK_B, FETCH>(
                kc, a, lda, b, ldb, packed, next, c, ldc, accumulate, bias, relu,
            )
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const STRIDED: bool, const PACK_B: bool, const FETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    packed: *mut f32,
    next: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    relu: bool,
) {
    const MR: usize = 6;
    // With `accumulate`, the sum continues from C's values: one FMA chain per element in k
    // order, so how K is cut into blocks never changes a bit of the result.
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if !accumulate {
        prefetch_c_tile(MR, 16, c, ldc);
    }
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (h, v) in acc.iter_mut().enumerate() {
                // SAFETY: row r < MR of C holds NR = 16 readable floats.
                *v = unsafe { _mm256_loadu_ps(c.add(r * ldc + h * 8)) };
            }
        }
    }
    // Row starts computed once: the loop then addresses each A value as base + p.
    // SAFETY: rows r < MR of A start inside the caller's A operand.
    let rows: [*const f32; MR] =
        std::array::from_fn(|r| unsafe { a_at::<STRIDED, MR>(a, lda, 0, r) });
    // One step of k: B's row p times A's column p into the accumulators.
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            // SAFETY: p < kc; B holds kc rows of NR floats `ldb` apart (the packed panel: 16
            // apart), `packed` (with PACK_B) kc * NR writable floats, and A's operand kc
            // values in each of MR rows.
            unsafe {
                let row = b.add(p * ldb);
                let b0 = _mm256_loadu_ps(row);
                let b1 = _mm256_loadu_ps(row.add(8));
                if PACK_B {
                    _mm256_storeu_ps(packed.add(p * 16), b0);
                    _mm256_storeu_ps(packed.add(p * 16 + 8), b1);
                    // B's row PACK_AHEAD rows on, both ends of its NR floats (`wrapping_add`:
                    // only a hint, and past the block's last row it points anywhere).
                    let ahead = row.wrapping_add(PACK_AHEAD * ldb);
                    crate::cpu::prefetch::l2(ahead);
                    crate::cpu::prefetch::l2(ahead.wrapping_add(15));
                }
                if FETCH {
                    // The next panel's row p, one line: the whole panel by the end of this
                    // one, spread over the k loop.
                    crate::cpu::prefetch::l2(next.wrapping_add(p * 16));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(if STRIDED {
                        &*rows[r].add(p)
                    } else {
                        &*a.add(p * MR + r)
                    });
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }};
    }
    // Two steps per trip, written out; see `UNROLL_AVX2`.
    let mut p = 0;
    const _: () = assert!(UNROLL_AVX2 == 2);
    while p + UNROLL_AVX2 <= kc {
        step!(p);
        step!(p + 1);
        p += UNROLL_AVX2;
    }
    while p < kc {
        step!(p);
        p += 1;
    }
    let zero = _mm256_setzero_ps();
    for (r, acc) in acc.iter().enumerate() {
        for (h, &v) in acc.iter().enumerate() {
            // SAFETY: row r < MR holds NR = 16 writable floats; a non-null bias holds 16.
            unsafe {
                let dst = c.add(r * ldc + h * 8);
                let mut v = v;
                if !bias.is_null() {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(bias.add(h * 8)));
                }
                if relu {
                    // max(0, v) returns v when v is NaN (the second operand), as the reference does.
                    v = _mm256_max_ps(zero, v);
                }
                _mm256_storeu_ps(dst, v);
            }
        }
    }
}

/// Steps of k per trip of the AVX-512 tile's loop. With one step per trip (24 FMAs, 14 loads,
/// 4 loop instructions) a row of tiles over packed operands in L1 and L2 ran at 78-83% of
/// the FMA units' peak on a Xeon with two 512-bit pipes (family 6 model 167, issue 14's
/// eighth session), with four at 87-92%; two measured about the same as four, eight slower
/// than one. With A read in place, one step also recomputed most of its 12 row addresses
/// (14 integer instructions a step); four pay 18 a trip.
const UNROLL: usize = 4;

pub struct Avx512;

impl Micro for Avx512 {
    const MR: usize = 12;
    const NR: usize = 32;
    const ISA: Isa = Isa::Avx512;
    // As fast or faster without on every VGG16 shape on the Xeon: see `Micro::FETCHES_NEXT_A`.
    const FETCHES_NEXT_A: bool = false;

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
        // SAFETY: the caller checked AVX-512F and the buffer sizes (see `Micro::tile`).
        unsafe { Self::tile_rows(12, kc, a, lda, b, c, ldc, accumulate, bias, relu) }
    }

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
        // The tile of `$rows` rows over B's packed panel (rows 32 floats apart).
        macro_rules! tile {
            ($rows:literal) => {
                avx512::<$rows, false, false>(
                    kc,
                    a,
                    lda,
                    b,
                    32,
                    null_mut(),
                    null(),
                    c,
                    ldc,
                    accumulate,
                    bias,
                    relu,
                )
            };
        }
        // A ragged last row panel (VGG's pixel counts end in 4 rows past a multiple of 12)
        // runs a 4- or 8-row tile instead of wasting up to 11 of 12 rows of FMAs.
        // SAFETY: as for `tile`; the narrower tiles read and write fewer rows.
        unsafe {
            match rows {
                0..=4 => tile!(4),
                5..=8 => tile!(8),
                _ => tile!(12),
            }
        }
    }

    const PACKS_B_IN_TILE: bool = true;

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
        // SAFETY: the caller checked AVX-512F and the buffer sizes (see
        // `Micro::tile_packing_b`).
        unsafe {
            avx512::<12, true, false>(
                kc,
                a,
                lda,
                b,
                ldb,
                packed,
                null(),
                c,
                ldc,
                accumulate,
                bias,
                relu,
            )
        }
    }

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
        // SAFETY: the caller checked AVX-512F and the buffer sizes (see `Micro::tile`);
        // `next` is only prefetched, never read.
        unsafe {
            avx512::<12, false, true>(
                kc,
                a,
                lda,
                b,
                32,
                null_mut(),
                next,
                c,
                ldc,
                accumulate,
                bias,
                relu,
            )
        }
    }
}

/// [`tile_avx512`] for A packed (`lda == 0`) or in place: the one place that picks the variant.
///
/// # Safety
/// As for [`tile_avx512`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn avx512<const ROWS: usize, const PACK_B: bool, const FETCH: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    packed: *mut f32,
    next: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    relu: bool,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        if lda == 0 {
            tile_avx512::<false, ROWS, PACK_B, FETCH>(
                kc, a, 0, b, ldb, packed, next, c, ldc, accumulate, bias, relu,
            )
        } else {
            tile_avx512::<true, ROWS, PACK_B, FETCH>(
                kc, a, lda, b, ldb, packed, next, c, ldc, accumulate, bias, relu,
            )
        }
    }
}

/// The AVX-512 tile: `ROWS` of the 12 rows, A packed or in place (`STRIDED`).
///
/// # Safety
/// As for [`Micro::tile`], and with `PACK_B` as for [`Micro::tile_packing_b`] (B in place,
/// rows `ldb` apart, packed into `packed`); without, `ldb` is 32 and `packed` unused. With
/// `FETCH`, as for [`Micro::tile_fetching_b`] (`next` only prefetched); without, `next` is
/// unused.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<
    const STRIDED: bool,
    const ROWS: usize,
    const PACK_B: bool,
    const FETCH: bool,
>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    packed: *mut f32,
    next: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    relu: bool,
) {
    // The packed layout's row count; only the first ROWS rows are computed.
    const MR: usize = 12;
    // With `accumulate`, the sum continues from C's values: one FMA chain per element in k
    // order, so how K is cut into blocks never changes a bit of the result.
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    if !accumulate {
        prefetch_c_tile(ROWS, 32, c, ldc);
    }
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (h, v) in acc.iter_mut().enumerate() {
                // SAFETY: row r < ROWS of C holds NR = 32 readable floats.
                *v = unsafe { _mm512_loadu_ps(c.add(r * ldc + h * 16)) };
            }
        }
    }
    // Row starts computed once: the loop then addresses each A value as base + p.
    // SAFETY: rows r < ROWS <= MR of A start inside the caller's A operand.
    let rows: [*const f32; ROWS] =
        std::array::from_fn(|r| unsafe { a_at::<STRIDED, MR>(a, lda, 0, r) });
    // One step of k: B's row p times A's column p into the accumulators.
    macro_rules! step {
        ($p:expr) => {{
            let p = $p;
            // SAFETY: p < kc; B holds kc rows of NR floats `ldb` apart (the packed panel: 32
            // apart), `packed` (with PACK_B) kc * NR writable floats, and A's operand kc
            // values in each of MR rows.
            unsafe {
                let row = b.add(p * ldb);
                let b0 = _mm512_loadu_ps(row);
                let b1 = _mm512_loadu_ps(row.add(16));
                if PACK_B {
                    _mm512_storeu_ps(packed.add(p * 32), b0);
                    _mm512_storeu_ps(packed.add(p * 32 + 16), b1);
                    // B's row PACK_AHEAD rows on, both lines of its NR floats.
                    let ahead = row.wrapping_add(PACK_AHEAD * ldb);
                    crate::cpu::prefetch::l2(ahead);
                    crate::cpu::prefetch::l2(ahead.wrapping_add(16));
                }
                if FETCH {
                    // The next panel's row p, both of its lines: the whole panel by the
                    // end of this one, spread over the k loop.
                    let ahead = next.wrapping_add(p * 32);
                    crate::cpu::prefetch::l2(ahead);
                    crate::cpu::prefetch::l2(ahead.wrapping_add(16));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(if STRIDED {
                        *rows[r].add(p)
                    } else {
                        *a.add(p * MR + r)
                    });
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
            }
        }};
    }
    // Four steps per trip: the loop's own instructions (and, with A in place, the row
    // addresses) are paid once per four, and the steps address their operands by
    // displacement. See `UNROLL`.
    let mut p = 0;
    // Written out: as `for u in 0..UNROLL`, LLVM spilled registers to the stack inside the
    // loop over A in place, and 1024^3 ran a third slower.
    const _: () = assert!(UNROLL == 4);
    while p + UNROLL <= kc {
        step!(p);
        step!(p + 1);
        step!(p + 2);
        step!(p + 3);
        p += UNROLL;
    }
    while p < kc {
        step!(p);
        p += 1;
    }
    let zero = _mm512_setzero_ps();
    for (r, acc) in acc.iter().enumerate() {
        for (h, &v) in acc.iter().enumerate() {
            // SAFETY: row r < MR holds NR = 32 writable floats; a non-null bias holds 32.
            unsafe {
                let dst = c.add(r * ldc + h * 16);
                let mut v = v;
                if !bias.is_null() {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(bias.add(h * 16)));
                }
                if relu {
                    // max(0, v) returns v when v is NaN (the second operand), as the reference does.
                    v = _mm512_max_ps(zero, v);
                }
                _mm512_storeu_ps(dst, v);
            }
        }
    }
}
