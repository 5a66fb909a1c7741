//! The BLIS loop nest around a micro-kernel.
//!
//! ```text
//! parallel over threads             one rectangle of C each: rows, or columns when M is small
//!   for jc in 0..N step NC            B block (KC x NC)
//!     for pc in 0..K step KC
//!       pack B[pc.., jc..]            (L3/L2; by the first row of tiles as they read it,
//!                                      where the micro-kernel can: see `FillB`)
//!       for ic in 0..M step MC
//!         A[ic.., pc..] in place      (packed only for im2col, ragged tails, aliasing rows)
//!         for ir step MR              A micro-panel stays in L1 while ...
//!           for jr step NR            ... B's micro-panels stream past it from L2 (or L3)
//!             micro-kernel            C tile in registers
//! ```
//!
//! The bias and ReLU epilogue runs in the micro-kernel on the last K block, while the tile is
//! still in registers, so C is written once with its final values.

use std::cell::Cell;

use rayon::prelude::*;

use super::Epilogue;
use super::blocking::Blocking;
use super::micro::Micro;
use super::pack::{ASource, PackedB, pack_b};
use crate::tensor::AlignedVec;

/// Where B comes from.
#[derive(Clone, Copy)]
pub enum BSource<'a> {
    /// Row-major `k x n` with leading dimension `ld`, packed block by block during the product.
    Matrix { data: &'a [f32], ld: usize },
    /// Packed once beforehand for this kernel's `NR` and `KC`.
    Packed(&'a PackedB),
    /// [`BSource::Packed`], and in memory (or L3), not L2, when the product starts: a layer's
    /// weights read once per pass (see [`super::streams_packed_b`]). The first row of tiles
    /// of each B block then asks L2 for the next panel while it works on this one.
    Streamed(&'a PackedB),
}

impl<'a> BSource<'a> {
    /// The packed B, if packed beforehand.
    fn packed(self) -> Option<&'a PackedB> {
        match self {
            BSource::Packed(p) | BSource::Streamed(p) => Some(p),
            BSource::Matrix { .. } => None,
        }
    }
}

/// C as a raw pointer, so that tasks can write disjoint tiles of it in parallel (the f32 and
/// the bf16 drivers both).
#[derive(Clone, Copy)]
pub(super) struct CPtr(pub(super) *mut f32);
impl CPtr {
    /// The pointer `count` floats on.
    ///
    /// # Safety
    /// The result must stay inside C.
    pub(super) unsafe fn add(self, count: usize) -> CPtr {
        // SAFETY: forwarded to the caller.
        CPtr(unsafe { self.0.add(count) })
    }
}

// SAFETY: every task writes a disjoint set of C's elements (its row block times its column
// chunk), and the product's caller holds the only `&mut` to C for the duration.
unsafe impl Send for CPtr {}
// SAFETY: as above; the pointer itself is only copied between threads.
unsafe impl Sync for CPtr {}

thread_local! {
    /// This thread's packed A rows (ragged tails, im2col, re-strided copies), reused.
    static A_BUF: Cell<AlignedVec> = Cell::new(AlignedVec::zeros(0));
    /// The calling thread's packed B block, reused across calls.
    static B_BUF: Cell<AlignedVec> = Cell::new(AlignedVec::zeros(0));
}

/// `C = A * B` (then the epilogue) with micro-kernel `K` and block sizes `blk`. `c` is
/// row-major `m x n` with leading dimension `ldc`. With `parallel`, the tasks run on the rayon
/// pool; without, on this thread (for callers that already run one product per core, like
/// Winograd). The block sizes change only speed, never a bit of C: each element is one
/// multiply-add chain in k order whatever `blk.kc` is (see [`Micro::tile`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm<K: Micro>(
    a: &dyn ASource,
    b: BSource,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
    blk: Blocking,
) {
    assert!(K::ISA.available(), "this CPU cannot run {} kernels", K::ISA);
    let (m, k) = (a.rows(), a.cols());
    let blk = Blocking {
        kc: blk.kc_for(k),
        nc: blk.nc_for(k),
        ..blk
    };
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "C is too small");
    if let Some(p) = b.packed() {
        assert!(
            p.k == k && p.n == n && p.nr == K::NR && p.kc == blk.kc,
            "B was packed for another shape or kernel"
        );
    }
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "bias is shorter than N");
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if ep.accumulate {
            return; // C += nothing
        }
        // An empty sum: C is the epilogue of zero.
        for row in c.chunks_mut(ldc).take(m) {
            for (j, v) in row[..n].iter_mut().enumerate() {
                let x = ep.bias.map_or(0.0, |b| b[j]);
                *v = if ep.relu && x < 0.0 { 0.0 } else { x };
            }
        }
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // A C larger than the caches can hold, written once (one K block, nothing to add to):
    // stored past the caches. block1_conv1's 27-deep product writes 118 MB at batch 8, and a
    // plain store would read every line first.
    let stream = !ep.accumulate && k <= blk.kc && crate::cpu::stream::worth_streaming(m * ldc * 4);
    let cp = CPtr(c.as_mut_ptr());
    if threads == 1 {
        run::<K>(a, b, n, cp, ldc, ep, blk, stream);
        return;
    }
    // One rayon task per thread, each running the whole loop nest on its own rectangle of C
    // and packing its own B: no barrier inside the product. (A first version synchronised the
    // threads twice per K block, to share one packed B; on this VM a waking thread sometimes
    // took milliseconds, and a 6 ms product on 2 threads ran as slowly as on one.)
    let panels = n.div_ceil(K::NR);
    if let BSource::Matrix { data, ld } = b
        && m <= blk.mc * threads
        && panels > 1
    {
        // Small M: split the columns, so that each thread reads only its share of B, here
        // the larger operand.
        let chunks = threads.min(panels);
        let per = panels.div_ceil(chunks) * K::NR;
        (0..chunks).into_par_iter().for_each(|ch| {
            let j0 = ch * per;
            if j0 >= n {
                return;
            }
            let b = BSource::Matrix {
                data: &data[j0..],
                ld,
            };
            let ep = Epilogue {
                bias: ep.bias.map(|bias| &bias[j0..]),
                ..ep
            };
            // SAFETY: column j0 < n is inside C's first row; this task writes only columns
            // j0..j0+per of C's rows.
            let c = unsafe { cp.add(j0) };
            run::<K>(a, b, per.min(n - j0), c, ldc, ep, blk, stream);
        });
    } else {
        // Otherwise split the rows, in whole micro-panels, as evenly as they go.
        let per = m.div_ceil(K::MR).div_ceil(threads) * K::MR;
        (0..threads).into_par_iter().for_each(|t| {
            let i0 = t * per;
            if i0 >= m {
                return;
            }
            let rows = RowRange {
                a,
                i0,
                rows: per.min(m - i0),
            };
            // SAFETY: row i0 < m is inside C; this task writes only rows i0..i0+per.
            let c = unsafe { cp.add(i0 * ldc) };
            run::<K>(&rows, b, n, c, ldc, ep, blk, stream);
        });
    }
}

