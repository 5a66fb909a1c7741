//! Winograd convolution F(m x m, 3 x 3) for 3x3 stride-1 layers, m = 2 or 4.
//!
//! An `m x m` block of outputs needs an `a x a` input tile (a = m + 2). Winograd computes it as
//! `Y = A^T [ (G g G^T) . (B^T d B) ] A`: the element-wise product has `a^2` multiplies per
//! input/output channel pair instead of `9 m^2`, 2.25x fewer for F(2x2) and 4x for F(4x4).
//! Summed over input channels, the element-wise products become `a^2` independent GEMMs,
//! `M_e[tiles x Cout] = V_e[tiles x Cin] * U_e[Cin x Cout]`, which run on the packed GEMM.
//!
//! Per block of tile rows (sized so its buffers stay in cache):
//! 1. input transform, parallel over tiles: `V[t][e][ci]`, 16 channels per vector step;
//! 2. `a^2` GEMMs, parallel over `e`, reading `V_e` in place (rows `a^2 * Cin` apart) against
//!    `U_e` packed once per layer;
//! 3. output transform with bias and ReLU, parallel over tile rows, straight into NHWC.
//!
//! The filter transform `U = G g G^T` is done once, in f64. F(4x4)'s larger constants (up to 8
//! in A, 1/24 in G) cost some precision: measured against the reference in the tests and on
//! the real VGG16 (see docs/cpu-kernels.md).

use std::cell::Cell;

use rayon::prelude::*;

use crate::cpu::gemm::bf16::PackedBBf16;
use crate::cpu::gemm::gemm_bf16_packed_best;
use crate::cpu::gemm::{self, BSource, Epilogue, MatrixA, PackedB};
use crate::cpu::isa::Isa;
use crate::cpu::{prefetch, stream};
use crate::tensor::real::max_nan;
use crate::tensor::{AlignedVec, ConvGeometry};

const LANES: usize = 16;
type V = [f32; LANES];

/// Output tile size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// F(2x2, 3x3): 4x4 input tiles, 16 GEMMs.
    F2,
    /// F(4x4, 3x3): 6x6 input tiles, 36 GEMMs.
    F4,
    /// F(4x4, 3x3) on the interpolation points 0, 1, -1, 1/2, -2 (and infinity) instead of
    /// F4's 0, 1, -1, 2, -2: the same multiplies, transforms with other constants. Rounding
    /// V and U to bf16 moves the output about 1.6x less (RMS; 2.9x less worst case) with
    /// these points: of the pairs tried from {±1/4, ±1/3, ±1/2, ±2/3, ±3/2, ±2, ±3, ±4},
    /// {1/2, -2} and its mirror {-1/2, 2} were best, the symmetric {±1/2} no better than
    /// {±2} (simulated on ReLU-like inputs, 128-256 channels; the matrices and the search in
    /// docs/cpu-kernels.md). The bf16 path's F(4x4) (`--precision bf16`).
    F4Bf16,
}

