//! Implicit GEMM for a layer with few input channels (VGG's block1_conv1: 3), its im2col
//! gathered from a channel-planar, zero-padded copy of the image.
//!
//! [`super::Im2col`] reads the NHWC image, where a pixel's few channels sit together: with 3
//! channels the packed layout (`MR` rows side by side per column) takes one scalar store per
//! value, and that gather cost more than the GEMM it fed (perf, 240x240: 35% of the layer
//! against the micro-kernel's 28%). In a planar copy, column `(ky, kx, ci)` of `MR`
//! consecutive output pixels of one image row is `MR` consecutive floats of plane `ci`, so a
//! micro-panel is `kh * kw * cin` short contiguous copies. The copy is made once per call:
//! `cin * (oh + kh - 1) * (ow + kw - 1)` floats per image (0.7 MB at 240x240).

use super::im2col::Pixel;
use crate::cpu::gemm::ASource;
use crate::tensor::ConvGeometry;

/// The im2col matrix of a stride-1 convolution, read from planes `[n][ci][py][px]` that hold
/// the padding as zeros (`py = iy + pad_top`, `px = ix + pad_left`).
pub struct PlanarIm2col {
    planes: Vec<f32>,
    g: ConvGeometry,
    /// Rows and columns of one padded plane.
    ph: usize,
    pw: usize,
}

impl PlanarIm2col {
    /// Whether this source suits `g`: stride 1 (so that neighbouring output pixels read
    /// neighbouring input pixels) and fewer channels than an AVX2 register holds (with more,
    /// [`super::Im2col`] copies whole runs of channels already).
    pub fn suits(g: &ConvGeometry) -> bool {
        g.stride == [1, 1] && g.cin < 8
    }

    /// The planar copy of NHWC `x` under `g` (which must suit, see [`PlanarIm2col::suits`]).
    pub fn new(x: &[f32], g: ConvGeometry) -> PlanarIm2col {
        assert!(
            Self::suits(&g),
            "a planar im2col needs stride 1 and few channels"
        );
        assert_eq!(
            x.len(),
            g.n * g.h * g.w * g.cin,
            "the image does not match its geometry"
        );
        let (ph, pw) = (g.oh + g.kh - 1, g.ow + g.kw - 1);
        let mut planes = vec![0f32; g.n * g.cin * ph * pw];
        for n in 0..g.n {
            for iy in 0..g.h {
                let py = iy + g.pad_top;
                if py >= ph {
                    break; // below every tap (more padding at the bottom than used)
                }
                for ix in 0..g.w {
                    let px = ix + g.pad_left;
                    if px >= pw {
                        break;
                    }
                    let pixel = &x[((n * g.h + iy) * g.w + ix) * g.cin..][..g.cin];
                    for (ci, &v) in pixel.iter().enumerate() {
                        planes[((n * g.cin + ci) * ph + py) * pw + px] = v;
                    }
                }
            }
        }
        PlanarIm2col { planes, g, ph, pw }
    }
}

impl ASource for PlanarIm2col {
    fn rows(&self) -> usize {
        self.g.n * self.g.oh * self.g.ow
    }

    fn cols(&self) -> usize {
        self.g.kh * self.g.kw * self.g.cin
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let (g, ph, pw) = (&self.g, self.ph, self.pw);
        let rows = self.rows().min(i0 + mc);
        // Where column p0 + q starts in an image's planes, relative to its output pixel.
        let cols: Vec<usize> = (p0..p0 + kc)
            .map(|p| {
                let (tap, ci) = (p / g.cin, p % g.cin);
                (ci * ph + tap / g.kw) * pw + tap % g.kw
            })
            .collect();
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            // The panel's rows, in runs that stay on one row of one image.
            let mut r = 0;
            while r < mr {
                let row = i0 + panel * mr + r;
                if row >= rows {
                    for q in 0..kc {
                        out[q * mr + r..(q + 1) * mr].fill(0.0);
                    }
                    break;
                }
                let Pixel { n, oy, ox } = Pixel::at(row, g);
                let len = (mr - r).min(g.ow - ox).min(rows - row);
                let base = (n * g.cin * ph + oy) * pw + ox;
                for (q, &col) in cols.iter().enumerate() {
                    let src = &self.planes[base + col..][..len];
                    out[q * mr + r..][..len].copy_from_slice(src);
                }
                r += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::Im2col;
    use crate::cpu::conv::im2col::tests::{blocks, geometry};
    use crate::rng::Rng;

    /// Every block the driver could ask for (column ranges starting and ending inside a tap,
    /// rows past the end, panels that cross image rows and images, padding on every side and
    /// more padding than used) equals the NHWC gather's, value for value.
    #[test]
    fn pack_matches_the_nhwc_gather() {
        let mut rng = Rng::new(11);
        // (n, h, w, cin, k, stride, pad_top, pad_left, oh, ow)
        let cases = [
            (2, 5, 7, 3, 3, 1, 1, 1, 5, 7),
            (1, 6, 5, 1, 3, 1, 0, 0, 4, 3),
            (3, 4, 3, 3, 3, 1, 2, 2, 6, 5),
            (1, 17, 13, 7, 5, 1, 2, 1, 15, 11),
            (2, 3, 4, 2, 1, 1, 0, 0, 3, 4),
        ];
        for case in cases {
            let g = geometry(case);
            let x: Vec<f32> = (0..g.n * g.h * g.w * g.cin)
                .map(|_| rng.normal() + 3.0)
                .collect();
            let want = Im2col { x: &x, g };
            let got = PlanarIm2col::new(&x, g);
            let (rows, cols) = (got.rows(), got.cols());
            assert_eq!((rows, cols), (want.rows(), want.cols()));
            for (mr, i0, mc, p0, kc) in blocks(rows, cols, g.cin) {
                let len = mc.div_ceil(mr) * mr * kc;
                let (mut a, mut b) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                want.pack(i0, mc, p0, kc, mr, &mut a);
                got.pack(i0, mc, p0, kc, mr, &mut b);
                let same = a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{g:?} mr {mr} rows {i0}+{mc} cols {p0}+{kc}");
            }
        }
    }
}