/// Rows `i0..i0+rows` of another A.
struct RowRange<'a> {
    a: &'a dyn ASource,
    i0: usize,
    rows: usize,
}

impl ASource for RowRange<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.a.cols()
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        // Clipped to this range: the rows past it are zero, as the contract says.
        let mc = mc.min(self.rows.saturating_sub(i0));
        self.a.pack(self.i0 + i0, mc, p0, kc, mr, dst);
    }

    fn direct(&self) -> Option<(&[f32], usize)> {
        self.a
            .direct()
            .map(|(data, lda)| (&data[self.i0 * lda..], lda))
    }

    fn gathers_rows(&self) -> bool {
        self.a.gathers_rows()
    }

    fn gather_rows(
        &self,
        i0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        dst: &mut [f32],
        ld: usize,
    ) {
        let rows = rows.min(self.rows.saturating_sub(i0));
        self.a.gather_rows(self.i0 + i0, rows, p0, kc, dst, ld);
    }
}

/// The loop nest for all of A's rows and columns `0..n` of C at `c`, on this thread.
#[allow(clippy::too_many_arguments)]
fn run<K: Micro>(
    a: &dyn ASource,
    b: BSource,
    n: usize,
    cp: CPtr,
    ldc: usize,
    ep: Epilogue,
    blk: Blocking,
    stream: bool,
) {
    let (m, k) = (a.rows(), a.cols());
    // Row blocks of about MC and equal sizes.
    let mc = m
        .div_ceil(m.div_ceil(blk.mc))
        .next_multiple_of(K::MR)
        .max(K::MR);
    let row_blocks = m.div_ceil(mc);

    let nc_step = Blocking::equal_blocks(n, blk.nc, K::NR);
    for jc in (0..n).step_by(nc_step) {
        let nc = nc_step.min(n - jc);
        let panels = nc.div_ceil(K::NR);
        for pc in (0..k).step_by(blk.kc) {
            let kc = blk.kc.min(k - pc);
            let last = pc + kc == k;
            // This thread's packing buffers are taken out of their cells and put back
            // after, so they are reused from call to call.
            let mut bbuf = B_BUF.take();
            let (bpanels, fill) = match b {
                BSource::Packed(p) | BSource::Streamed(p) => {
                    (p.panels(pc, jc / K::NR, panels).as_ptr(), None)
                }
                BSource::Matrix { data, ld } => {
                    let len = panels * kc * K::NR;
                    if bbuf.len() < len {
                        bbuf = AlignedVec::zeros(len);
                    }
                    let dst = &mut bbuf.as_mut_slice()[..len];
                    // Whole panels are packed by the first row of tiles, as they read them;
                    // a ragged last panel here.
                    let full = if K::PACKS_B_IN_TILE && (K::MR..=FILL_MAX_ROWS * K::MR).contains(&m)
                    {
                        nc / K::NR
                    } else {
                        0
                    };
                    if full < panels {
                        pack_b(
                            data,
                            ld,
                            n,
                            pc,
                            kc,
                            jc + full * K::NR,
                            K::NR,
                            &mut dst[full * kc * K::NR..],
                        );
                    }
                    let dst = dst.as_mut_ptr();
                    let fill = (full > 0).then(|| FillB {
                        src: data[pc * ld + jc..].as_ptr(),
                        ld,
                        full,
                        dst,
                    });
                    (dst.cast_const(), fill)
                }
            };
            // The first panel of the B block after this one, for the last tile of this
            // block's first row to ask for (the panels after it are asked for tile by tile).
            let after = match b {
                BSource::Streamed(p) => {
                    let (pn, jn) = if last { (0, jc + nc) } else { (pc + kc, jc) };
                    (jn < n).then(|| p.panels(pn, jn / K::NR, 1).as_ptr())
                }
                _ => None,
            };
            for ib in 0..row_blocks {
                let ic = ib * mc;
                let mcb = mc.min(m - ic);
                let mut abuf = A_BUF.take();
                // Read A in place when it is a matrix (measured faster at every VGG
                // shape: its MR rows stream well, and packing cost as much as it
                // saved); pack only a ragged last panel then. When A's rows are a
                // multiple of 4 KB apart they fall into the same L1 set and evict each
                // other (1024^3 ran at 93 GFLOP/s, 1040^3 at 103): then the block's
                // rows are first copied, untransposed, to rows `kc + 16` apart.
                let direct = a.direct();
                let gather = direct.is_none() && a.gathers_rows();
                let (first_row, rows) = if direct.is_some() || gather {
                    (ic + mcb / K::MR * K::MR, mcb % K::MR)
                } else {
                    (ic, mcb)
                };
                let restride = direct.is_some_and(|(_, lda)| aliases_in_l1(lda, K::MR));
                let copy_ld = kc + 16;
                let copy_len = if restride || gather {
                    mcb / K::MR * K::MR * copy_ld
                } else {
                    0
                };
                let len = rows.div_ceil(K::MR) * K::MR * kc;
                if abuf.len() < copy_len + len {
                    abuf = AlignedVec::zeros(copy_len + len);
                }
                let (copy, packed) = abuf.as_mut_slice()[..copy_len + len].split_at_mut(copy_len);
                if rows > 0 {
                    a.pack(first_row, rows, pc, kc, K::MR, packed);
                }
                let apanels = match direct {
                    Some((data, lda)) if restride => {
                        for (r, dst) in copy.chunks_exact_mut(copy_ld).enumerate() {
                            dst[..kc].copy_from_slice(&data[(ic + r) * lda + pc..][..kc]);
                        }
                        APanels::Direct {
                            base: copy.as_ptr(),
                            lda: copy_ld,
                            full: mcb / K::MR,
                            tail: packed,
                        }
                    }
                    Some((data, lda)) => APanels::Direct {
                        // SAFETY: not dereferenced here; the micro-kernel reads rows
                        // ic.. of A, columns pc..pc+kc, all inside `data`.
                        base: unsafe { data.as_ptr().add(ic * lda + pc) },
                        lda,
                        full: mcb / K::MR,
                        tail: packed,
                    },
                    None if gather => {
                        a.gather_rows(ic, mcb / K::MR * K::MR, pc, kc, copy, copy_ld);
                        APanels::Direct {
                            base: copy.as_ptr(),
                            lda: copy_ld,
                            full: mcb / K::MR,
                            tail: packed,
                        }
                    }
                    None => APanels::Packed(packed),
                };
                macro_kernel::<K>(
                    apanels,
                    bpanels,
                    panels,
                    if ib == 0 { fill } else { None },
                    ib == 0 && matches!(b, BSource::Streamed(_)),
                    after,
                    kc,
                    mcb,
                    (jc, jc + nc),
                    cp,
                    ic,
                    ldc,
                    pc > 0 || ep.accumulate,
                    if last { ep } else { Epilogue::NONE },
                    stream,
                );
                A_BUF.set(abuf);
            }
            B_BUF.set(bbuf);
        }
    }
    if stream {
        // The streamed stores reach memory before the caller (or another thread) reads C.
        crate::cpu::stream::fence();
    }
}

