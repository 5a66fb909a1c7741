//! Packing: copying blocks of A and B into the exact order the micro-kernel reads them.
//!
//! The micro-kernel walks `k` and, at each step, reads `MR` values of A (one per row of its
//! tile) and `NR` values of B (one per column). Packing lays those out contiguously, so the
//! kernel's loads are unit-stride, aligned and never cross a page; it also zero-pads ragged
//! edges so the kernel never needs a bounds check. The copy costs O(MK + KN), against O(MNK)
//! for the product.

use crate::tensor::AlignedVec;

/// Where the rows of A come from. A row-major matrix for plain GEMM; an image read through
/// im2col on the fly for implicit-GEMM convolution, so no im2col buffer ever exists.
pub trait ASource: Sync {
    /// Rows of A (M).
    fn rows(&self) -> usize;
    /// Columns of A (K).
    fn cols(&self) -> usize;
    /// Pack rows `i0..i0+mc` and columns `p0..p0+kc` as micro-panels of `mr` rows:
    /// `dst[(panel * kc + p) * mr + r] = A[i0 + panel * mr + r, p0 + p]`, zero past the last row.
    /// `dst` holds `mc.div_ceil(mr) * mr * kc` floats.
    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]);
    /// The row-major values and leading dimension, when A is a plain matrix the micro-kernel
    /// can read in place.
    fn direct(&self) -> Option<(&[f32], usize)> {
        None
    }
    /// Whether the driver should gather whole micro-panels of rows row-major
    /// ([`ASource::gather_rows`]) and let the micro-kernel read them in place, rather than
    /// pack them interleaved.
    fn gathers_rows(&self) -> bool {
        false
    }
    /// Rows `i0..i0+rows`, columns `p0..p0+kc`, row-major into `dst` with rows `ld` apart.
    /// By default one `pack` of one row with `mr = 1` per row; a source that gathers rows
    /// does better where a block shares work between its rows.
    fn gather_rows(
        &self,
        i0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        dst: &mut [f32],
        ld: usize,
    ) {
        for (r, out) in dst.chunks_mut(ld).take(rows).enumerate() {
            self.pack(i0 + r, 1, p0, kc, 1, &mut out[..kc]);
        }
    }
}

/// A row-major matrix `rows x cols` with leading dimension `ld`.
#[derive(Clone, Copy, Debug)]
pub struct MatrixA<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl ASource for MatrixA<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn direct(&self) -> Option<(&[f32], usize)> {
        Some((self.data, self.ld))
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            for r in 0..mr {
                let row = i0 + panel * mr + r;
                if row < i0 + mc && row < self.rows {
                    let src = &self.data[row * self.ld + p0..][..kc];
                    for (p, &v) in src.iter().enumerate() {
                        out[p * mr + r] = v;
                    }
                } else {
                    for p in 0..kc {
                        out[p * mr + r] = 0.0;
                    }
                }
            }
        }
    }
}

/// A stored transposed: `A[i][p] = data[p * ld + i]`, `rows x cols` (M x K). The kernel
/// gradient of a Winograd convolution multiplies the transposed input transform this way.
#[derive(Clone, Copy, Debug)]
pub struct TransposedA<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl ASource for TransposedA<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        // Each k of a panel is `mr` consecutive values of one stored row: a contiguous run.
        let last = self.rows.min(i0 + mc);
        for (panel, out) in dst.chunks_exact_mut(kc * mr).enumerate() {
            let r0 = i0 + panel * mr;
            let run = last.saturating_sub(r0).min(mr);
            for p in 0..kc {
                let col = &mut out[p * mr..(p + 1) * mr];
                let src = &self.data[(p0 + p) * self.ld + r0.min(last)..];
                col[..run].copy_from_slice(&src[..run]);
                col[run..].fill(0.0);
            }
        }
    }
}

/// Pack rows `p0..p0+kc` and columns `j0..j0+nc` of row-major `b` (leading dimension `ldb`,
/// `n` columns in all) as micro-panels of `nr` columns: `dst[(panel * kc + p) * nr + j]`,
/// zero past column `n`.
#[allow(clippy::too_many_arguments)]
pub fn pack_b(
    b: &[f32],
    ldb: usize,
    n: usize,
    p0: usize,
    kc: usize,
    j0: usize,
    nr: usize,
    dst: &mut [f32],
) {
    // Row by row: each row of B is read once, front to back, and scattered to its panels.
    let panels = dst.len() / (kc * nr);
    let cols = (panels * nr).min(n.saturating_sub(j0));
    for p in 0..kc {
        let src = &b[(p0 + p) * ldb..];
        // The rows a block reads are `ldb` apart and often only part of a row (a thread's
        // column chunk, or NC < N): runs too short for the hardware prefetcher to pick up in
        // time, so the copy stalled on its loads. Asking for the row a few rows ahead made
        // small-M products, which are mostly packing, 1.35x faster on a Zen 3 (32x256x25088
        // and 64x512x4608 on 2 threads, geometric mean); products that pack whole rows did
        // not change, and the distance hardly matters (2 to 32 rows measured the same).
        if p + PACK_B_AHEAD < kc {
            let ahead = b[(p0 + p + PACK_B_AHEAD) * ldb + j0..].as_ptr();
            for c in (0..cols).step_by(16) {
                // `wrapping_add`: only a hint, never dereferenced.
                crate::cpu::prefetch::l1(ahead.wrapping_add(c));
            }
        }
        for panel in 0..panels {
            let col = j0 + panel * nr;
            let width = nr.min(n.saturating_sub(col));
            let o = &mut dst[(panel * kc + p) * nr..][..nr];
            // Whole panels of the kernels' widths get fixed-length copies, which compile to
            // vector moves; a variable-length copy is a `memmove` call per 64-128 bytes.
            match (width, nr) {
                (32, 32) => copy_fixed::<32>(o, &src[col..]),
                (16, 16) => copy_fixed::<16>(o, &src[col..]),
                _ => {
                    o[..width].copy_from_slice(&src[col..col + width]);
                    o[width..].fill(0.0);
                }
            }
        }
    }
}

