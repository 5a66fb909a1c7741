//! Pillow's two resamplers that Keras's `load_img` uses, reproduced bit for bit.
//!
//! A network's accuracy is measured on images loaded the Keras way, so keel resizes exactly as
//! Pillow 13 does (`Image.resize` on an RGB image), down to the rounding:
//!
//! - NEAREST goes through Pillow's affine "scale" path (Geometry.c, `ImagingScaleAffine`): the
//!   source column of output column `x` is the integer part of a running f64 sum that starts at
//!   half a step and adds one step per column. Accumulating, rather than computing
//!   `(x + 0.5) * step` afresh, can land on the other side of an integer, so we accumulate too.
//! - BILINEAR goes through Pillow's separable convolution (Resample.c): a triangle filter whose
//!   support widens with the downscale factor, so that every source pixel contributes when
//!   shrinking (antialiasing), weights normalised in f64 then turned into fixed point, one pass
//!   per axis with the intermediate image rounded and clipped to 8 bits.

use std::str::FromStr;

use super::pixels::RgbImage;
use crate::error::{Error, Result};

/// How `load_img` resizes, by Keras's names for Pillow's filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// Keras's default, and so keel's: it is what `load_img` does unless told otherwise, and
    /// so what published accuracies were measured with.
    #[default]
    Nearest,
    /// Pillow's triangle filter. When shrinking, it widens with the scale factor so that each
    /// output averages every source pixel it covers (antialiasing), not just two of them.
    Bilinear,
}

impl FromStr for Interpolation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(Interpolation::Nearest),
            "bilinear" => Ok(Interpolation::Bilinear),
            _ => Err(Error::Invalid(format!(
                "unknown interpolation {s:?}: expected one of nearest, bilinear"
            ))),
        }
    }
}

impl std::fmt::Display for Interpolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
        })
    }
}

/// Resize to `height` x `width` as Pillow's `Image.resize` does; the same size is a copy.
/// (A zero side, which Pillow refuses, gives an empty image.)
pub fn resize(img: &RgbImage, height: usize, width: usize, interp: Interpolation) -> RgbImage {
    if (img.height, img.width) == (height, width) {
        return img.clone();
    }
    if height == 0 || width == 0 {
        return RgbImage {
            height,
            width,
            data: Vec::new(),
        };
    }
    match interp {
        Interpolation::Nearest => nearest(img, height, width),
        Interpolation::Bilinear => bilinear(img, height, width),
    }
}

/// Nearest-neighbour resize, as Pillow's `resize(size, Image.NEAREST)`.
pub(crate) fn nearest(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let cols = nearest_sources(img.width, width);
    let rows = nearest_sources(img.height, height);
    // Pillow fills the output with zeros first; a source index that falls outside the image
    // (which rounding could only cause at the far edge) leaves its pixel black.
    let mut data = vec![0u8; height * width * 3];
    for (out_row, src_y) in data.chunks_exact_mut(width * 3).zip(rows) {
        let Some(src_y) = src_y else { continue };
        let src_row = &img.data[src_y * img.width * 3..][..img.width * 3];
        for (out_px, src_x) in out_row.chunks_exact_mut(3).zip(&cols) {
            if let Some(src_x) = *src_x {
                out_px.copy_from_slice(&src_row[src_x * 3..src_x * 3 + 3]);
            }
        }
    }
    RgbImage {
        height,
        width,
        data,
    }
}

/// The source index of each of `out_size` outputs along one axis of length `in_size`.
fn nearest_sources(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
    let step = in_size as f64 / out_size as f64;
    let mut pos = step * 0.5;
    let mut sources = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        // `pos` is never negative here, so truncation is the floor Pillow takes.
        let src = pos as usize;
        sources.push((src < in_size).then_some(src));
        pos += step;
    }
    sources
}

/// Fixed-point fraction bits of the weights: 32 bits less 8 for the pixel value and 2 spare
/// for sums that overshoot (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Added before the final shift so that it rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// The source range one output sample reads and the fixed-point weight of each source sample.
#[derive(Debug)]
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's triangle ("bilinear") filter with support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// The taps of each of `out_size` outputs along an axis of `in_size` samples
/// (Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`).
///
/// Every f64 operation is kept in Pillow's order: the weights must round to the same integers.
fn bilinear_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    // Shrinking by `scale` stretches the filter by `scale`, so it averages over every source
    // sample an output covers instead of sampling two and aliasing the rest away.
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support (1) times the stretch
    let inv_filter_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // Truncating casts, as C's `(int)`; both ends are clamped to the image.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let raw: Vec<f64> = (first..end.max(first))
                .map(|src| triangle((src as f64 - center + 0.5) * inv_filter_scale))
                .collect();
            // The sample under the center always weighs at least 1/2, so `total` is not 0.
            let total: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            // Round to nearest (the triangle is never negative).
            let weights = raw
                .iter()
                .map(|&w| (w / total * one + 0.5) as i32)
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// A fixed-point sum back to a pixel value: round (the sum started at `HALF`), clip to 0..=255.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resample rows `rows` of an RGB image `width` pixels wide along x with `taps`.
fn horizontal_pass(
    src: &[u8],
    width: usize,
    rows: std::ops::Range<usize>,
    taps: &[Taps],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * taps.len() * 3);
    for y in rows {
        let row = &src[y * width * 3..(y + 1) * width * 3];
        for t in taps {
            let pixels = &row[t.first * 3..(t.first + t.weights.len()) * 3];
            let mut sum = [HALF; 3];
            for (px, &w) in pixels.chunks_exact(3).zip(&t.weights) {
                for (s, &v) in sum.iter_mut().zip(px) {
                    *s += i32::from(v) * w;
                }
            }
            out.extend(sum.map(clip8));
        }
    }
    out
}

