//! Direct convolution for layers with few input channels, VGG's block1_conv1 above all
//! (3 channels, so K = 27 per output: too shallow for GEMM blocking or Winograd to pay).
//!
//! A strip of `P` output pixels times 16 output channels is accumulated in registers over the
//! `kh * kw * Cin` taps: each step loads 16 weights once and broadcasts one input value per
//! pixel. The strip's input values are gathered once, tap-major, so the broadcasts of one tap
//! are adjacent; the weights (27 x 64 floats for block1_conv1) stay in L1.

use rayon::prelude::*;

use crate::cpu::isa::Isa;
use crate::cpu::stream;
use crate::tensor::ConvGeometry;

/// Output pixels per strip: 6 pixels x 2 AVX2 vectors = 12 accumulator registers.
const P: usize = 6;
const LANES: usize = 16;

/// `out = act(conv(x, kernel) + bias)` for NHWC `x` under `g`; `out` is NHWC `(n, oh, ow, cout)`.
pub fn conv_direct(
    isa: Isa,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &ConvGeometry,
    out: &mut [f32],
) {
    let taps = g.kh * g.kw * g.cin;
    // The kernel with Cout padded to whole vectors, so the strip never reads past a row.
    let cpad = g.cout.next_multiple_of(LANES);
    let mut kp = vec![0f32; taps * cpad];
    for t in 0..taps {
        kp[t * cpad..t * cpad + g.cout].copy_from_slice(&kernel[t * g.cout..][..g.cout]);
    }
    let mut bp = vec![0f32; cpad];
    if let Some(b) = bias {
        bp[..g.cout].copy_from_slice(b);
    }
    let use_avx2 = isa.runs_avx2();
    let stream = stream::worth_streaming(std::mem::size_of_val(out));
    out.par_chunks_mut(g.ow * g.cout)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            let mut xs = vec![0f32; taps * P];
            for ox0 in (0..g.ow).step_by(P) {
                let px = P.min(g.ow - ox0);
                gather(x, g, n, oy, ox0, px, &mut xs);
                for c0 in (0..g.cout).step_by(LANES) {
                    let b: &[f32; LANES] = bp[c0..c0 + LANES].try_into().expect("16 lanes");
                    let acc = if use_avx2 {
                        #[cfg(target_arch = "x86_64")]
                        {
                            // SAFETY: AVX2 and FMA are available (`use_avx2`); `xs` holds
                            // taps * P values and `kp` taps rows of `cpad >= c0 + 16` floats.
                            unsafe { strip_avx2(&xs, &kp[c0..], taps, cpad, b, relu) }
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        unreachable!("no AVX2 off x86-64")
                    } else {
                        strip_generic(&xs, &kp[c0..], taps, cpad, b, relu)
                    };
                    let lanes = LANES.min(g.cout - c0);
                    for (p, acc) in acc.iter().enumerate().take(px) {
                        let o = &mut out_row[(ox0 + p) * g.cout + c0..];
                        if lanes == LANES {
                            stream::store16(o, acc, stream);
                        } else {
                            o[..lanes].copy_from_slice(&acc[..lanes]);
                        }
                    }
                }
            }
            stream::fence();
        });
}

/// The strip's input values, tap-major: `xs[t * P + p]`, zero for padding and past the row.
#[allow(clippy::too_many_arguments)]
fn gather(x: &[f32], g: &ConvGeometry, n: usize, oy: usize, ox0: usize, px: usize, xs: &mut [f32]) {
    xs.fill(0.0);
    for ky in 0..g.kh {
        let Some(iy) = (oy * g.stride[0] + ky)
            .checked_sub(g.pad_top)
            .filter(|&i| i < g.h)
        else {
            continue;
        };
        for kx in 0..g.kw {
            let t0 = (ky * g.kw + kx) * g.cin;
            for p in 0..px {
                let Some(ix) = ((ox0 + p) * g.stride[1] + kx)
                    .checked_sub(g.pad_left)
                    .filter(|&i| i < g.w)
                else {
                    continue;
                };
                let src = &x[((n * g.h + iy) * g.w + ix) * g.cin..][..g.cin];
                for (ci, &v) in src.iter().enumerate() {
                    xs[(t0 + ci) * P + p] = v;
                }
            }
        }
    }
}

/// 16 output channels of the strip in AVX2 registers (12 accumulators, 2 weight vectors,
/// 1 broadcast), then `+ bias` and ReLU.
///
/// # Safety
/// AVX2 and FMA must be available; `xs` holds `taps * P` floats and `kp` holds `taps` rows,
/// `stride` apart, of at least 16 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn strip_avx2(
    xs: &[f32],
    kp: &[f32],
    taps: usize,
    stride: usize,
    bias: &[f32; LANES],
    relu: bool,
) -> [[f32; LANES]; P] {
    use std::arch::x86_64::*;
    assert!(xs.len() >= taps * P && (taps == 0 || kp.len() >= (taps - 1) * stride + LANES));
    let mut acc = [[_mm256_setzero_ps(); 2]; P];
    let (xp, kpp) = (xs.as_ptr(), kp.as_ptr());
    for t in 0..taps {
        // SAFETY: t < taps, so the weight row and the P values of tap t are in bounds (asserted).
        unsafe {
            let w0 = _mm256_loadu_ps(kpp.add(t * stride));
            let w1 = _mm256_loadu_ps(kpp.add(t * stride + 8));
            for (p, acc) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*xp.add(t * P + p));
                acc[0] = _mm256_fmadd_ps(v, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(v, w1, acc[1]);
            }
        }
    }
    let mut out = [[0f32; LANES]; P];
    // SAFETY: `bias` and each row of `out` hold 16 floats.
    unsafe {
        let b = [
            _mm256_loadu_ps(bias.as_ptr()),
            _mm256_loadu_ps(bias.as_ptr().add(8)),
        ];
        for (o, a) in out.iter_mut().zip(&acc) {
            for h in 0..2 {
                let mut v = _mm256_add_ps(a[h], b[h]);
                if relu {
                    // max(0, v) keeps NaN (the second operand), as the reference does.
                    v = _mm256_max_ps(_mm256_setzero_ps(), v);
                }
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), v);
            }
        }
    }
    out
}

/// The same in plain Rust, for CPUs without AVX2.
fn strip_generic(
    xs: &[f32],
    kp: &[f32],
    taps: usize,
    stride: usize,
    bias: &[f32; LANES],
    relu: bool,
) -> [[f32; LANES]; P] {
    let mut acc = [[0f32; LANES]; P];
    for t in 0..taps {
        let w = &kp[t * stride..][..LANES];
        for p in 0..P {
            let v = xs[t * P + p];
            for l in 0..LANES {
                acc[p][l] += v * w[l];
            }
        }
    }
    for a in acc.iter_mut() {
        for (v, b) in a.iter_mut().zip(bias) {
            *v += b;
            if relu && *v < 0.0 {
                *v = 0.0;
            }
        }
    }
    acc
}