/// Whether `mr` rows `lda` floats apart crowd into too few L1 sets to stay cached together:
/// rows a multiple of 4 KB apart map to the same set of an 8-way L1, so at `lda = 1024` the
/// twelve rows of an AVX-512 tile compete for 8 ways. More than 6 rows per set (the B panel
/// needs ways too) counts as crowded; VGG's K = 4608 puts 6 rows per set and measured faster
/// read in place.
pub(super) fn aliases_in_l1(lda: usize, mr: usize) -> bool {
    const WAY_BYTES: usize = 4096;
    // One bit per 64-byte set within a 4 KB way.
    let sets = (0..mr).fold(0u64, |bits, r| bits | 1 << ((r * lda * 4) % WAY_BYTES / 64));
    mr > 6 * sets.count_ones() as usize
}

/// The rows of A for one task.
enum APanels<'a> {
    /// Packed micro-panels of MR rows.
    Packed(&'a [f32]),
    /// `full` whole panels read in place from row-major A at `base` (rows `lda` apart), then
    /// the packed ragged rest in `tail`.
    Direct {
        base: *const f32,
        lda: usize,
        full: usize,
        tail: &'a [f32],
    },
}

impl APanels<'_> {
    /// The A operand of panel `ip` for the micro-kernel: pointer and `lda` (0 when packed).
    fn panel(&self, ip: usize, mr: usize, kc: usize) -> (*const f32, usize) {
        match *self {
            APanels::Packed(p) => (p[ip * mr * kc..].as_ptr(), 0),
            APanels::Direct {
                base,
                lda,
                full,
                tail,
            } => {
                if ip < full {
                    // SAFETY: panel ip < full lies inside A (see where `base` is made).
                    (unsafe { base.add(ip * mr * lda) }, lda)
                } else {
                    (tail[(ip - full) * mr * kc..].as_ptr(), 0)
                }
            }
        }
    }
}

