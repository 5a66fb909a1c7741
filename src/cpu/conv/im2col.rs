//! Implicit GEMM: convolution as `out[pixels x Cout] = im2col(x)[pixels x kh*kw*Cin] * kernel`,
//! where im2col is never built. The GEMM driver asks for one `MC x KC` block of it at a time
//! and [`Im2col::pack`] gathers that block straight from the NHWC image into the packed
//! layout, so the only extra memory is the packing buffer the GEMM needs anyway (VGG16's
//! block1_conv2 would need a 116 MB im2col matrix per 224x224 image).
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
        let g = &self.g;
        let (n, rem) = (row / (g.oh * g.ow), row % (g.oh * g.ow));
        let (oy, ox) = (rem / g.ow, rem % g.ow);
        let iy = (oy * g.stride[0] + ky).checked_sub(g.pad_top)?;
        let ix = (ox * g.stride[1] + kx).checked_sub(g.pad_left)?;
        (iy < g.h && ix < g.w).then(|| ((n * g.h + iy) * g.w + ix) * g.cin)
    }
}

impl ASource for Im2col<'_> {
    fn rows(&self) -> usize {
        self.g.n * self.g.oh * self.g.ow
    }

    fn cols(&self) -> usize {
        self.g.kh * self.g.kw * self.g.cin
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        let cin = self.g.cin;
        let rows = self.rows().min(i0 + mc);
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            for r in 0..mr {
                let row = i0 + panel * mr + r;
                // Walk the columns as runs of consecutive input channels of one tap.
                let mut p = p0;
                while p < p0 + kc {
                    let (tap, ci) = (p / cin, p % cin);
                    let run = (cin - ci).min(p0 + kc - p);
                    let at = if row < rows {
                        self.tap(row, tap / self.g.kw, tap % self.g.kw)
                    } else {
                        None
                    };
                    let o = p - p0;
                    match at {
                        Some(at) => {
                            for (q, &v) in self.x[at + ci..at + ci + run].iter().enumerate() {
                                out[(o + q) * mr + r] = v;
                            }
                        }
                        None => {
                            for q in 0..run {
                                out[(o + q) * mr + r] = 0.0;
                            }
                        }
                    }
                    p += run;
                }
            }
        }
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
