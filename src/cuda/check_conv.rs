//! The convolution ladder checked against an f64 reference: the validation cases (odd shapes
//! for every machine, VGG16's layers for a GPU), the tolerance per precision, and one run of a
//! rung on a case. The tests and `keel gpu-check` share it, as `check.rs` serves the GEMM
//! ladder.

use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use super::check::{relative_error, round_tf32};
use super::conv::{
    ConvKind, ConvOperands, ConvRung, DIRECT_MAX_K, conv2d_from, kernel_for, output_dims,
};
use super::gemm::Precision;
use super::gpu::Gpu;
use super::source::ModuleSource;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{Activation, Conv2dSpec, ConvGeometry, Padding, Shape};

/// One validation shape: a convolution (stride in both axes), with or without the fused pool
/// and the bias + ReLU epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConvCase {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// 'same' padding, else 'valid'.
    pub same: bool,
    pub pool: bool,
    pub epilogue: bool,
}

impl ConvCase {
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        n: usize,
        [h, w]: [usize; 2],
        [cin, cout]: [usize; 2],
        [kh, kw]: [usize; 2],
        stride: usize,
        same: bool,
        pool: bool,
        epilogue: bool,
    ) -> ConvCase {
        ConvCase {
            n,
            h,
            w,
            cin,
            cout,
            kh,
            kw,
            stride,
            same,
            pool,
            epilogue,
        }
    }

    /// The geometry keel's layers resolve it to (TensorFlow's 'same' split).
    pub fn geometry(&self) -> Result<ConvGeometry> {
        Conv2dSpec {
            stride: [self.stride; 2],
            padding: if self.same {
                Padding::Same
            } else {
                Padding::Valid
            },
            activation: Activation::Linear,
        }
        .geometry(
            &Shape::new([self.n, self.h, self.w, self.cin]),
            &Shape::new([self.kh, self.kw, self.cin, self.cout]),
            None,
        )
    }

    /// Whether `rung` takes it (the direct kernel: small K, no pool).
    pub fn fits(&self, rung: &ConvRung) -> bool {
        (!self.pool || rung.pool)
            && (rung.kind != ConvKind::Direct || self.kh * self.kw * self.cin <= DIRECT_MAX_K)
    }
}

impl std::fmt::Display for ConvCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}x{} * {}x{}x{}x{} s{} {}{}{}",
            self.n,
            self.h,
            self.w,
            self.cin,
            self.kh,
            self.kw,
            self.cin,
            self.cout,
            self.stride,
            if self.same { "same" } else { "valid" },
            if self.epilogue { " +bias relu" } else { "" },
            if self.pool { " +pool" } else { "" },
        )
    }
}

#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    hw: [usize; 2],
    ch: [usize; 2],
    k: [usize; 2],
    stride: usize,
    same: bool,
    pool: bool,
    epilogue: bool,
) -> ConvCase {
    ConvCase::new(n, hw, ch, k, stride, same, pool, epilogue)
}

/// Odd shapes every rung is validated on (small enough for the CPU build): 1x1 images, Cin
/// not a multiple of 4 (scalar gathers) and multiples (16-byte gathers), Cout around a tile's
/// 64/128, strides, rectangular kernels, 'valid' padding, and pools over odd conv outputs
/// (whose last row or column no window covers).
pub const QUICK_CASES: &[ConvCase] = &[
    case(1, [1, 1], [1, 1], [3, 3], 1, true, false, true),
    case(2, [5, 7], [3, 5], [3, 3], 1, true, false, false),
    case(1, [7, 5], [3, 63], [3, 3], 1, false, false, true),
    case(1, [5, 5], [4, 65], [3, 3], 2, true, false, true),
    case(2, [7, 7], [16, 5], [1, 1], 1, false, false, false),
    case(1, [7, 7], [1, 65], [5, 3], 1, true, false, true),
    case(3, [3, 5], [17, 65], [3, 3], 1, true, true, true),
    case(2, [9, 9], [8, 64], [3, 3], 1, true, true, false),
    case(1, [17, 5], [33, 1], [3, 3], 1, false, true, true),
    case(1, [17, 15], [33, 63], [3, 3], 1, true, true, true),
    case(1, [9, 9], [32, 130], [3, 3], 1, true, false, true),
    case(1, [7, 7], [20, 8], [3, 3], 2, true, true, false),
];

