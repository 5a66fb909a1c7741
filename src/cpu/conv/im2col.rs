//! Implicit GEMM: convolution as `out[pixels x Cout] = im2col(x)[pixels x kh*kw*Cin] * kernel`,
//! where im2col is never built. The GEMM driver asks for one `MC x KC` block of it at a time
//! and [`Im2col::pack`] gathers that block straight from the NHWC image, row by row (the
//! micro-kernel reads the rows in place; see `gathers_rows`), so the only extra memory is the
//! packing buffer the GEMM needs anyway (VGG16's block1_conv2 would need a 116 MB im2col
//! matrix per 224x224 image).
//!
//! Keras's kernel layout `(kh, kw, Cin, Cout)` is already the `K x N` row-major B, with
//! `p = (ky * kw + kx) * Cin + ci`, so the weights are used as they are.

use crate::cpu::gemm::ASource;
use crate::tensor::ConvGeometry;

/// The im2col matrix of `x` under geometry `g`, read on demand.
pub struct Im2col<'a> {
    pub x: &'a [f32],
    pub g: ConvGeometry,
}

impl Im2col<'_> {
    /// Input offset of output pixel `row`'s tap `(ky, kx)`, or None where it reads padding.
    #[inline]
    fn tap(&self, row: usize, ky: usize, kx: usize) -> Option<usize> {
        Pixel::at(row, &self.g).tap(ky, kx, &self.g)
    }

    /// Columns `p0..p0 + kc` as runs that are consecutive in the input wherever the pixel's
    /// taps are inside the image: a tap's channels, and the whole channels of the next taps of
    /// the same kernel row (block1_conv1: three runs of 9 values instead of nine of 3). They
    /// are the same for every row, so a block works them out once.
    fn runs(&self, p0: usize, kc: usize) -> Vec<Run> {
        let (g, cin) = (&self.g, self.g.cin);
        let mut runs: Vec<Run> = Vec::with_capacity(kc.div_ceil(cin) + 1);
        let mut p = p0;
        while p < p0 + kc {
            let (tap, ci) = (p / cin, p % cin);
            let len = (cin - ci).min(p0 + kc - p);
            let (ky, kx) = (tap / g.kw, tap % g.kw);
            match runs.last_mut() {
                Some(last) if last.ky == ky && last.ci + last.len == (kx - last.kx) * cin + ci => {
                    last.len += len;
                }
                _ => runs.push(Run {
                    offset: p - p0,
                    ky,
                    kx,
                    ci,
                    len,
                }),
            }
            p += len;
        }
        runs
    }

    /// One row of the block, pixel `pixel`, handed to `put(q, values, n)` piece by piece:
    /// columns `q..q + n` hold `values`, or zeros (padding) where it is None.
    fn row(&self, pixel: &Pixel, runs: &[Run], mut put: impl FnMut(usize, Option<&[f32]>, usize)) {
        let (g, cin) = (&self.g, self.g.cin);
        for run in runs {
            let last_kx = run.kx + (run.ci + run.len - 1) / cin;
            match (pixel.tap(run.ky, run.kx, g), pixel.tap(run.ky, last_kx, g)) {
                // Both ends inside the image: so is everything between.
                (Some(at), Some(_)) => {
                    put(run.offset, Some(&self.x[at + run.ci..][..run.len]), run.len);
                }
                _ => {
                    // Part of the run reads padding: tap by tap.
                    let mut q = 0;
                    while q < run.len {
                        let c = run.ci + q;
                        let (kx, ci) = (run.kx + c / cin, c % cin);
                        let n = (cin - ci).min(run.len - q);
                        let src = pixel.tap(run.ky, kx, g).map(|at| &self.x[at + ci..][..n]);
                        put(run.offset + q, src, n);
                        q += n;
                    }
                }
            }
        }
    }
}

