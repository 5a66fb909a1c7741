//! The convolution ladder's launch code (`kernels/conv.cu`): a direct kernel for VGG's first
//! layer, implicit GEMM on CUDA cores and tensor cores, fused max pools.
//!
//! Every rung takes NHWC activations and a Keras `(kH, kW, Cin, Cout)` kernel (a K x Cout
//! matrix), adds the bias and applies ReLU (NaN kept) when asked, and the implicit-GEMM rungs
//! can fuse VGG's 2x2/stride-2 max pool. As for the GEMM ladder, one launcher serves a GPU
//! and the CPU build, so the tests check the grid, block, shared memory and argument order a
//! GPU gets, and every size is checked here before a kernel sees it: a kernel trusts them.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::check::{relative_error, round_tf32};
use super::gemm::Precision;
use super::gpu::{Args, DevMem, Gpu, Launch};
use super::source::{CONV, ModuleSource};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Activation, Conv2dSpec, ConvGeometry, Padding, Shape};

/// The largest `kh * kw * Cin` the direct kernel holds in shared memory (64 floats per output
/// channel, 16 KiB per 64-channel slice): VGG's first layer has 27.
pub const DIRECT_MAX_K: usize = 64;

/// How a rung computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvKind {
    /// The whole kernel in shared memory, a thread per (pixel, 16 channels): small K only.
    Direct,
    /// A tiled GEMM whose A tile is gathered from the input on the fly.
    Igemm,
}

/// One rung, as `kernels/conv_rungs.json` describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct ConvRung {
    /// The name users pick it by.
    pub rung: String,
    /// The `extern "C"` kernel in `kernels/conv.cu`.
    pub kernel: String,
    pub kind: ConvKind,
    pub block: [u32; 3],
    /// Output rows (pixels, or pooled windows x 4) and output channels per block.
    pub bm: u32,
    pub bn: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem: u32,
    pub precision: Precision,
    /// Whether it can fuse the 2x2/stride-2 max pool.
    pub pool: bool,
}

impl ConvRung {
    /// The module holding its kernel.
    pub fn module(&self) -> &'static ModuleSource {
        &CONV
    }
}

/// Every rung, in ladder order.
pub fn rungs() -> &'static [ConvRung] {
    static RUNGS: OnceLock<Vec<ConvRung>> = OnceLock::new();
    RUNGS.get_or_init(|| {
        serde_json::from_str(include_str!("../../kernels/conv_rungs.json"))
            .expect("kernels/conv_rungs.json is checked by the tests")
    })
}

/// The rung called `name`.
pub fn rung(name: &str) -> Result<&'static ConvRung> {
    rungs().iter().find(|r| r.rung == name).ok_or_else(|| {
        let names: Vec<&str> = rungs().iter().map(|r| r.rung.as_str()).collect();
        Error::Invalid(format!(
            "unknown convolution rung '{name}': use one of {}",
            names.join(", ")
        ))
    })
}

/// The rung to use: the direct kernel where a GEMM's k tiles would be mostly empty (VGG's
/// first layer, Cin <= 4, when it fits and nothing is fused), else the implicit GEMM of
/// `precision`.
pub fn best(precision: Precision, g: &ConvGeometry, pool: bool) -> &'static ConvRung {
    let direct = rungs().iter().find(|r| r.kind == ConvKind::Direct);
    if let Some(d) = direct
        && !pool
        && g.cin <= 4
        && g.kh * g.kw * g.cin <= DIRECT_MAX_K
    {
        return d;
    }
    rungs()
        .iter()
        .find(|r| r.kind == ConvKind::Igemm && r.precision == precision)
        .expect("every precision has an implicit-GEMM rung")
}

/// The kernel `(kH, kW, Cin, Cout)` as the rungs of `precision` read it: f32 bytes, or bf16
/// bits (round to nearest even) for BF16, whose tensor cores take it as it is in memory.
pub fn kernel_for(precision: Precision, kernel: &[f32]) -> Vec<u8> {
    match precision {
        Precision::Bf16 => kernel
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        Precision::Fp32 | Precision::Tf32 => bytemuck::cast_slice(kernel).to_vec(),
    }
}

/// The output's NHWC shape: the convolution's, or with `pool` the 2x2/stride-2 'valid' max
/// pool of it (odd sizes floored, as Keras does).
pub fn output_dims(g: &ConvGeometry, pool: bool) -> [usize; 4] {
    if pool {
        [g.n, g.oh / 2, g.ow / 2, g.cout]
    } else {
        [g.n, g.oh, g.ow, g.cout]
    }
}

/// Operands of one convolution on the device.
pub struct ConvOperands<'a> {
    /// NHWC f32 input.
    pub x: &'a DevMem,
    /// The `(kH, kW, Cin, Cout)` kernel as [`kernel_for`] prepares it for the rung.
    pub kernel: &'a DevMem,
    pub bias: Option<&'a DevMem>,
    /// NHWC f32 output of [`output_dims`].
    pub out: &'a DevMem,
    pub geometry: ConvGeometry,
    pub relu: bool,
    /// Fuse the 2x2/stride-2 'valid' max pool (after bias and ReLU).
    pub pool: bool,
}

