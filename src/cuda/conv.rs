//! The convolution ladder's launch code (`kernels/conv.cu`): a direct kernel for VGG's first
//! layer, implicit GEMM on CUDA cores and tensor cores, fused max pools.
//!
//! Every rung takes NHWC activations and a Keras `(kH, kW, Cin, Cout)` kernel (a K x Cout
//! matrix), adds the bias and applies ReLU (NaN kept) when asked, and the implicit-GEMM rungs
//! can fuse VGG's 2x2/stride-2 max pool. As for the GEMM ladder, one launcher serves a GPU
//! and the CPU build, so the tests check the grid, block, shared memory and argument order a
//! GPU gets, and every size is checked here before a kernel sees it: a kernel trusts them.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::gemm::Precision;
use super::gpu::{Args, DevMem, Gpu, Launch};
use super::source::{CONV, ModuleSource};
use crate::error::{Error, Result};
use crate::tensor::ConvGeometry;

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