/// VGG16's layer shapes at batch 2 on 224x224 (the block-final convs with their pool fused),
/// for a GPU: far too slow for the CPU build.
pub const VGG_CASES: &[ConvCase] = &[
    case(2, [224, 224], [3, 64], [3, 3], 1, true, false, true),
    case(2, [224, 224], [64, 64], [3, 3], 1, true, true, true),
    case(2, [112, 112], [64, 128], [3, 3], 1, true, false, true),
    case(2, [112, 112], [128, 128], [3, 3], 1, true, true, true),
    case(2, [56, 56], [128, 256], [3, 3], 1, true, false, true),
    case(2, [56, 56], [256, 256], [3, 3], 1, true, true, true),
    case(2, [28, 28], [256, 512], [3, 3], 1, true, false, true),
    case(2, [28, 28], [512, 512], [3, 3], 1, true, true, true),
    case(2, [14, 14], [512, 512], [3, 3], 1, true, true, true),
];

/// One rung on one case.
#[derive(Clone, Debug, Serialize)]
pub struct ConvValidation {
    pub rung: String,
    pub precision: &'static str,
    pub case: ConvCase,
    pub k: usize,
    /// `max |out - ref| / max |ref|`; infinite when the output holds a NaN or infinity.
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// The tolerance for a K-term convolution: the GEMM ladder's (calibrated for K up to ~1000,
/// relative to max|ref|), grown by sqrt(K / 1024) beyond that, the rate at which rounding
/// errors of a K-term fp32 sum grow relative to its typical size (VGG's K reaches 4608).
pub fn tolerance(precision: Precision, k: usize) -> f64 {
    precision.tolerance() * (k as f64 / 1024.0).sqrt().max(1.0)
}

/// The convolution (+ bias, ReLU keeping NaN, NaN-propagating 2x2 max pool) in f64: the exact
/// answer for the given (already rounded) inputs.
pub fn reference(
    g: &ConvGeometry,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
) -> Vec<f64> {
    let co = g.cout;
    let mut conv = vec![0f64; g.n * g.oh * g.ow * co];
    conv.par_chunks_mut(co).enumerate().for_each(|(p, out)| {
        let (ox, oy, b) = (p % g.ow, (p / g.ow) % g.oh, p / (g.ow * g.oh));
        for ky in 0..g.kh {
            let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.pad_top) else {
                continue;
            };
            if iy >= g.h {
                continue;
            }
            for kx in 0..g.kw {
                let Some(ix) = (ox * g.stride[1] + kx).checked_sub(g.pad_left) else {
                    continue;
                };
                if ix >= g.w {
                    continue;
                }
                let xp = &x[((b * g.h + iy) * g.w + ix) * g.cin..][..g.cin];
                for (ci, &xv) in xp.iter().enumerate() {
                    let wrow = &kernel[((ky * g.kw + kx) * g.cin + ci) * co..][..co];
                    for (o, &wv) in out.iter_mut().zip(wrow) {
                        *o += xv as f64 * wv as f64;
                    }
                }
            }
        }
        for (c, o) in out.iter_mut().enumerate() {
            if let Some(bias) = bias {
                *o += bias[c] as f64;
            }
            if relu && *o < 0.0 {
                *o = 0.0;
            }
        }
    });
    if !pool {
        return conv;
    }
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let max_nan = |a: f64, b: f64| if a > b || a.is_nan() { a } else { b };
    let mut out = vec![0f64; g.n * ph * pw * co];
    for (i, o) in out.iter_mut().enumerate() {
        let (c, px, py, b) = (
            i % co,
            (i / co) % pw,
            (i / (co * pw)) % ph,
            i / (co * pw * ph),
        );
        let at =
            |dy: usize, dx: usize| conv[((b * g.oh + 2 * py + dy) * g.ow + 2 * px + dx) * co + c];
        *o = max_nan(max_nan(at(0, 0), at(0, 1)), max_nan(at(1, 0), at(1, 1)));
    }
    out
}