/// Launch `rung` on `ops` (asynchronously on a GPU).
pub fn conv2d(gpu: &Gpu, rung: &ConvRung, ops: &ConvOperands) -> Result<()> {
    conv2d_from(gpu, rung.module(), rung, ops)
}

/// [`conv2d`] with the kernel taken from `module`, another build of `conv.cu` (the mutation
/// checks run deliberately broken copies through the same launch code).
pub fn conv2d_from(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &ConvRung,
    ops: &ConvOperands,
) -> Result<()> {
    let g = &ops.geometry;
    let kernel = rung.kernel.as_str();
    let bad = |why: String| Err(Error::Invalid(format!("{kernel}: {why}")));
    let dims = [g.n, g.h, g.w, g.cin, g.cout, g.kh, g.kw, g.oh, g.ow];
    if dims.contains(&0) || g.stride.contains(&0) {
        return bad(format!("every size must be at least 1 ({g:?})"));
    }
    // The kernels index in 32-bit ints (64-bit only for the final addresses), and mark
    // padding with offsets of 2^29 (kernels/conv.cu's conv_tap_or_none).
    let small = 1 << 24;
    if [g.h, g.w, g.kh, g.kw, g.pad_top, g.pad_left, g.oh, g.ow]
        .iter()
        .any(|&d| d >= small)
        || g.stride.iter().any(|&s| s >= small)
        || (g.oh - 1) * g.stride[0] >= small
        || (g.ow - 1) * g.stride[1] >= small
    {
        return bad(format!("spatial sizes must be below 2^24 ({g:?})"));
    }
    let k = g.kh * g.kw * g.cin;
    let pixels = g.n * g.oh * g.ow;
    if [k, pixels, g.n * g.h, g.cout]
        .iter()
        .any(|&d| d > i32::MAX as usize)
    {
        return bad(format!("too large for 32-bit indexing ({g:?})"));
    }
    if ops.pool {
        if !rung.pool {
            return bad(format!(
                "rung {} cannot fuse a max pool (use an implicit-GEMM rung)",
                rung.rung
            ));
        }
        if g.oh < 2 || g.ow < 2 {
            return bad(format!(
                "a 2x2 max pool needs a conv output of at least 2x2, not {}x{}",
                g.oh, g.ow
            ));
        }
    }
    let [on, ooh, oow, oc] = output_dims(g, ops.pool);
    let need = |what: &str, mem: &DevMem, bytes: usize| {
        if mem.bytes() < bytes {
            bad(format!(
                "the {what} holds {} bytes, needs {bytes} for {}x{}x{}x{} -> {on}x{ooh}x{oow}x{oc}",
                mem.bytes(),
                g.n,
                g.h,
                g.w,
                g.cin
            ))
        } else {
            Ok(())
        }
    };
    need("input", ops.x, g.n * g.h * g.w * g.cin * 4)?;
    need(
        "kernel",
        ops.kernel,
        k * g.cout * rung.precision.input_bytes(),
    )?;
    need("output", ops.out, on * ooh * oow * oc * 4)?;
    if let Some(b) = ops.bias {
        need("bias", b, g.cout * 4)?;
    }
    let rows = if ops.pool { 4 * on * ooh * oow } else { pixels };
    let (row_tiles, col_tiles) = (
        rows.div_ceil(rung.bm as usize),
        g.cout.div_ceil(rung.bn as usize),
    );
    let grid = match rung.kind {
        ConvKind::Direct => {
            if k > DIRECT_MAX_K {
                return bad(format!(
                    "the direct kernel holds kh*kw*Cin <= {DIRECT_MAX_K} weights per channel; \
                     this layer has {}x{}x{} = {k} (use an implicit-GEMM rung)",
                    g.kh, g.kw, g.cin
                ));
            }
            [row_tiles, col_tiles]
        }
        ConvKind::Igemm => [col_tiles, row_tiles],
    };
    if grid[0] > i32::MAX as usize || grid[1] > 65535 {
        return bad(format!(
            "{rows} output rows x {} channels need a grid of {grid:?}; at most [2^31-1, 65535]",
            g.cout
        ));
    }
    let launch = Launch {
        grid: [grid[0] as u32, grid[1] as u32, 1],
        block: rung.block,
        dynamic_smem: rung.dynamic_smem,
    };
    let f = gpu.function(module, kernel)?;
    let args = Args::new()
        .mem(ops.x)
        .mem(ops.kernel)
        .opt(ops.bias)
        .mem(ops.out)
        .i32s(&[
            g.n,
            g.h,
            g.w,
            g.cin,
            g.cout,
            g.kh,
            g.kw,
            g.stride[0],
            g.stride[1],
            g.pad_top,
            g.pad_left,
            g.oh,
            g.ow,
        ])
        .i32(ops.relu as i32)
        .i32(ops.pool as i32);
    // SAFETY: every conv.cu kernel takes (const float* x, const W* wgt, const float* bias,
    // float* y, 13 ints of geometry, int relu, int pool), W of the rung's input type; the
    // buffers' sizes for this geometry, the 32-bit ranges the kernels index in and the direct
    // kernel's K limit were all checked above.
    unsafe { gpu.launch(&f, launch, args) }
}

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