/// The ir and jr loops over one block of A's rows (packed or in place) and the packed B panels
/// covering columns `cols.0..cols.1` of C: `panels` panels of `kc * NR` floats from
/// `bpanels`. With `fill`, the first row of tiles packs the whole panels as it reads them;
/// with `fetch_b`, it asks L2 for each next panel (see [`BSource::Streamed`]).
#[allow(clippy::too_many_arguments)]
fn macro_kernel<K: Micro>(
    apanels: APanels,
    bpanels: *const f32,
    panels: usize,
    fill: Option<FillB>,
    fetch_b: bool,
    after: Option<*const f32>,
    kc: usize,
    mc: usize,
    cols: (usize, usize),
    c: CPtr,
    ic: usize,
    ldc: usize,
    accumulate: bool,
    ep: Epilogue,
    stream: bool,
) {
    let (mr, nr) = (K::MR, K::NR);
    let mut edge = [0f32; 512];
    let mut edge_bias = [0f32; 64];
    debug_assert!(mr * nr <= edge.len() && nr <= edge_bias.len());
    // The next A micro-panel, when read in place, is asked for a share at a time before each
    // tile of this one: MR rows of KC floats, `lda` apart, where the kernel wants it (see
    // `Micro::FETCHES_NEXT_A`).
    let lines_per_row = (kc * 4).div_ceil(64) + 1;
    let lines_per_tile = (mr * lines_per_row).div_ceil(panels.max(1));
    for ip in 0..mc.div_ceil(mr) {
        let (ap, lda) = apanels.panel(ip, mr, kc);
        let i0 = ic + ip * mr;
        let mrb = mr.min(ic + mc - i0);
        for jp in 0..panels {
            let bp = bpanels.wrapping_add(jp * kc * nr);
            if K::FETCHES_NEXT_A && lda != 0 {
                let first = jp * lines_per_tile;
                prefetch_rows(
                    ap.wrapping_add(mr * lda),
                    lda,
                    lines_per_row,
                    first..(first + lines_per_tile).min(mr * lines_per_row),
                );
            }
            let j0 = cols.0 + jp * nr;
            let nrb = nr.min(cols.1 - j0);
            // The next panel, asked for by the first row of tiles: inside a full tile's k
            // loop where the kernel can (`Micro::tile_fetching_b`), else all at once here.
            let next = if !fetch_b || ip > 0 {
                None
            } else if jp + 1 < panels {
                Some(bpanels.wrapping_add((jp + 1) * kc * nr))
            } else {
                after
            };
            let full_tile = mrb == mr && nrb == nr && !stream;
            if let Some(next) = next.filter(|_| !full_tile) {
                prefetch_panel(next, kc * nr);
            }
            // SAFETY: (i0, j0) is inside this task's rectangle of C, which no other task
            // touches; the full-tile case writes MR x NR inside C's m x n; the edge case goes
            // through `edge`, a full tile, and copies back only the rows and columns inside C.
            // A's operand is a packed panel of kc * MR floats or MR rows of A in place, each
            // with kc values from column pc; B's packed panel holds kc * NR floats; bias, if
            // any, has n >= j0 + nrb entries, and `edge_bias` covers the ragged case. With
            // `fill`, a panel jp < full lies wholly inside B (columns j0..j0+NR <= n, rows
            // pc..pc+kc, `ld` apart from `src`), and the first row of tiles is the only
            // reader or writer of its packed panel at `dst` (the caller's own buffer, the
            // same as `bpanels`); the rows after read it only once it is written.
            unsafe {
                let ctile = c.0.add(i0 * ldc + j0);
                let bias = match ep.bias {
                    Some(b) if nrb == nr => b.as_ptr().add(j0),
                    Some(b) => {
                        edge_bias[..nrb].copy_from_slice(&b[j0..j0 + nrb]);
                        edge_bias.as_ptr()
                    }
                    None => std::ptr::null(),
                };
                let packing = fill.filter(|f| ip == 0 && jp < f.full);
                if let Some(f) = packing {
                    debug_assert!(mrb == mr && nrb == nr);
                    K::tile_packing_b(
                        kc,
                        ap,
                        lda,
                        f.src.add(jp * nr),
                        f.ld,
                        f.dst.add(jp * kc * nr),
                        ctile,
                        ldc,
                        accumulate,
                        bias,
                        ep.relu,
                    );
                } else if let Some(next) = next.filter(|_| full_tile) {
                    K::tile_fetching_b(
                        kc, ap, lda, bp, next, ctile, ldc, accumulate, bias, ep.relu,
                    );
                } else if full_tile {
                    K::tile(kc, ap, lda, bp, ctile, ldc, accumulate, bias, ep.relu);
                } else if mrb == mr && nrb == nr {
                    debug_assert!(nr.is_multiple_of(16));
                    // Into `edge` (in L1), then streamed to C a cache line at a time. Only
                    // without `accumulate`: the caller streams a C that is written once.
                    K::tile(kc, ap, lda, bp, edge.as_mut_ptr(), nr, false, bias, ep.relu);
                    for r in 0..mr {
                        let dst = std::slice::from_raw_parts_mut(ctile.add(r * ldc), nr);
                        for (d, v) in dst
                            .chunks_exact_mut(16)
                            .zip(edge[r * nr..][..nr].chunks_exact(16))
                        {
                            crate::cpu::stream::store16(d, v.try_into().expect("16 floats"), true);
                        }
                    }
                } else {
                    if accumulate {
                        for r in 0..mrb {
                            let row = edge[r * nr..].as_mut_ptr();
                            std::ptr::copy_nonoverlapping(ctile.add(r * ldc), row, nrb);
                        }
                    }
                    K::tile_rows(
                        mrb,
                        kc,
                        ap,
                        lda,
                        bp,
                        edge.as_mut_ptr(),
                        nr,
                        accumulate,
                        bias,
                        ep.relu,
                    );
                    for r in 0..mrb {
                        let row = edge[r * nr..].as_ptr();
                        std::ptr::copy_nonoverlapping(row, ctile.add(r * ldc), nrb);
                    }
                }
            }
        }
    }
}