/// How many rows ahead [`pack_b`] asks for B's rows.
const PACK_B_AHEAD: usize = 8;

#[inline(always)]
fn copy_fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let d: &mut [f32; N] = (&mut dst[..N]).try_into().expect("N floats");
    *d = src[..N].try_into().expect("N floats");
}

/// All of B packed once, for a B that is reused across many products: convolution weights and
/// their Winograd transforms. Blocks of `kc` rows follow each other; inside a block the `nr`
/// column panels of the whole width follow each other.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(crate) data: AlignedVec,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) kc: usize,
    pub(crate) nr: usize,
}

impl PackedB {
    /// Pack row-major `b` (`k x n`, leading dimension `ldb`) for micro-panels `nr` wide and
    /// K blocks of `kc`.
    pub fn new(b: &[f32], ldb: usize, k: usize, n: usize, kc: usize, nr: usize) -> PackedB {
        let panels = n.div_ceil(nr);
        let mut data = AlignedVec::zeros(k * panels * nr);
        let mut offset = 0;
        for p0 in (0..k).step_by(kc.max(1)) {
            let kcb = kc.min(k - p0);
            let len = kcb * panels * nr;
            pack_b(
                b,
                ldb,
                n,
                p0,
                kcb,
                0,
                nr,
                &mut data.as_mut_slice()[offset..][..len],
            );
            offset += len;
        }
        PackedB { data, k, n, kc, nr }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The packed panels `first..first+count` of the K block starting at row `p0`.
    pub(crate) fn panels(&self, p0: usize, first: usize, count: usize) -> &[f32] {
        let panels = self.n.div_ceil(self.nr);
        let kcb = self.kc.min(self.k - p0);
        let start = p0 * panels * self.nr + first * kcb * self.nr;
        &self.data.as_slice()[start..][..count * kcb * self.nr]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_with_zero_padded_rows() {
        let a: Vec<f32> = (0..15).map(|v| v as f32 + 1.0).collect(); // 3 x 5
        let m = MatrixA {
            data: &a,
            rows: 3,
            cols: 5,
            ld: 5,
        };
        let mut dst = [f32::NAN; 2 * 2 * 2];
        m.pack(1, 2, 3, 2, 2, &mut dst[..4]);
        // rows 1..3, columns 3..5: [[9, 10], [14, 15]] as (p, r)
        assert_eq!(&dst[..4], &[9.0, 14.0, 10.0, 15.0]);
        m.pack(2, 1, 0, 2, 2, &mut dst[..4]);
        assert_eq!(&dst[..4], &[11.0, 0.0, 12.0, 0.0]);
    }

    #[test]
    fn pack_b_copies_a_column_chunk_of_a_row_block() {
        // Odd sizes, a chunk that starts mid-row and ends ragged, and a block that reaches
        // B's last row (where the rows asked for ahead run out).
        let (k, n, ldb): (usize, usize, usize) = (37, 45, 47);
        let b: Vec<f32> = (0..k * ldb).map(|v| (v % 23) as f32 - 11.5).collect();
        let (p0, kc, j0, nr) = (16, 21, 19, 16);
        let panels = (n - j0).div_ceil(nr);
        let mut dst = vec![f32::NAN; panels * kc * nr];
        pack_b(&b, ldb, n, p0, kc, j0, nr, &mut dst);
        for panel in 0..panels {
            for p in 0..kc {
                for j in 0..nr {
                    let col = j0 + panel * nr + j;
                    let want = if col < n {
                        b[(p0 + p) * ldb + col]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        dst[(panel * kc + p) * nr + j],
                        want,
                        "panel {panel} p {p} j {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_b_panels_match_pack_b() {
        let (k, n) = (7, 5);
        let b: Vec<f32> = (0..k * n).map(|v| v as f32 + 0.5).collect();
        let p = PackedB::new(&b, n, k, n, 3, 4);
        // K block starting at 3 (3 rows), second panel: columns 4..8 of which only 4 exists.
        let s = p.panels(3, 1, 1);
        assert_eq!(s.len(), 3 * 4);
        for r in 0..3 {
            assert_eq!(s[r * 4], b[(3 + r) * n + 4]);
            assert_eq!(&s[r * 4 + 1..r * 4 + 4], &[0.0; 3]);
        }
        // The last K block has one row.
        assert_eq!(p.panels(6, 0, 2).len(), 8);
    }
}