/// Run `rung` on random inputs of `case` with the output poisoned with NaN first, and compare
/// it with the f64 reference of the inputs as the rung sees them.
pub fn validate(
    gpu: &Arc<Gpu>,
    rung: &ConvRung,
    case: ConvCase,
    seed: u64,
) -> Result<ConvValidation> {
    validate_from(gpu, rung.module(), rung, case, seed)
}

/// [`validate`] with the kernel from `module` (a mutated copy of `conv.cu`).
pub fn validate_from(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &ConvRung,
    case: ConvCase,
    seed: u64,
) -> Result<ConvValidation> {
    let g = case.geometry()?;
    let mut rng = Rng::new(seed);
    let mut x = rng.uniform_vec(g.n * g.h * g.w * g.cin, -1.0, 1.0);
    let mut kernel = rng.uniform_vec(g.kh * g.kw * g.cin * g.cout, -1.0, 1.0);
    let bias = rng.uniform_vec(g.cout, -1.0, 1.0);
    let out = run_case(gpu, module, rung, &g, &x, &kernel, &bias, case)?;
    // The reference sees the inputs as the tensor cores do (TF32's cvt.rna in the kernel;
    // BF16: the activations rounded to nearest even when staged, the kernel on the host), so
    // the tolerance covers the accumulation order and a misplaced fragment cannot hide in
    // input rounding.
    match rung.precision {
        Precision::Fp32 => {}
        Precision::Tf32 => {
            x.iter_mut().for_each(|v| *v = round_tf32(*v));
            kernel.iter_mut().for_each(|v| *v = round_tf32(*v));
        }
        Precision::Bf16 => {
            let r = |v: &mut f32| *v = half::bf16::from_f32(*v).to_f32();
            x.iter_mut().for_each(r);
            kernel.iter_mut().for_each(r);
        }
    }
    let e = case.epilogue;
    let want = reference(&g, &x, &kernel, e.then_some(&bias[..]), e, case.pool);
    let error = relative_error(&out, &want);
    let k = g.kh * g.kw * g.cin;
    let tolerance = tolerance(rung.precision, k);
    Ok(ConvValidation {
        rung: rung.rung.clone(),
        precision: rung.precision.name(),
        case,
        k,
        error,
        tolerance,
        passed: error <= tolerance,
    })
}

/// Upload `x`, `kernel` (as the rung takes it) and `bias`, run the rung on a NaN-poisoned
/// output and read the output back.
#[allow(clippy::too_many_arguments)]
pub fn run_case(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &ConvRung,
    g: &ConvGeometry,
    x: &[f32],
    kernel: &[f32],
    bias: &[f32],
    case: ConvCase,
) -> Result<Vec<f32>> {
    let xd = gpu.upload(x)?;
    let kd = gpu.upload(&kernel_for(rung.precision, kernel))?;
    let bd = gpu.upload(bias)?;
    let len: usize = output_dims(g, case.pool).iter().product();
    let out = gpu.alloc(len * 4)?;
    gpu.fill_bytes(&out, 0xff)?;
    conv2d_from(
        gpu,
        module,
        rung,
        &ConvOperands {
            x: &xd,
            kernel: &kd,
            bias: case.epilogue.then_some(&bd),
            out: &out,
            geometry: *g,
            relu: case.epilogue,
            pool: case.pool,
        },
    )?;
    gpu.synchronize()?;
    gpu.to_vec(&out, len)
}