/// Asks L2 for lines `lines` of an A micro-panel read in place at `a` (rows `lda` floats
/// apart, `lines_per_row` lines counted per row), numbered row by row.
///
/// The kernel reads the micro-panel from L1 for a whole row of tiles, but its first tile
/// finds MR rows of A, each in a different place, in L3 or memory: MR short streams that
/// the hardware prefetcher picks up late. Fetching the next micro-panel while this one is
/// in use made the in-place path 3-4% faster over VGG16's GEMM shapes and 1024^3
/// (geometric mean; up to 15% on one shape) on a Zen 3 whose L3 and memory other tenants
/// share (`docs/cpu-kernels.md`, "Zen 3"). L2, not L1: the micro-panel in use takes most of
/// L1 at a deep KC.
fn prefetch_rows(a: *const f32, lda: usize, lines_per_row: usize, lines: std::ops::Range<usize>) {
    let (mut row, mut line) = (
        lines.start / lines_per_row.max(1),
        lines.start % lines_per_row.max(1),
    );
    for _ in lines {
        // `wrapping_add`: the address is only a hint, never dereferenced; the last
        // micro-panel's "next" may lie past A.
        crate::cpu::prefetch::l2(a.wrapping_add(row * lda + line * 16));
        line += 1;
        if line == lines_per_row {
            line = 0;
            row += 1;
        }
    }
}