impl Variant {
    /// Outputs per tile side.
    pub fn m(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F4 | Variant::F4Bf16 => 4,
        }
    }

    /// Input tile side, m + 2.
    pub fn a(self) -> usize {
        self.m() + 2
    }

    /// G of the filter transform, `a x 3`.
    fn g(self) -> Vec<[f64; 3]> {
        match self {
            Variant::F2 => vec![
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            Variant::F4 => vec![
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
            // Row j: (1, p, p^2) / prod_{l != j} (p - p_l) for the finite points p_j.
            Variant::F4Bf16 => vec![
                [1.0, 0.0, 0.0],
                [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
                [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
                [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
                [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

/// A layer's filters transformed and packed: `U_e = (G g G^T)_e` as `Cin x Cout`, e < a^2.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    pub variant: Variant,
    pub isa: Isa,
    pub cin: usize,
    pub cout: usize,
    u: Vec<PackedB>,
    /// The same `U_e` rounded to bf16 for the bf16 GEMM (`--precision bf16`), instead of `u`.
    u_bf16: Vec<PackedBBf16>,
}

impl WinogradWeights {
    /// Transform a Keras `(3, 3, Cin, Cout)` kernel for the GEMM kernel of `isa`.
    pub fn new(variant: Variant, isa: Isa, kernel: &[f32], cin: usize, cout: usize) -> Self {
        Self::transform(variant, isa, kernel, cin, cout, false)
    }

    /// [`WinogradWeights::new`] for the bf16 GEMM: the transform in f64, then each `U_e`
    /// rounded to bf16 (half the memory of the f32 transform). Needs AVX512-BF16.
    pub fn new_bf16(variant: Variant, kernel: &[f32], cin: usize, cout: usize) -> Self {
        Self::transform(variant, Isa::Avx512, kernel, cin, cout, true)
    }

    /// Whether the GEMMs run in bf16.
    pub fn is_bf16(&self) -> bool {
        !self.u_bf16.is_empty()
    }

    fn transform(
        variant: Variant,
        isa: Isa,
        kernel: &[f32],
        cin: usize,
        cout: usize,
        bf16: bool,
    ) -> Self {
        assert_eq!(kernel.len(), 9 * cin * cout, "a 3x3 kernel");
        let a = variant.a();
        let g = variant.g();
        // One element e = (i, j) at a time, so the only temporary is one Cin x Cout matrix per
        // thread (the whole transform of a 512x512 layer would be 38 MB more at the peak).
        // U_e[ci][co] = sum_{ky,kx} G[i][ky] * g[ky][kx][ci][co] * G[j][kx], in f64.
        let u = (0..a * a)
            .into_par_iter()
            .map(|e| {
                let (gi, gj) = (g[e / a], g[e % a]);
                let mut coef = [0f64; 9];
                for ky in 0..3 {
                    for kx in 0..3 {
                        coef[ky * 3 + kx] = gi[ky] * gj[kx];
                    }
                }
                let mut ue = vec![0f32; cin * cout];
                for ci in 0..cin {
                    let row = &mut ue[ci * cout..][..cout];
                    for (co, v) in row.iter_mut().enumerate() {
                        let mut s = 0f64;
                        for (tap, c) in coef.iter().enumerate() {
                            s += c * kernel[(tap * cin + ci) * cout + co] as f64;
                        }
                        *v = s as f32;
                    }
                }
                if bf16 {
                    (None, Some(PackedBBf16::new(&ue, cout, cin, cout)))
                } else {
                    (Some(gemm::pack_b_for(isa, &ue, cout, cin, cout)), None)
                }
            })
            .collect::<Vec<_>>();
        let (u, u_bf16): (Vec<_>, Vec<_>) = u.into_iter().unzip();
        WinogradWeights {
            variant,
            isa,
            cin,
            cout,
            u: u.into_iter().flatten().collect(),
            u_bf16: u_bf16.into_iter().flatten().collect(),
        }
    }

    /// Bytes held (the a^2 / 9 times the kernel's size, half that in bf16).
    pub fn bytes(&self) -> usize {
        self.u.iter().map(PackedB::bytes).sum::<usize>()
            + self.u_bf16.iter().map(PackedBBf16::bytes).sum::<usize>()
    }
}

/// Floats of V plus M per block that we aim for: about 4 MB, in L3 with room to spare, and
/// (with at least 64 tiles) enough rows for the GEMMs. 8 MB ran block1_conv2 and block2_conv2
/// about 10% slower on a Zen 4 (32 MB L3 shared with other guests); 2 MB slowed block4, whose
/// GEMMs then got fewer rows per pass over `U_e`.
const BLOCK_FLOATS: usize = 1 << 20;

/// Floats of V plus W per block of the kernel gradient: about 64 MB, a few hundred tiles of
/// 512 channels (see [`kernel_grad_winograd`]).
const WGRAD_BLOCK_FLOATS: usize = 16 << 20;

/// Floats from `M_e` to `M_{e+1}` in the GEMMs' output: `tiles * cout` and one cache line
/// more, or two where one would leave the stride a multiple of 4 KB. The output transform
/// reads a tile's `a^2` values from `a^2` blocks at once; blocks a multiple of 4 KB apart
/// would all fall in the same L1 set (8 to 12 ways for 16 or 36 streams) and evict each other.
fn e_stride(tiles: usize, cout: usize) -> usize {
    let s = tiles * cout + 16;
    if (s * 4).is_multiple_of(4096) {
        s + 16
    } else {
        s
    }
}

/// How [`conv_winograd`] spreads a layer over the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Blocks of tile rows one after another, each phase of a block (input transform, the
    /// `a^2` GEMMs, output transform) spread over all threads, with a barrier between phases.
    /// `U` is read once per block: the schedule for wide layers, whose `U` is large.
    Shared,
    /// Each thread takes whole blocks of tile rows and runs all three phases on them alone,
    /// with its own V and M sized to stay in its L2. No barriers, and V and M never leave the
    /// core, but every thread reads all of `U` per block: the schedule for narrow layers
    /// (blocks 1-2 of VGG), where the transforms and their memory traffic, not the GEMMs, cost
    /// most.
    PerThread,
}

/// Largest `U` (bytes, as stored: f32 or bf16) for which [`Schedule::PerThread`] is chosen: a few MB, read from
/// L3 once per block by each thread.
const PER_THREAD_MAX_U: usize = 4 << 20;

/// Bytes of V plus M per block under [`Schedule::PerThread`], at least one tile row: half of a
/// 1 MB L2, the rest for the GEMM's packing buffers and `U_e`.
const PER_THREAD_BLOCK_BYTES: usize = 512 << 10;

impl Schedule {
    /// keel's choice for `w`: per thread where `U` is small and there is more than one thread.
    fn choose(w: &WinogradWeights) -> Schedule {
        if w.bytes() <= PER_THREAD_MAX_U && rayon::current_num_threads() > 1 {
            Schedule::PerThread
        } else {
            Schedule::Shared
        }
    }
}

/// `out = act(conv3x3(x) + bias)`; `g` must be a 3x3 stride-1 geometry matching `w`. With
/// `pool`, `out` is instead that output max-pooled 2x2 with stride 2 (odd sizes floored, as
/// Keras's `MaxPooling2D`), computed in the output transform: a tile's `m x m` outputs hold
/// whole pooling windows (m is even and tiles start at even rows and columns), so the
/// full-size output is never written.
pub fn conv_winograd(
    w: &WinogradWeights,
    x: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    pool: bool,
    out: &mut [f32],
) {
    conv_winograd_scheduled(Schedule::choose(w), true, w, x, bias, relu, g, pool, out)
}

/// [`conv_winograd`] on a given schedule, with the bf16 path's in-place V (`pairs`) allowed or
/// not. Both schedules compute every output with the same operations in the same order (each
/// tile's transforms, each GEMM row's sums), and so do both bf16 paths: the results are
/// identical bit for bit (tested).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_winograd_scheduled(
    schedule: Schedule,
    pairs: bool,
    w: &WinogradWeights,
    x: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    pool: bool,
    out: &mut [f32],
) {
    assert!(
        g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.cin == w.cin && g.cout == w.cout,
        "Winograd needs the 3x3 stride-1 geometry its weights were made for"
    );
    let (m, a) = (w.variant.m(), w.variant.a());
    let aa = a * a;
    let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
    let tile_rows = g.n * th;
    if tile_rows == 0 || tw == 0 {
        return;
    }
    let per_tile = aa * (g.cin + g.cout);
    let rows_per_block = match schedule {
        Schedule::Shared => (BLOCK_FLOATS / per_tile).max(64).div_ceil(tw),
        Schedule::PerThread => PER_THREAD_BLOCK_BYTES / 4 / per_tile / tw,
    }
    .clamp(1, tile_rows);
    let job = Job {
        w,
        x,
        bias,
        relu,
        g,
        pool,
        stream: stream::worth_streaming(std::mem::size_of_val(out)),
        tw,
        th,
        pairs_allowed: pairs,
        v_stride: gemm::spread_ld(w.isa, aa * g.cin),
    };
    // The output of each block of tile rows: consecutive rows of the output (pooled or not).
    let (row_len, rows_of) = if pool {
        ((g.ow / 2) * g.cout, (g.oh / 2, m / 2))
    } else {
        (g.ow * g.cout, (g.oh, m))
    };
    let rows_out = |row: usize| {
        let first = (row % th) * rows_of.1;
        rows_of.1.min(rows_of.0.saturating_sub(first))
    };
    let mut blocks = Vec::with_capacity(tile_rows.div_ceil(rows_per_block));
    let mut out_rest = out;
    for r0 in (0..tile_rows).step_by(rows_per_block) {
        let r1 = (r0 + rows_per_block).min(tile_rows);
        let len = (r0..r1).map(|row| rows_out(row) * row_len).sum();
        let (chunk, rest) = std::mem::take(&mut out_rest).split_at_mut(len);
        blocks.push((r0, r1, chunk));
        out_rest = rest;
    }
    let vlen = rows_per_block * tw * job.v_stride;
    // The longest `e_stride` of any block: `tiles * cout` plus at most two lines.
    let mlen = aa * (rows_per_block * tw * g.cout + 32);
    match schedule {
        Schedule::Shared => with_buffers(vlen, mlen, |vbuf, mbuf| {
            for (r0, r1, chunk) in blocks {
                job.block(r0, r1, vbuf, mbuf, chunk, row_len, &rows_out, true);
            }
        }),
        Schedule::PerThread => blocks.into_par_iter().for_each(|(r0, r1, chunk)| {
            with_buffers(vlen, mlen, |vbuf, mbuf| {
                job.block(r0, r1, vbuf, mbuf, chunk, row_len, &rows_out, false)
            })
        }),
    }
}

thread_local! {
    /// V and M of the blocks this thread runs, kept from layer to layer. Every element of a
    /// block's V and M is written before it is read, so they are reused without clearing:
    /// fresh zeroed buffers cost 4-8 MB of memset per layer (6% of a VGG16 pass in perf).
    static BUFFERS: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// `f` on this thread's V and M buffers, at least `vlen` and `mlen` long and starting on a
/// cache line. Re-entry (a rayon task stolen while `f` waits) finds the slot empty and works on
/// buffers of its own.
///
/// Why aligned: the GEMMs store whole 64-byte rows of M, and the transforms read and write
/// 16-float groups of V and M; from a 16-byte aligned allocation each of those spans two cache
/// lines.
fn with_buffers<R>(vlen: usize, mlen: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    let (mut v, mut m) = BUFFERS.take();
    // Room for the shift to the first line boundary (at most 15 floats).
    if v.len() < vlen + 16 {
        v = vec![0f32; vlen + 16];
    }
    if m.len() < mlen + 16 {
        m = vec![0f32; mlen + 16];
    }
    let (va, ma) = (line_offset(&v), line_offset(&m));
    let r = f(&mut v[va..va + vlen], &mut m[ma..ma + mlen]);
    BUFFERS.set((v, m));
    r
}

/// Floats from the start of `v` to its first 64-byte boundary.
fn line_offset(v: &[f32]) -> usize {
    v.as_ptr().align_offset(64).min(15)
}

/// What every block of a layer shares.
struct Job<'a> {
    w: &'a WinogradWeights,
    x: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
    g: &'a ConvGeometry,
    pool: bool,
    /// Whether the output is stored past the caches ([`stream::worth_streaming`]).
    stream: bool,
    /// Tiles per tile row, tile rows per image.
    tw: usize,
    th: usize,
    /// Whether bf16 weights may take V as bf16 pairs in place (see `Job::bf16_pairs`).
    pairs_allowed: bool,
    /// Floats from one tile's V to the next in f32: `a^2 * Cin`, or a line or two more where
    /// that is a multiple of 4 KB (Cin 256 and 512), so that the GEMM reads V's rows in place
    /// instead of first copying them apart ([`gemm::spread_ld`]).
    v_stride: usize,
}

impl Job<'_> {
    /// Whether V goes to the GEMM as bf16 pairs in place: allowed (the tests compare both
    /// paths), bf16 weights, and a Cin the bf16 kernel can read that way
    /// ([`gemm::bf16_pairs_fit`]).
    fn bf16_pairs(&self) -> bool {
        self.pairs_allowed && self.w.is_bf16() && gemm::bf16_pairs_fit(self.g.cin)
    }

    /// The input transform of the tiles of this block (from tile row `r0`) into `v`, `a^2 Cin`
    /// values per tile, the tiles `stride` values apart.
    fn input<T: VElem>(&self, r0: usize, v: &mut [T], stride: usize, parallel: bool) {
        let (w, g, tw, th) = (self.w, self.g, self.tw, self.th);
        let m = w.variant.m();
        let input = |(t, vt): (usize, &mut [T])| {
            let (row, tx) = (r0 + t / tw, t % tw);
            let (n, ty) = (row / th, row % th);
            dispatch_input(w.variant, w.isa, self.x, g, n, ty * m, tx * m, vt);
        };
        if parallel {
            v.par_chunks_mut(stride).enumerate().for_each(input);
        } else {
            v.chunks_mut(stride).enumerate().for_each(input);
        }
    }

    /// Tile rows `r0..r1` into `out` (their output rows, `rows_out(row)` of `row_len` floats
    /// each), with V and M in `vbuf` and `mbuf`; each phase spread over the threads when
    /// `parallel`, else on this thread.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        r0: usize,
        r1: usize,
        vbuf: &mut [f32],
        mbuf: &mut [f32],
        out: &mut [f32],
        row_len: usize,
        rows_out: &(dyn Fn(usize) -> usize + Sync),
        parallel: bool,
    ) {
        let (w, g, tw) = (self.w, self.g, self.tw);
        let (m, a) = (w.variant.m(), w.variant.a());
        let aa = a * a;
        let tiles = (r1 - r0) * tw;
        let vs = self.v_stride;
        let v = &mut vbuf[..tiles * vs];
        let es = e_stride(tiles, g.cout);
        let mm = &mut mbuf[..aa * es];

        // V in bf16, read in place by the GEMM, where the bf16 kernel can (`bf16_pairs`); else
        // V in f32, rounded and packed by the GEMM if bf16.
        if self.bf16_pairs() {
            // Half of `v`'s f32s hold the tiles' bf16 values, as pairs of the GEMM's layout.
            let vh: &mut [u16] = bytemuck::cast_slice_mut(&mut v[..tiles * aa * g.cin / 2]);
            self.input(r0, vh, aa * g.cin, parallel);
            let pairs: &[u32] = bytemuck::cast_slice(&v[..tiles * aa * g.cin / 2]);
            let (ks, kp) = (aa * g.cin / 2, g.cin / 2);
            let product = |(e, me): (usize, &mut [f32])| {
                gemm::gemm_bf16_pairs_best(tiles, &pairs[e * kp..], ks, &w.u_bf16[e], me, g.cout)
            };
            if parallel {
                mm.par_chunks_mut(es).enumerate().for_each(product);
            } else {
                mm.chunks_mut(es).enumerate().for_each(product);
            }
        } else {
            // 1. Input transform, a tile at a time.
            self.input(r0, v, vs, parallel);

            // 2. One GEMM per tile element e: M_e = V_e * U_e.
            let v = &*v;
            let streams = gemm::streams_packed_b(w.bytes());
            let product = |(e, me): (usize, &mut [f32])| {
                if w.is_bf16() {
                    let ve = &v[e * g.cin..][..(tiles - 1) * vs + g.cin];
                    gemm_bf16_packed_best(
                        tiles,
                        ve,
                        vs,
                        &w.u_bf16[e],
                        me,
                        g.cout,
                        Epilogue::NONE,
                        false,
                    );
                    return;
                }
                let ve = MatrixA {
                    data: &v[e * g.cin..],
                    rows: tiles,
                    cols: g.cin,
                    ld: vs,
                };
                let u = if streams {
                    BSource::Streamed(&w.u[e])
                } else {
                    BSource::Packed(&w.u[e])
                };
                gemm::gemm_source(w.isa, &ve, u, g.cout, me, g.cout, Epilogue::NONE, false);
            };
            if parallel {
                mm.par_chunks_mut(es).enumerate().for_each(product);
            } else {
                mm.chunks_mut(es).enumerate().for_each(product);
            }
        }

        // 3. Output transform, one tile row (m output rows, fewer at the bottom) per task.
        // With `pool`, a tile row covers m / 2 pooled rows (fewer at the bottom, maybe none).
        let mut rows = Vec::with_capacity(r1 - r0);
        let mut rest = out;
        for row in r0..r1 {
            let n_out = rows_out(row);
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n_out * row_len);
            rows.push((row - r0, n_out, chunk));
            rest = tail;
        }
        let mm = &*mm;
        let output = |(local_row, n_out, chunk): (usize, usize, &mut [f32])| {
            for tx in 0..tw {
                let t = local_row * tw + tx;
                dispatch_output(
                    w.variant,
                    w.isa,
                    self.pool,
                    self.stream,
                    mm,
                    es,
                    t,
                    g,
                    n_out,
                    tx * m,
                    self.bias,
                    self.relu,
                    chunk,
                );
            }
            if self.stream {
                stream::fence();
            }
        };
        if parallel {
            rows.into_par_iter().for_each(output);
        } else {
            rows.into_iter().for_each(output);
        }
    }
}

/// The kernel gradient of a 3x3 stride-1 convolution, `dk = sum_pixels x * dz`, by Winograd:
/// the forward algorithm's bilinear form read the other way round. For one 1-D tile,
/// `y = A^T [(G g) . (B^T d)]` is linear in the filter `g`, so the gradient of
/// `L = dy . y` with respect to `g` is `G^T [(A dy) . (B^T d)]`: the same input transform,
/// `A` where the forward pass has `A^T` (for the output gradient, `m x m` to `a x a`), and `G^T`
/// where it has `G` (back from `a x a` to the 3x3 filter). In 2-D, summed over tiles, the
/// element-wise products become `a^2` GEMMs over the tiles,
/// `M_e[Cin x Cout] += V_e^T[Cin x tiles] * W_e[tiles x Cout]`, with `V = B^T d B` and
/// `W = A dz A^T`, and `dk = G^T M G` per channel pair. F(4x4) does 36 multiplies per channel
/// pair and tile where the direct sum does 144.
///
/// `dz` is the gradient with respect to the pre-activation output (NHWC, `g`'s output shape);
/// `dk` receives the `(3, 3, Cin, Cout)` gradient.
pub fn kernel_grad_winograd(
    variant: Variant,
    isa: Isa,
    x: &[f32],
    dz: &[f32],
    g: &ConvGeometry,
    dk: &mut [f32],
) {
    assert!(
        g.kh == 3 && g.kw == 3 && g.stride == [1, 1],
        "Winograd needs a 3x3 stride-1 geometry"
    );
    assert_eq!(dk.len(), 9 * g.cin * g.cout, "a 3x3 kernel gradient");
    let (m, a) = (variant.m(), variant.a());
    let aa = a * a;
    let (cin, cout) = (g.cin, g.cout);
    let (th, tw) = (g.oh.div_ceil(m), g.ow.div_ceil(m));
    let tile_rows = g.n * th;
    // Here the tiles are the GEMMs' depth (K), not their rows: blocks of a few hundred tiles
    // keep each M_e update compute-bound (a block of 65 tiles, the forward pass's size for 512
    // channels, read and wrote each 1 MB M_e per 65-deep product and ran slower than the GEMM
    // over im2col).
    let per_tile = aa * (cin + cout);
    let target_tiles = (WGRAD_BLOCK_FLOATS / per_tile).max(64);
    let rows_per_block = target_tiles.div_ceil(tw.max(1)).clamp(1, tile_rows.max(1));
    let (vlen, wlen) = (
        rows_per_block * tw * aa * cin,
        rows_per_block * tw * aa * cout,
    );
    let (mlen, rlen) = (aa * cin * cout, 9 * cin * cout);
    // V, W, M (38 MB for 512 channels) and the transformed rows, in one buffer kept by this
    // thread from call to call: fresh pages from the kernel for them took a quarter of the
    // time in page faults, and nothing here needs them zeroed.
    let mut scratch = WGRAD_SCRATCH.take();
    if scratch.len() < vlen + wlen + mlen + rlen {
        scratch = AlignedVec::zeros(vlen + wlen + mlen + rlen);
    }
    let (vbuf, rest) = scratch.as_mut_slice().split_at_mut(vlen);
    let (wbuf, rest) = rest.split_at_mut(wlen);
    let (msum, rest) = rest.split_at_mut(mlen);
    let rows = &mut rest[..rlen];
    if tile_rows == 0 || tw == 0 {
        msum.fill(0.0);
    }
    for r0 in (0..tile_rows).step_by(rows_per_block) {
        let r1 = (r0 + rows_per_block).min(tile_rows);
        let tiles = (r1 - r0) * tw;
        let v = &mut vbuf[..tiles * aa * cin];
        let w = &mut wbuf[..tiles * aa * cout];
        // 1. Input transform, as in the forward pass: V[t][e][ci]; 2. the output gradient's,
        // W[t][e][co].
        v.par_chunks_mut(aa * cin)
            .zip(w.par_chunks_mut(aa * cout))
            .enumerate()
            .for_each(|(t, (vt, wt))| {
                let (row, tx) = (r0 + t / tw, t % tw);
                let (n, ty) = (row / th, row % th);
                dispatch_input(variant, isa, x, g, n, ty * m, tx * m, vt);
                dispatch_grad(variant, isa, dz, g, n, ty * m, tx * m, wt);
            });
        // 3. M_e = V_e^T W_e for the first block, += for the others; one e per task.
        let ep = if r0 == 0 {
            Epilogue::NONE
        } else {
            Epilogue::ACCUMULATE
        };
        let (v, w) = (&*v, &*w);
        msum.par_chunks_mut(cin * cout)
            .enumerate()
            .for_each(|(e, me)| {
                let vt = gemm::TransposedA {
                    data: &v[e * cin..],
                    rows: cin,
                    cols: tiles,
                    ld: aa * cin,
                };
                let we = BSource::Matrix {
                    data: &w[e * cout..],
                    ld: aa * cout,
                };
                gemm::gemm_source(isa, &vt, we, cout, me, cout, ep, false);
            });
    }
    // 4. dk = G^T M G per channel pair: one input channel per task into `[ci][tap][co]`, 16
    // output channels per vector step, then each tap's rows into place.
    let msum = &*msum;
    rows.par_chunks_mut(9 * cout)
        .enumerate()
        .for_each(|(ci, out)| filter_grad_row(variant, msum, cin, cout, ci, out));
    let rows = &*rows;
    dk.par_chunks_mut(cin * cout)
        .enumerate()
        .for_each(|(tap, dtap)| {
            for (drow, row) in dtap.chunks_exact_mut(cout).zip(rows.chunks_exact(9 * cout)) {
                drow.copy_from_slice(&row[tap * cout..][..cout]);
            }
        });
    WGRAD_SCRATCH.set(scratch);
}

thread_local! {
    /// The kernel gradient's V, W, M and transformed rows, kept by each calling thread.
    static WGRAD_SCRATCH: std::cell::Cell<AlignedVec> = std::cell::Cell::new(AlignedVec::zeros(0));
}

/// `A dz A^T` of the `m x m` output-gradient block at `(oy0, ox0)` of image `n` (zero past the
/// output's edges), into `wt[e][co]`.
#[inline(always)]
fn grad_tile_generic(
    variant: Variant,
    dz: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    wt: &mut [f32],
) {
    match variant {
        Variant::F2 => grad_tile::<2, 4>(dz, g, n, oy0, ox0, wt, |d, o| a2(d, o)),
        Variant::F4 => grad_tile::<4, 6>(dz, g, n, oy0, ox0, wt, |d, o| a4(d, o)),
        Variant::F4Bf16 => grad_tile::<4, 6>(dz, g, n, oy0, ox0, wt, |d, o| a4b(d, o)),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_tile<const M: usize, const A: usize>(
    dz: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    wt: &mut [f32],
    a: impl Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
) {
    let cout = g.cout;
    for c0 in (0..cout).step_by(LANES) {
        let lanes = LANES.min(cout - c0);
        let mut d = [[[0f32; LANES]; M]; M];
        for (i, drow) in d.iter_mut().enumerate() {
            for (j, dv) in drow.iter_mut().enumerate() {
                let (oy, ox) = (oy0 + i, ox0 + j);
                if oy < g.oh && ox < g.ow {
                    load_lanes(dv, &dz[((n * g.oh + oy) * g.ow + ox) * cout + c0..], lanes);
                }
            }
        }
        let mut t = [[[0f32; LANES]; A]; A];
        apply_2d(&d, &mut t, a);
        for i in 0..A {
            for j in 0..A {
                store_lanes(&mut wt[(i * A + j) * cout + c0..], &t[i][j], lanes);
            }
        }
    }
}

/// `G^T M G` for input channel `ci`: `msum[e][ci][co]` to `out[tap][co]`.
fn filter_grad_row(
    variant: Variant,
    msum: &[f32],
    cin: usize,
    cout: usize,
    ci: usize,
    out: &mut [f32],
) {
    fn run<const A: usize>(
        msum: &[f32],
        cin: usize,
        cout: usize,
        ci: usize,
        out: &mut [f32],
        gt: impl Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
    ) {
        for c0 in (0..cout).step_by(LANES) {
            let lanes = LANES.min(cout - c0);
            let mut d = [[[0f32; LANES]; A]; A];
            for (i, drow) in d.iter_mut().enumerate() {
                for (j, dv) in drow.iter_mut().enumerate() {
                    let e = i * A + j;
                    load_lanes(dv, &msum[(e * cin + ci) * cout + c0..], lanes);
                }
            }
            let mut k = [[[0f32; LANES]; 3]; 3];
            apply_2d(&d, &mut k, gt);
            for ky in 0..3 {
                for kx in 0..3 {
                    store_lanes(&mut out[(ky * 3 + kx) * cout + c0..], &k[ky][kx], lanes);
                }
            }
        }
    }
    match variant {
        Variant::F2 => run::<4>(msum, cin, cout, ci, out, |d, o| gt2(d, o)),
        Variant::F4 => run::<6>(msum, cin, cout, ci, out, |d, o| gt4(d, o)),
        Variant::F4Bf16 => run::<6>(msum, cin, cout, ci, out, |d, o| gt4b(d, o)),
    }
}

/// `A d` for F(2x2) (the transpose of `A^T`, `at2`): `m = 2` values to `a = 4`.
#[inline(always)]
fn a2(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1) = (d(0), d(1));
    o(0, d0);
    o(1, d0 + d1);
    o(2, d0 - d1);
    o(3, -d1);
}

/// `A d` for F(4x4) (the transpose of `at4`): 4 values to 6.
#[inline(always)]
fn a4(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
    o(0, d0);
    o(1, d0 + d1 + d2 + d3);
    o(2, d0 - d1 + d2 - d3);
    o(3, d0 + 2.0 * d1 + 4.0 * d2 + 8.0 * d3);
    o(4, d0 - 2.0 * d1 + 4.0 * d2 - 8.0 * d3);
    o(5, d3);
}

/// `G^T d` for F(2x2): `a = 4` values back to the 3 taps (G's rows: (1 0 0), (.5 .5 .5),
/// (.5 -.5 .5), (0 0 1)).
#[inline(always)]
fn gt2(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
    o(0, d0 + 0.5 * (d1 + d2));
    o(1, 0.5 * (d1 - d2));
    o(2, 0.5 * (d1 + d2) + d3);
}

/// `G^T d` for F(4x4): 6 values back to 3 (G's rows in `Variant::g`).
#[inline(always)]
fn gt4(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    let (s12, d12, s34, d34) = (d1 + d2, d1 - d2, d3 + d4, d3 - d4);
    o(0, 0.25 * d0 - s12 / 6.0 + s34 / 24.0);
    o(1, -d12 / 6.0 + d34 / 12.0);
    o(2, -s12 / 6.0 + s34 / 6.0 + d5);
}

/// `A d` for [`Variant::F4Bf16`] (the transpose of `at4b`).
#[inline(always)]
fn a4b(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
    o(0, d0);
    o(1, d0 + d1 + d2 + d3);
    o(2, d0 - d1 + d2 - d3);
    o(3, d0 + 0.5 * d1 + 0.25 * d2 + 0.125 * d3);
    o(4, d0 - 2.0 * d1 + 4.0 * d2 - 8.0 * d3);
    o(5, d3);
}

/// `G^T d` for [`Variant::F4Bf16`] (G's rows in `Variant::g`).
#[inline(always)]
fn gt4b(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    let (s12, d12) = (d1 + d2, d1 - d2);
    o(0, d0 + d12 / 3.0 - (16.0 / 15.0) * d3 + d4 / 15.0);
    o(1, s12 / 3.0 - (8.0 / 15.0) * d3 - (2.0 / 15.0) * d4);
    o(2, d12 / 3.0 - (4.0 / 15.0) * d3 + (4.0 / 15.0) * d4 + d5);
}

// ---- transforms ----------------------------------------------------------------------------

/// `y + b`, then the ReLU if `relu` (NaN passes): a function rather than a closure so that it
/// can be forced inline (the closure stayed a call, 2% of a VGG16 pass).
#[inline(always)]
fn bias_act(y: &V, b: &V, relu: bool) -> V {
    let mut o = [0f32; LANES];
    for l in 0..LANES {
        let v = y[l] + b[l];
        o[l] = if relu && v < 0.0 { 0.0 } else { v };
    }
    o
}

/// [`max_nan`] lane by lane, written without branches so that it compiles to vector compares
/// and blends: as `array::from_fn` around `max_nan` it stayed a call to scalar, branching code
/// that took 7% of a VGG16 pass (perf, Zen 4).
#[inline(always)]
fn max_lanes(a: &V, b: &V) -> V {
    let mut o = *a;
    for l in 0..LANES {
        let (x, y) = (a[l], b[l]);
        // max_nan's rule: y wins if x is not NaN and y is larger or NaN.
        let take = !x.is_nan() & ((y > x) | y.is_nan());
        o[l] = if take { y } else { x };
    }
    debug_assert!((0..LANES).all(|l| o[l].to_bits() == max_nan(a[l], b[l]).to_bits()));
    o
}

/// `dst[..lanes] = src[..lanes]`, the rest of `dst` zero; a fixed 16-float move when full.
#[inline(always)]
fn load_lanes(dst: &mut V, src: &[f32], lanes: usize) {
    if lanes == LANES {
        *dst = src[..LANES].try_into().expect("16 lanes");
    } else {
        *dst = [0f32; LANES];
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// [`store_lanes`] for the output, streamed past the caches when `stream` (see
/// [`stream::worth_streaming`]).
#[inline(always)]
fn store_out(dst: &mut [f32], src: &V, lanes: usize, stream: bool) {
    if lanes == LANES {
        stream::store16(dst, src, stream);
    } else {
        store_lanes(dst, src, lanes);
    }
}

/// `dst[..lanes] = src[..lanes]`; a fixed 16-float move when full.
#[inline(always)]
fn store_lanes(dst: &mut [f32], src: &V, lanes: usize) {
    if lanes == LANES {
        dst[..LANES].copy_from_slice(src);
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// What the input transform writes V as: f32, or bfloat16 bit patterns for the bf16 GEMM,
/// which then reads V in place instead of rounding and packing it (`gemm::gemm_bf16_pairs_best`).
pub trait VElem: Copy + Send + Sync {
    /// `dst[..lanes] = src[..lanes]`, converted.
    fn store(dst: &mut [Self], src: &V, lanes: usize);
}

impl VElem for f32 {
    #[inline(always)]
    fn store(dst: &mut [f32], src: &V, lanes: usize) {
        store_lanes(dst, src, lanes)
    }
}

/// bfloat16 as its bits: rounded to nearest even, a NaN kept quiet with its sign, exactly as
/// `gemm::bf16::round_bf16` (tested), in integer arithmetic the compiler vectorizes.
impl VElem for u16 {
    #[inline(always)]
    fn store(dst: &mut [u16], src: &V, lanes: usize) {
        let mut h = [0u16; LANES];
        for l in 0..LANES {
            let b = src[l].to_bits();
            let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
            let nan = b & 0x7fff_ffff > 0x7f80_0000;
            h[l] = ((if nan { b | 0x0040_0000 } else { rounded }) >> 16) as u16;
        }
        if lanes == LANES {
            // A fixed-length copy is one vector move; `..lanes` compiled to a memcpy call
            // per group (2% of a bf16 VGG16 pass in perf).
            dst[..LANES].copy_from_slice(&h);
        } else {
            dst[..lanes].copy_from_slice(&h[..lanes]);
        }
    }
}

/// The 1-D transforms act on one lane at a time through `get(k)` / `set(k, v)`; the 2-D
/// driver loops the 16 lanes innermost over contiguous memory, which the compiler turns into
/// vector code with the whole 1-D transform held in registers (returning arrays by value
/// instead compiled to memory copies and cost a third of the layer).
///
/// `B^T d` for F(2x2): rows of B^T are (1 0 -1 0), (0 1 1 0), (0 -1 1 0), (0 1 0 -1).
#[inline(always)]
fn bt2(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
    o(0, d0 - d2);
    o(1, d1 + d2);
    o(2, d2 - d1);
    o(3, d1 - d3);
}

/// `B^T d` for F(4x4).
#[inline(always)]
fn bt4(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    o(0, 4.0 * d0 - 5.0 * d2 + d4);
    o(1, -4.0 * (d1 + d2) + d3 + d4);
    o(2, 4.0 * (d1 - d2) - d3 + d4);
    o(3, 2.0 * (d3 - d1) - d2 + d4);
    o(4, 2.0 * (d1 - d3) - d2 + d4);
    o(5, 4.0 * d1 - 5.0 * d3 + d5);
}

/// `B^T d` for [`Variant::F4Bf16`]: row j holds the coefficients of
/// `prod_{l != j} (x - p_l)` over the finite points, and the last row those of
/// `prod_l (x - p_l)`, lowest power first.
#[inline(always)]
fn bt4b(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    o(0, d0 - 1.5 * d1 - 2.0 * d2 + 1.5 * d3 + d4);
    o(1, -d1 + 0.5 * d2 + 2.5 * d3 + d4);
    o(2, d1 - 2.5 * d2 + 0.5 * d3 + d4);
    o(3, 2.0 * (d3 - d1) - d2 + d4);
    o(4, 0.5 * (d1 - d3) - d2 + d4);
    o(5, d1 - 1.5 * d2 - 2.0 * d3 + 1.5 * d4 + d5);
}

/// `A^T m` for F(2x2): rows (1 1 1 0), (0 1 -1 -1).
#[inline(always)]
fn at2(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
    o(0, d0 + d1 + d2);
    o(1, d1 - d2 - d3);
}

/// `A^T m` for F(4x4): rows (1 1 1 1 1 0), (0 1 -1 2 -2 0), (0 1 1 4 4 0), (0 1 -1 8 -8 1).
#[inline(always)]
fn at4(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    o(0, d0 + d1 + d2 + d3 + d4);
    o(1, d1 - d2 + 2.0 * (d3 - d4));
    o(2, d1 + d2 + 4.0 * (d3 + d4));
    o(3, d1 - d2 + 8.0 * (d3 - d4) + d5);
}

/// `A^T m` for [`Variant::F4Bf16`]: rows (1 1 1 1 1 0), (0 1 -1 1/2 -2 0),
/// (0 1 1 1/4 4 0), (0 1 -1 1/8 -8 1): the powers of the points.
#[inline(always)]
fn at4b(d: impl Fn(usize) -> f32, mut o: impl FnMut(usize, f32)) {
    let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
    let (s12, d12) = (d1 + d2, d1 - d2);
    o(0, d0 + s12 + d3 + d4);
    o(1, d12 + 0.5 * d3 - 2.0 * d4);
    o(2, s12 + 0.25 * d3 + 4.0 * d4);
    o(3, d12 + 0.125 * d3 - 8.0 * d4 + d5);
}

/// `T d T^T` for a 1-D transform `f` (rows, then columns), into `out`.
#[inline(always)]
fn apply_2d<const A: usize, const B: usize, F>(d: &[[V; A]; A], out: &mut [[V; B]; B], f: F)
where
    F: Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
{
    let mut rows = [[[0f32; LANES]; B]; A];
    apply_2d_in(d, &mut rows, out, f);
}

/// [`apply_2d`] with the intermediate `rows` (every element written before it is read) passed
/// in, so that a loop over channel groups zeroes it once, not once per group: as locals, the
/// 2 KB arrays of the transforms were cleared by a call to memset per group and tile (5% of a
/// VGG16 pass in perf).
#[inline(always)]
fn apply_2d_in<const A: usize, const B: usize, F>(
    d: &[[V; A]; A],
    rows: &mut [[V; B]; A],
    out: &mut [[V; B]; B],
    f: F,
) where
    F: Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
{
    for i in 0..A {
        for l in 0..LANES {
            f(&|k| d[i][k][l], &mut |k, v| rows[i][k][l] = v);
        }
    }
    for j in 0..B {
        for l in 0..LANES {
            f(&|k| rows[k][j][l], &mut |k, v| out[k][j][l] = v);
        }
    }
}

/// Transform the `A x A` input tile with top-left output pixel `(oy0, ox0)` of image `n`
/// into `vt[e][ci]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_tile<const A: usize, T: VElem>(
    x: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    vt: &mut [T],
    bt: impl Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
) {
    let cin = g.cin;
    // Scratch for every channel group: each group writes every element before reading it.
    let mut d = [[[0f32; LANES]; A]; A];
    let mut rows = [[[0f32; LANES]; A]; A];
    // The next tile along the row (the one this thread transforms next) shares A - M columns
    // with this one; its other M columns are new, and come from memory: their lines are asked
    // for now, a group of channels at a time, so that they arrive while this tile computes.
    // Without it the loads of those columns took about 40% of the transform's time (perf,
    // block1_conv2 at batch 8, Zen 4), at 118 MB of input.
    // The pixels' offsets are listed once per tile, not once per group.
    let mut next = [0usize; 36]; // at most A (A - 2) pixels, A <= 6
    let mut count = 0;
    for i in 0..A {
        for j in 0..A - 2 {
            let iy = (oy0 + i).checked_sub(g.pad_top).filter(|&iy| iy < g.h);
            let ix = (ox0 + A + j).checked_sub(g.pad_left).filter(|&ix| ix < g.w);
            if let (Some(iy), Some(ix)) = (iy, ix) {
                next[count] = ((n * g.h + iy) * g.w + ix) * cin;
                count += 1;
            }
        }
    }
    // This tile's own pixels likewise: where each starts in `x`, or `PADDING`. Worked out per
    // group, the index arithmetic and checks outnumbered the transform's own instructions.
    const PADDING: usize = usize::MAX;
    let mut at = [[PADDING; A]; A];
    for (i, row) in at.iter_mut().enumerate() {
        let Some(iy) = (oy0 + i).checked_sub(g.pad_top).filter(|&iy| iy < g.h) else {
            continue;
        };
        for (j, at) in row.iter_mut().enumerate() {
            if let Some(ix) = (ox0 + j).checked_sub(g.pad_left).filter(|&ix| ix < g.w) {
                *at = ((n * g.h + iy) * g.w + ix) * cin;
            }
        }
    }
    let interior = at.iter().flatten().all(|&a| a != PADDING);
    for c0 in (0..cin).step_by(LANES) {
        let lanes = LANES.min(cin - c0);
        for &at in &next[..count] {
            prefetch::l1(&x[at + c0]);
        }
        if interior && lanes == LANES {
            // The rows' transforms read the input in place: no copy of the tile first.
            for (i, arow) in at.iter().enumerate() {
                let src: [&[f32; LANES]; A] = std::array::from_fn(|k| {
                    x[arow[k] + c0..][..LANES].try_into().expect("16 lanes")
                });
                for l in 0..LANES {
                    bt(&|k| src[k][l], &mut |k, v| rows[i][k][l] = v);
                }
            }
        } else {
            // Every element is written (zero for padding); the full-width copies have a fixed
            // length and compile to vector moves, not memmove calls.
            for (drow, arow) in d.iter_mut().zip(&at) {
                for (dv, &at) in drow.iter_mut().zip(arow) {
                    if at == PADDING {
                        *dv = [0f32; LANES];
                    } else {
                        load_lanes(dv, &x[at + c0..], lanes);
                    }
                }
            }
            for i in 0..A {
                for l in 0..LANES {
                    bt(&|k| d[i][k][l], &mut |k, v| rows[i][k][l] = v);
                }
            }
        }
        // The columns' transforms, a column at a time, each stored to V as it is made (a
        // column is A vectors, held in registers, not a whole tile round-tripped via memory).
        for j in 0..A {
            let mut col = [[0f32; LANES]; A];
            for l in 0..LANES {
                bt(&|k| rows[k][j][l], &mut |k, v| col[k][l] = v);
            }
            for (i, c) in col.iter().enumerate() {
                T::store(&mut vt[(i * A + j) * cin + c0..], c, lanes);
            }
        }
    }
}

/// Transform tile `t` of `mm` (`mm[e * e_stride + t * cout + co]`) back to `M x M` outputs
/// with bias and ReLU, into `chunk` (output rows of one tile row, `rows_out` of them); with
/// `pool`, the 2x2 maxima of those outputs (`rows_out` pooled rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_tile<const A: usize, const M: usize>(
    mm: &[f32],
    e_stride: usize,
    t: usize,
    g: &ConvGeometry,
    rows_out: usize,
    ox0: usize,
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    stream: bool,
    chunk: &mut [f32],
    at: impl Fn(&dyn Fn(usize) -> f32, &mut dyn FnMut(usize, f32)) + Copy,
) {
    let cout = g.cout;
    let cols_out = M.min(g.ow - ox0);
    // Pooled: `rows_out` pooled rows, and the whole windows inside the output's width.
    let (pw, pool_cols) = (g.ow / 2, (M / 2).min((g.ow / 2).saturating_sub(ox0 / 2)));
    // Scratch for every channel group: each group writes every element before reading it.
    let mut d = [[[0f32; LANES]; A]; A];
    let mut rows = [[[0f32; LANES]; M]; A];
    let mut y = [[[0f32; LANES]; M]; M];
    // The same group of the next tile (which this thread transforms next, unless this tile
    // ends its row), asked for now: its A^2 values lie in A^2 blocks of M, more streams than
    // the hardware prefetcher follows. Without it the loads of M took about half of the
    // transform's time (perf, VGG16 in bf16 at batch 8, Zen 4).
    let next = (t + 1) * cout;
    for c0 in (0..cout).step_by(LANES) {
        let lanes = LANES.min(cout - c0);
        if next + c0 < e_stride {
            for e in 0..A * A {
                if let Some(v) = mm.get(e * e_stride + next + c0) {
                    prefetch::l1(v);
                }
            }
        }
        if lanes == LANES {
            // The rows' transforms read M in place: no copy of the tile first.
            for (i, row) in rows.iter_mut().enumerate() {
                let src: [&[f32; LANES]; A] = std::array::from_fn(|k| {
                    mm[(i * A + k) * e_stride + t * cout + c0..][..LANES]
                        .try_into()
                        .expect("16 lanes")
                });
                for l in 0..LANES {
                    at(&|k| src[k][l], &mut |k, v| row[k][l] = v);
                }
            }
            for j in 0..M {
                for l in 0..LANES {
                    at(&|k| rows[k][j][l], &mut |k, v| y[k][j][l] = v);
                }
            }
        } else {
            for (i, drow) in d.iter_mut().enumerate() {
                for (j, dv) in drow.iter_mut().enumerate() {
                    let e = i * A + j;
                    load_lanes(dv, &mm[e * e_stride + t * cout + c0..], lanes);
                }
            }
            apply_2d_in(&d, &mut rows, &mut y, at);
        }
        let mut b = [0f32; LANES];
        if let Some(bias) = bias {
            b[..lanes].copy_from_slice(&bias[c0..c0 + lanes]);
        }
        let act = |yv: &V| bias_act(yv, &b, relu);
        if pool {
            for i in 0..rows_out {
                for j in 0..pool_cols {
                    let (p, q) = (2 * i, 2 * j);
                    let (v00, v01) = (act(&y[p][q]), act(&y[p][q + 1]));
                    let (v10, v11) = (act(&y[p + 1][q]), act(&y[p + 1][q + 1]));
                    let v = max_lanes(&max_lanes(&v00, &v01), &max_lanes(&v10, &v11));
                    store_out(
                        &mut chunk[(i * pw + ox0 / 2 + j) * cout + c0..],
                        &v,
                        lanes,
                        stream,
                    );
                }
            }
        } else {
            for (i, yrow) in y.iter().enumerate().take(rows_out) {
                for (j, yv) in yrow.iter().enumerate().take(cols_out) {
                    store_out(
                        &mut chunk[(i * g.ow + ox0 + j) * cout + c0..],
                        &act(yv),
                        lanes,
                        stream,
                    );
                }
            }
        }
    }
}

// ---- ISA dispatch: the same code compiled for AVX2 where the CPU has it ----------------------

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_generic<T: VElem>(
    variant: Variant,
    x: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    vt: &mut [T],
) {
    match variant {
        Variant::F2 => input_tile::<4, T>(x, g, n, oy0, ox0, vt, |d, o| bt2(d, o)),
        Variant::F4 => input_tile::<6, T>(x, g, n, oy0, ox0, vt, |d, o| bt4(d, o)),
        Variant::F4Bf16 => input_tile::<6, T>(x, g, n, oy0, ox0, vt, |d, o| bt4b(d, o)),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_generic(
    variant: Variant,
    pool: bool,
    stream: bool,
    mm: &[f32],
    e_stride: usize,
    t: usize,
    g: &ConvGeometry,
    rows_out: usize,
    ox0: usize,
    bias: Option<&[f32]>,
    relu: bool,
    chunk: &mut [f32],
) {
    match variant {
        Variant::F2 => output_tile::<4, 2>(
            mm,
            e_stride,
            t,
            g,
            rows_out,
            ox0,
            bias,
            relu,
            pool,
            stream,
            chunk,
            |d, o| at2(d, o),
        ),
        Variant::F4 => output_tile::<6, 4>(
            mm,
            e_stride,
            t,
            g,
            rows_out,
            ox0,
            bias,
            relu,
            pool,
            stream,
            chunk,
            |d, o| at4(d, o),
        ),
        Variant::F4Bf16 => output_tile::<6, 4>(
            mm,
            e_stride,
            t,
            g,
            rows_out,
            ox0,
            bias,
            relu,
            pool,
            stream,
            chunk,
            |d, o| at4b(d, o),
        ),
    }
}

/// [`input_avx2`] compiled for AVX-512: the same operations in the same order (so the
/// same bits), on 512-bit registers, half the instructions for the 16 lanes. On a CPU with two
/// 512-bit FMA pipes that halves the transforms' time; on Zen 4 it relieves the front end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_avx512<T: VElem>(
    variant: Variant,
    x: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    vt: &mut [T],
) {
    input_generic(variant, x, g, n, oy0, ox0, vt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_avx2<T: VElem>(
    variant: Variant,
    x: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    vt: &mut [T],
) {
    input_generic(variant, x, g, n, oy0, ox0, vt)
}

/// [`output_avx2`] compiled for AVX-512: the same operations in the same order (so the
/// same bits), on 512-bit registers, half the instructions for the 16 lanes. On a CPU with two
/// 512-bit FMA pipes that halves the transforms' time; on Zen 4 it relieves the front end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_avx512(
    variant: Variant,
    pool: bool,
    stream: bool,
    mm: &[f32],
    e_stride: usize,
    t: usize,
    g: &ConvGeometry,
    rows_out: usize,
    ox0: usize,
    bias: Option<&[f32]>,
    relu: bool,
    chunk: &mut [f32],
) {
    output_generic(
        variant, pool, stream, mm, e_stride, t, g, rows_out, ox0, bias, relu, chunk,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_avx2(
    variant: Variant,
    pool: bool,
    stream: bool,
    mm: &[f32],
    e_stride: usize,
    t: usize,
    g: &ConvGeometry,
    rows_out: usize,
    ox0: usize,
    bias: Option<&[f32]>,
    relu: bool,
    chunk: &mut [f32],
) {
    output_generic(
        variant, pool, stream, mm, e_stride, t, g, rows_out, ox0, bias, relu, chunk,
    )
}

#[allow(clippy::too_many_arguments)]
fn dispatch_input<T: VElem>(
    variant: Variant,
    isa: Isa,
    x: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    vt: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.available() {
        // SAFETY: AVX-512F, AVX2 and FMA are available (checked just above).
        return unsafe { input_avx512(variant, x, g, n, oy0, ox0, vt) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.runs_avx2() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe { input_avx2(variant, x, g, n, oy0, ox0, vt) };
    }
    let _ = isa;
    input_generic(variant, x, g, n, oy0, ox0, vt)
}

/// [`grad_avx2`] compiled for AVX-512: the same operations in the same order (so the
/// same bits), on 512-bit registers, half the instructions for the 16 lanes. On a CPU with two
/// 512-bit FMA pipes that halves the transforms' time; on Zen 4 it relieves the front end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_avx512(
    variant: Variant,
    dz: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    wt: &mut [f32],
) {
    grad_tile_generic(variant, dz, g, n, oy0, ox0, wt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_avx2(
    variant: Variant,
    dz: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    wt: &mut [f32],
) {
    grad_tile_generic(variant, dz, g, n, oy0, ox0, wt)
}

#[allow(clippy::too_many_arguments)]
fn dispatch_grad(
    variant: Variant,
    isa: Isa,
    dz: &[f32],
    g: &ConvGeometry,
    n: usize,
    oy0: usize,
    ox0: usize,
    wt: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.available() {
        // SAFETY: AVX-512F, AVX2 and FMA are available (checked just above).
        return unsafe { grad_avx512(variant, dz, g, n, oy0, ox0, wt) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.runs_avx2() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe { grad_avx2(variant, dz, g, n, oy0, ox0, wt) };
    }
    let _ = isa;
    grad_tile_generic(variant, dz, g, n, oy0, ox0, wt)
}

#[allow(clippy::too_many_arguments)]
fn dispatch_output(
    variant: Variant,
    isa: Isa,
    pool: bool,
    stream: bool,
    mm: &[f32],
    e_stride: usize,
    t: usize,
    g: &ConvGeometry,
    rows_out: usize,
    ox0: usize,
    bias: Option<&[f32]>,
    relu: bool,
    chunk: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.available() {
        // SAFETY: AVX-512F, AVX2 and FMA are available (checked just above).
        return unsafe {
            output_avx512(
                variant, pool, stream, mm, e_stride, t, g, rows_out, ox0, bias, relu, chunk,
            )
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.runs_avx2() {
        // SAFETY: AVX2 and FMA are available (checked just above).
        return unsafe {
            output_avx2(
                variant, pool, stream, mm, e_stride, t, g, rows_out, ox0, bias, relu, chunk,
            )
        };
    }
    let _ = isa;
    output_generic(
        variant, pool, stream, mm, e_stride, t, g, rows_out, ox0, bias, relu, chunk,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V's bf16 store rounds exactly as `round_bf16` (which the bf16 GEMM's packing and
    /// reference use): ties to even, carries into the exponent and to infinity, NaNs quiet
    /// with their sign, subnormals, in every lane and for partial stores.
    #[test]
    fn bf16_store_is_round_bf16() {
        use crate::cpu::gemm::bf16::round_bf16;
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // a tie, even below: stays
            f32::from_bits(0x3f81_8000), // a tie, odd below: rounds up
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x7f7f_ffff), // rounds to infinity
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::from_bits(0x0000_8000), // subnormal tie
            f32::from_bits(0x0001_7fff),
        ];
        let mut rng = crate::rng::Rng::new(3);
        values.extend((0..200).map(|_| f32::from_bits(rng.next_u64() as u32)));
        for chunk in values.chunks(LANES) {
            let mut v = [0f32; LANES];
            v[..chunk.len()].copy_from_slice(chunk);
            let mut out = vec![0u16; LANES];
            <u16 as VElem>::store(&mut out, &v, chunk.len());
            for (l, &x) in chunk.iter().enumerate() {
                assert_eq!(out[l], round_bf16(x), "{x} ({:#010x})", x.to_bits());
            }
        }
    }

    /// `max_lanes` is `max_nan` bit for bit on every pair of special and ordinary values
    /// (NaNs of both signs and payloads, infinities, signed zeros), in every lane.
    #[test]
    fn max_lanes_is_max_nan() {
        let values = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fc0_0001),
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.5,
            -2.25,
            f32::MIN_POSITIVE / 2.0,
            3.0e38,
        ];
        for (i, &x) in values.iter().enumerate() {
            for (j, &y) in values.iter().enumerate() {
                let a: V = std::array::from_fn(|l| if l % 2 == 0 { x } else { y });
                let b: V = std::array::from_fn(|l| {
                    if l % 2 == 0 {
                        y
                    } else {
                        values[(i + j + l) % values.len()]
                    }
                });
                let got = max_lanes(&a, &b);
                for l in 0..LANES {
                    assert_eq!(
                        got[l].to_bits(),
                        max_nan(a[l], b[l]).to_bits(),
                        "lane {l}: max({}, {})",
                        a[l],
                        b[l]
                    );
                }
            }
        }
    }
}