impl ASource for Im2col<'_> {
    fn rows(&self) -> usize {
        self.g.n * self.g.oh * self.g.ow
    }

    fn cols(&self) -> usize {
        self.g.kh * self.g.kw * self.g.cin
    }

    /// Row by row, a block of im2col is a few copies of whole channel runs (9 of 512 floats
    /// per pixel in VGG's block5), where the interleaved panel takes one scalar store per value.
    /// On the Emerald Rapids of issue 14's tenth session the gather fell from 11-17% of
    /// block5_conv2's time at 240x240, batch 1, one thread (`perf`) to 3%, and the layer from
    /// 6.3 to 6.0 ms in the VGG16 pass on two threads (4 alternating runs of 10 passes).
    fn gathers_rows(&self) -> bool {
        true
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
        let runs = self.runs(p0, kc);
        let mut pixel = Pixel::at(i0, &self.g);
        for out in dst.chunks_mut(ld).take(rows) {
            self.row(&pixel, &runs, |q, src, n| {
                let d = &mut out[q..q + n];
                match src {
                    Some(src) => d.copy_from_slice(src),
                    None => d.fill(0.0),
                }
            });
            pixel.step(&self.g);
        }
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        // No division per element: the runs are worked out once per block, and each row's
        // pixel (image, y, x) is stepped from the previous one. With block1_conv1's 3
        // channels, four divisions per run of three values had made this gather take longer
        // than the GEMM it feeds (Xeon, batch 8).
        let rows = self.rows().min(i0 + mc);
        let runs = self.runs(p0, kc);
        let mut pixel = Pixel::at(i0.min(rows), &self.g);
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            for r in 0..mr {
                if i0 + panel * mr + r >= rows {
                    for q in 0..kc {
                        out[q * mr + r] = 0.0;
                    }
                    continue;
                }
                // Column `q` of this row is `out[q * mr + r]`.
                self.row(&pixel, &runs, |q, src, n| {
                    let col = out[q * mr + r..].iter_mut().step_by(mr).take(n);
                    match src {
                        Some(src) => col.zip(src).for_each(|(d, &v)| *d = v),
                        None => col.for_each(|d| *d = 0.0),
                    }
                });
                pixel.step(&self.g);
            }
        }
    }
}

/// Columns `offset..offset + len` of a block of im2col: from channel `ci` of tap `(ky, kx)`
/// on, across whole channels of the taps to its right.
struct Run {
    offset: usize,
    ky: usize,
    kx: usize,
    ci: usize,
    len: usize,
}

/// An output pixel as image, row and column, stepped along the rows of im2col in order.
#[derive(Clone, Copy)]
pub(super) struct Pixel {
    pub(super) n: usize,
    pub(super) oy: usize,
    pub(super) ox: usize,
}

impl Pixel {
    pub(super) fn at(row: usize, g: &ConvGeometry) -> Pixel {
        let (n, rem) = (row / (g.oh * g.ow), row % (g.oh * g.ow));
        Pixel {
            n,
            oy: rem / g.ow,
            ox: rem % g.ow,
        }
    }

    /// The next row of im2col.
    #[inline]
    fn step(&mut self, g: &ConvGeometry) {
        self.ox += 1;
        if self.ox == g.ow {
            self.ox = 0;
            self.oy += 1;
            if self.oy == g.oh {
                self.oy = 0;
                self.n += 1;
            }
        }
    }

    /// Input offset of this pixel's tap `(ky, kx)`, or None where it reads padding.
    #[inline]
    fn tap(&self, ky: usize, kx: usize, g: &ConvGeometry) -> Option<usize> {
        let iy = (self.oy * g.stride[0] + ky).checked_sub(g.pad_top)?;
        let ix = (self.ox * g.stride[1] + kx).checked_sub(g.pad_left)?;
        (iy < g.h && ix < g.w).then(|| ((self.n * g.h + iy) * g.w + ix) * g.cin)
    }
}

/// The transposed im2col matrix of `x`: row `p = (ky * kw + kx) * Cin + ci`, column = output
/// pixel. The kernel gradient is `im2col(x)^T dz`, a GEMM with this as A (`kh*kw*Cin x pixels`)
/// and the output gradient `dz` (`pixels x Cout`) as B, so it too is gathered block by block
/// into the packing buffer and never stored.
pub struct Im2colT<'a> {
    pub x: &'a [f32],
    pub g: ConvGeometry,
}