/// Asks L2 for the `floats` floats of a packed B panel at `panel`, a line at a time.
///
/// A layer's packed weights come from memory on the first row of tiles: Winograd's `U_e`
/// at 1 MB apiece (block4, 512 channels) or block5's 9.4 MB for implicit GEMM. The hardware
/// prefetcher does not follow a stream across a 4 KB page (`U_e` is too small for keel to
/// ask for huge pages), so it starts again 16 times per 64 KB panel; asked for a panel
/// ahead, the lines are in L2 when the tiles reach them. VGG16 at 240x240, batch 1, two threads (Xeon family
/// 6 model 167, issue 14's eighth session, per-layer medians of 28 passes): blocks 3-5
/// 1.4-9% faster each, the pass 4%. Where B was in L2 already (blocks 1-2, whose `U` stays
/// in cache) the same prefetches made the layers 3-5% slower, hence only for
/// [`BSource::Streamed`].
///
/// Asked for all at once before the tile, the panel's lines (1696 of them at KC 848) filled
/// the core's few line-fill buffers and the tile waited behind them: this loop took 8% of a
/// batch-1 pass's time in perf on an Emerald Rapids (issue 14, eleventh session). A full tile
/// now spreads them over its k loop (`Micro::tile_fetching_b`), and this asks for a ragged
/// edge tile's next panel only. VGG16 at 240x240, two threads, per-layer medians of 12
/// alternating rounds there (6 at batch 8): blocks 3-5 5-12% faster each, the pass 6% at
/// batch 1 and 4% at batch 8; with `KEEL_ISA=avx2` (4 rounds), blocks 3-5 6-11%.
pub(super) fn prefetch_panel(panel: *const f32, floats: usize) {
    for line in 0..floats.div_ceil(16) {
        // `wrapping_add`: only a hint, never dereferenced.
        crate::cpu::prefetch::l2(panel.wrapping_add(line * 16));
    }
}