/// Resample an RGB image `width` pixels wide along y with `taps`, whose ranges count rows of
/// `src` (already shifted if `src` is a window of the image).
fn vertical_pass(src: &[u8], width: usize, taps: &[Taps]) -> Vec<u8> {
    let row_len = width * 3;
    let mut out = Vec::with_capacity(taps.len() * row_len);
    let mut sums = vec![0i32; row_len];
    for t in taps {
        sums.fill(HALF);
        for (dy, &w) in t.weights.iter().enumerate() {
            let row = &src[(t.first + dy) * row_len..][..row_len];
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += i32::from(v) * w;
            }
        }
        out.extend(sums.iter().map(|&s| clip8(s)));
    }
    out
}

/// Bilinear (antialiased when shrinking) resize, as Pillow's `resize(size, Image.BILINEAR)`.
pub(crate) fn bilinear(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let (in_h, in_w) = (img.height, img.width);
    let need_h = width != in_w;
    let need_v = height != in_h;
    // Pillow runs the vertical pass first when the height shrinks by more than twice as many
    // pixels as the width does (it is cheaper then). The 8-bit intermediate makes the order
    // visible in the result, so we follow it.
    let shrink_h = in_h as i64 - height as i64;
    let horizontal_first = !(shrink_h > 0 && shrink_h > (in_w as i64 - width as i64) * 2);

    let mut v_taps = bilinear_taps(in_h, height);
    let h_taps = bilinear_taps(in_w, width);
    let data = if horizontal_first {
        let tmp = if need_h {
            // Resample only the rows the vertical pass reads, and count its rows from there.
            let first = v_taps.first().map_or(0, |t| t.first);
            let end = v_taps.last().map_or(0, |t| t.first + t.weights.len());
            for t in &mut v_taps {
                t.first -= first;
            }
            horizontal_pass(&img.data, in_w, first..end, &h_taps)
        } else {
            img.data.clone()
        };
        if need_v {
            vertical_pass(&tmp, width, &v_taps)
        } else {
            tmp
        }
    } else {
        let tmp = vertical_pass(&img.data, in_w, &v_taps);
        if need_h {
            horizontal_pass(&tmp, in_w, 0..height, &h_taps)
        } else {
            tmp
        }
    };
    RgbImage {
        height,
        width,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random image (an LCG: no test dependency needed).
    fn random_image(height: usize, width: usize, seed: u64) -> RgbImage {
        let mut state = seed;
        let data = (0..height * width * 3)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        RgbImage {
            height,
            width,
            data,
        }
    }

    /// The weight of source sample `src` in output `out`, straight from Pillow's definition,
    /// or None outside the output's window.
    fn reference_weight(in_size: usize, out_size: usize, out: usize, src: usize) -> Option<i32> {
        let scale = in_size as f64 / out_size as f64;
        let support = scale.max(1.0);
        let center = (out as f64 + 0.5) * scale;
        let first = ((center - support + 0.5) as i64).max(0);
        let end = ((center + support + 0.5) as i64).min(in_size as i64);
        if (src as i64) < first || src as i64 >= end {
            return None;
        }
        let w = |s: i64| triangle((s as f64 - center + 0.5) * (1.0 / support));
        let total: f64 = (first..end).map(w).sum();
        let fixed = w(src as i64) / total * f64::from(1u32 << PRECISION_BITS);
        Some((fixed + 0.5) as i32)
    }

    /// Pillow's bilinear resize computed pixel by pixel: each output value is a weighted sum
    /// over the whole image, with every weight recomputed from the definition, and the
    /// intermediate pass over all rows rather than the window the fast path keeps.
    fn reference_bilinear(img: &RgbImage, height: usize, width: usize) -> RgbImage {
        let (in_h, in_w) = (img.height, img.width);
        let pass = |src: &[u8], rows: usize, cols: usize, along_x: bool| -> Vec<u8> {
            let (out_rows, out_cols) = if along_x {
                (rows, width)
            } else {
                (height, cols)
            };
            let mut out = vec![0u8; out_rows * out_cols * 3];
            for y in 0..out_rows {
                for x in 0..out_cols {
                    for c in 0..3 {
                        let mut sum = HALF;
                        let n = if along_x { cols } else { rows };
                        for s in 0..n {
                            let (o, sy, sx) = if along_x { (x, y, s) } else { (y, s, x) };
                            let out_size = if along_x { width } else { height };
                            if let Some(w) = reference_weight(n, out_size, o, s) {
                                sum += i32::from(src[(sy * cols + sx) * 3 + c]) * w;
                            }
                        }
                        out[(y * out_cols + x) * 3 + c] = clip8(sum);
                    }
                }
            }
            out
        };
        let shrink_h = in_h as i64 - height as i64;
        let data = if shrink_h > 0 && shrink_h > (in_w as i64 - width as i64) * 2 {
            let tmp = pass(&img.data, in_h, in_w, false);
            pass(&tmp, height, in_w, true)
        } else {
            let tmp = if width != in_w {
                pass(&img.data, in_h, in_w, true)
            } else {
                img.data.clone()
            };
            if height != in_h {
                pass(&tmp, in_h, width, false)
            } else {
                tmp
            }
        };
        RgbImage {
            height,
            width,
            data,
        }
    }

    #[test]
    fn bilinear_matches_the_pixel_by_pixel_reference() {
        let cases = [
            ((13, 17), (5, 7)),
            ((13, 17), (29, 40)),
            ((20, 9), (3, 30)),
            ((40, 11), (6, 10)),
            ((7, 50), (7, 3)),
            ((31, 1), (2, 5)),
            ((1, 1), (3, 2)),
            ((64, 64), (1, 1)),
        ];
        for (seed, ((in_h, in_w), (h, w))) in cases.into_iter().enumerate() {
            let img = random_image(in_h, in_w, seed as u64);
            let fast = bilinear(&img, h, w);
            let slow = reference_bilinear(&img, h, w);
            assert_eq!(fast, slow, "{in_h}x{in_w} -> {h}x{w}");
        }
    }

    #[test]
    fn nearest_follows_pillows_running_sum_at_ties() {
        // Output 3 of 7 from 2 columns sits at (3 + 0.5) * 2/7, exactly 1, but the running
        // sum 1/7 + 2/7 + 2/7 + 2/7 comes to 0.9999999999999999: Pillow takes column 0.
        let sources = nearest_sources(2, 7);
        assert_eq!(sources[3], Some(0));
        let img = RgbImage {
            height: 1,
            width: 2,
            data: vec![10, 10, 10, 200, 200, 200],
        };
        let row: Vec<u8> = nearest(&img, 1, 7)
            .data
            .iter()
            .step_by(3)
            .copied()
            .collect();
        assert_eq!(row, [10, 10, 10, 10, 200, 200, 200]); // Pillow 13's output
    }

    #[test]
    fn nearest_running_sum_agrees_with_direct_formula_away_from_ties() {
        // Pillow accumulates the source position; the textbook formula floor((x + 0.5) * step)
        // may pick the other neighbour only where the exact position is an integer.
        for in_size in 1..60 {
            for out_size in 1..90 {
                let step = in_size as f64 / out_size as f64;
                for (x, src) in nearest_sources(in_size, out_size).into_iter().enumerate() {
                    let exact = (x as f64 + 0.5) * step;
                    let near_tie = (exact - exact.round()).abs() < 1e-9;
                    if !near_tie {
                        assert_eq!(src, Some(exact as usize), "{in_size} -> {out_size} at {x}");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (in_size, out_size) in [(4000, 224), (3000, 224), (31, 7), (7, 31), (5, 5)] {
            for t in bilinear_taps(in_size, out_size) {
                let total: i32 = t.weights.iter().sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i32);
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage {
            height: 9,
            width: 14,
            data: [10u8, 128, 255].repeat(9 * 14),
        };
        for (h, w) in [(1, 1), (4, 5), (20, 33), (9, 3)] {
            for out in [bilinear(&img, h, w), nearest(&img, h, w)] {
                assert_eq!(out.data, [10u8, 128, 255].repeat(h * w));
            }
        }
    }

    /// Run with `cargo test --release -- --ignored --nocapture`: the time to bring a
    /// 4000x3000 photo to 224x224, the VGG input size.
    #[test]
    #[ignore]
    fn bilinear_speed_photo_to_224() {
        let img = random_image(3000, 4000, 7);
        let start = std::time::Instant::now();
        let out = bilinear(&img, 224, 224);
        let bilinear_time = start.elapsed();
        let start = std::time::Instant::now();
        let _ = nearest(&img, 224, 224);
        println!(
            "4000x3000 -> 224x224: bilinear {bilinear_time:?}, nearest {:?}",
            start.elapsed()
        );
        assert_eq!(out.data.len(), 224 * 224 * 3);
    }
}