impl ASource for Im2colT<'_> {
    fn rows(&self) -> usize {
        self.g.kh * self.g.kw * self.g.cin
    }

    fn cols(&self) -> usize {
        self.g.n * self.g.oh * self.g.ow
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let g = &self.g;
        let cin = g.cin;
        let rows = self.rows().min(i0 + mc);
        let im = Im2col {
            x: self.x,
            g: self.g,
        };
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            let r0 = i0 + panel * mr;
            for q in 0..kc {
                let pixel = p0 + q;
                let col = &mut out[q * mr..(q + 1) * mr];
                // The panel's rows as runs of consecutive channels of one tap: each run is a
                // contiguous stretch of the input pixel the tap reads, or padding.
                let mut r = 0;
                while r < mr {
                    let row = r0 + r;
                    if row >= rows {
                        col[r..].fill(0.0);
                        break;
                    }
                    let (tap, ci) = (row / cin, row % cin);
                    let run = (cin - ci).min(mr - r).min(rows - row);
                    match im.tap(pixel, tap / g.kw, tap % g.kw) {
                        Some(at) => {
                            col[r..r + run].copy_from_slice(&self.x[at + ci..at + ci + run])
                        }
                        None => col[r..r + run].fill(0.0),
                    }
                    r += run;
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rng::Rng;

    /// im2col from its definition: row = output pixel, column `(ky * kw + kx) * Cin + ci`.
    fn im2col(x: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let cols = g.kh * g.kw * g.cin;
        let mut m = vec![0.0; g.n * g.oh * g.ow * cols];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let row = (n * g.oh + oy) * g.ow + ox;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.stride[0] + ky) as isize - g.pad_top as isize;
                            let ix = (ox * g.stride[1] + kx) as isize - g.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            for ci in 0..g.cin {
                                let at = ((n * g.h + iy as usize) * g.w + ix as usize) * g.cin;
                                m[row * cols + (ky * g.kw + kx) * g.cin + ci] = x[at + ci];
                            }
                        }
                    }
                }
            }
        }
        m
    }

    /// Every block the driver could ask for, including column ranges that start and end in
    /// the middle of a tap's channels or of a run of whole taps, rows past the end (zeros),
    /// padding on every side and a stride of 2, against the definition, value for value.
    #[test]
    fn pack_and_gather_rows_give_every_block_as_the_definition() {
        let mut rng = Rng::new(5);
        // (n, h, w, cin, k, stride, pad_top, pad_left, oh, ow)
        let cases = [
            (2, 5, 7, 3, 3, 1, 1, 1, 5, 7),
            (1, 6, 5, 1, 3, 1, 0, 0, 4, 3),
            (1, 9, 8, 5, 5, 2, 2, 1, 5, 4),
            (3, 3, 4, 17, 3, 1, 2, 0, 2, 2),
        ];
        for case in cases {
            let g = geometry(case);
            let x: Vec<f32> = (0..g.n * g.h * g.w * g.cin)
                .map(|_| rng.normal() + 3.0)
                .collect();
            let want = im2col(&x, &g);
            let a = Im2col { x: &x, g };
            let (rows, cols) = (a.rows(), a.cols());
            for (mr, i0, mc, p0, kc) in blocks(rows, cols, g.cin) {
                let panels = mc.div_ceil(mr);
                let mut dst = vec![f32::NAN; panels * mr * kc];
                a.pack(i0, mc, p0, kc, mr, &mut dst);
                for (panel, out) in dst.chunks_exact(kc * mr).enumerate() {
                    for r in 0..mr {
                        let row = i0 + panel * mr + r;
                        for q in 0..kc {
                            let expect = if row < i0 + mc && row < rows {
                                want[row * cols + p0 + q]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                out[q * mr + r].to_bits(),
                                expect.to_bits(),
                                "{g:?} mr {mr} row {row} col {}",
                                p0 + q
                            );
                        }
                    }
                }
                // The same rows gathered row-major, rows kc + 3 apart: the gap is left alone.
                let ld = kc + 3;
                let mut dst = vec![f32::NAN; mc * ld];
                a.gather_rows(i0, mc, p0, kc, &mut dst, ld);
                for (r, out) in dst.chunks(ld).enumerate() {
                    let row = i0 + r;
                    for (q, v) in out.iter().enumerate() {
                        let expect = if q < kc {
                            want[row * cols + p0 + q]
                        } else {
                            f32::NAN
                        };
                        assert_eq!(
                            v.to_bits(),
                            expect.to_bits(),
                            "{g:?} gathered row {row} col {q}"
                        );
                    }
                }
            }
        }
    }

    /// The geometry of `(n, h, w, cin, k, stride, pad_top, pad_left, oh, ow)`, one output
    /// channel (the gathers do not see it).
    pub(in crate::cpu::conv) fn geometry(
        (n, h, w, cin, k, s, pad_top, pad_left, oh, ow): (
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ),
    ) -> ConvGeometry {
        ConvGeometry {
            n,
            h,
            w,
            cin,
            kh: k,
            kw: k,
            cout: 1,
            oh,
            ow,
            stride: [s, s],
            pad_top,
            pad_left,
        }
    }

    /// The blocks `(mr, i0, mc, p0, kc)` the gather tests ask for from an im2col of `rows x
    /// cols` with `cin` channels: whole and ragged panels, rows past the end, column ranges
    /// that start and end inside a tap.
    pub(in crate::cpu::conv) fn blocks(
        rows: usize,
        cols: usize,
        cin: usize,
    ) -> Vec<(usize, usize, usize, usize, usize)> {
        let mut out = Vec::new();
        for mr in [1, 4, 6, 12] {
            for (i0, mc) in [
                (0, rows),
                (1, 7.min(rows - 1)),
                (rows - 1, 1),
                (rows / 2, rows - rows / 2),
            ] {
                for (p0, kc) in [
                    (0, cols),
                    (1, cols - 1),
                    (cin + 1, 2 * cin + 3),
                    (cols - 2, 2),
                ] {
                    if p0 < cols {
                        out.push((mr, i0, mc, p0, kc.min(cols - p0)));
                    }
                }
            }
        }
        out
    }
}