/// The most rows of tiles (of MR rows of A each) for which a block's first row packs B.
const FILL_MAX_ROWS: usize = 128;

/// Where a block's first row of tiles reads B in place to pack it (see
/// [`Micro::tile_packing_b`]): its columns from `src` on, rows `ld` apart, `full` whole panels,
/// packed into the block's buffer at `dst`.
///
/// Packing B is bound by memory and the tiles by the FMA units. Packed in a pass of its own,
/// a block stalls the core for the whole copy: a quarter of a 64x512x4608 product's time on
/// a Zen 3, where A's few rows reuse each block little. Copied by the first row of tiles as
/// they stream B anyway, the copy overlaps their FMAs. Paired runs against packing first, on
/// one thread: 64x512x4608 11% faster, 196x512x4608 5%, 32x256x25088 5%; on two threads
/// (392-512 rows a thread) 196x512x4608, 784x512x2304 and 1024^3 2-4%. The panel values and
/// the FMA order are the same, so no bit of C changes. The AVX-512 tile packed first until
/// issue 14's seventh session; on that Xeon (4 alternating rounds, median GFLOP/s), two
/// threads: 784x512x4608 9% faster, 196x512x4608 7.5%, 1024^3 7%, 784x512x2304 1.5%; one
/// thread: 196x512x4608 5%, 784x512 2.5%, the rest (above the row limit below) unchanged.
///
/// It can save at most one row of tiles per block, a share `MR / m` of the product, and with
/// thousands of rows it measured 1-2% slower (3136x256x2304 and 12544x128x1152, one and two
/// threads): above [`FILL_MAX_ROWS`] rows of tiles B is packed first.
#[derive(Clone, Copy)]
struct FillB {
    src: *const f32,
    ld: usize,
    full: usize,
    dst: *mut f32,
}
