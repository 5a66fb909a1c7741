//! The GEMM ladder's launch code: which rungs exist (`kernels/gemm_rungs.json`, next to the
//! sources it describes), their geometry, and one launcher for all of them. The same launcher
//! drives a GPU and the CPU build, so the tests check the grid, block and shared memory a GPU
//! will get.
//!
//! Every rung computes `C (M x N) = A (M x K) · B (K x N)`, row-major, then adds `bias[n]` and
//! applies ReLU when asked (NaN kept), for any M, N, K ≥ 1.

use std::sync::OnceLock;

use serde::Deserialize;

use super::gpu::{Args, DevMem, Gpu, Launch};
use super::source::{GEMM, GEMM_SM90A, ModuleSource, OPS};
use super::tma;
use crate::error::{Error, Result};

/// The arithmetic a rung does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 FMAs on CUDA cores.
    Fp32,
    /// Tensor cores, inputs rounded to TF32 (10-bit mantissa), fp32 accumulation.
    Tf32,
    /// Tensor cores, bf16 inputs (converted on the host), fp32 accumulation.
    Bf16,
}

impl Precision {
    /// `fp32`, `tf32` or `bf16`, as `--precision` takes it.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::Invalid(format!(
                "unknown --precision {s}: use fp32, tf32 or bf16"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Bytes of one input element (A and B).
    pub fn input_bytes(self) -> usize {
        match self {
            Precision::Bf16 => 2,
            _ => 4,
        }
    }

    /// The documented tolerance against the fp64 reference of the *same* (already rounded)
    /// inputs, relative to `sqrt(K) * max|A| * max|B|`: fp32 accumulation error grows with
    /// K's square root at worst-case-typical rates, and tensor cores add their own rounding
    /// of products (TF32 rounds the inputs inside the kernel, so it gets more room).
    pub fn tolerance(self) -> f64 {
        match self {
            Precision::Fp32 => 1e-5,
            Precision::Tf32 => 5e-4,
            Precision::Bf16 => 1e-2,
        }
    }
}

/// One rung of the ladder, as `kernels/gemm_rungs.json` describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct Rung {
    /// The name users pick it by (`keel gpu-check --rung NAME`).
    pub rung: String,
    /// The `extern "C"` kernel.
    pub kernel: String,
    pub block: [u32; 3],
    /// Rows and columns of C per block.
    pub bm: u32,
    pub bn: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem: u32,
    pub precision: Precision,
    /// The architecture it needs: `sm_80` (any GPU keel supports) or `sm_90a` (Hopper).
    pub arch: String,
}

impl Rung {
    /// Hopper-only (wgmma fed by TMA): not on other GPUs, not in the CPU build.
    pub fn needs_hopper(&self) -> bool {
        self.arch == "sm_90a"
    }

    /// The module holding its kernel.
    pub fn module(&self) -> &'static ModuleSource {
        if self.needs_hopper() {
            &GEMM_SM90A
        } else {
            &GEMM
        }
    }

    /// The launch for an M x N output.
    pub fn launch(&self, m: usize, n: usize) -> Result<Launch> {
        let gx = n.div_ceil(self.bn as usize);
        let gy = m.div_ceil(self.bm as usize);
        if gy > 65535 || gx > i32::MAX as usize {
            return Err(Error::Invalid(format!(
                "GEMM {m}x{n} is too large for rung {} ({gy} row tiles; at most 65535)",
                self.rung
            )));
        }
        Ok(Launch {
            grid: [gx as u32, gy as u32, 1],
            block: self.block,
            dynamic_smem: self.dynamic_smem,
        })
    }
}

/// The Hopper rung: TMA descriptors for A and B, whose row pitches must be multiples of 16
/// bytes; when K or N is not a multiple of 8, A and B are first copied into zero-padded
/// buffers (zeros along K add nothing, and the kernel writes only the real N columns of C).
fn hopper(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &Rung,
    ops: &Operands,
    launch: Launch,
) -> Result<()> {
    let Operands { m, n, k, .. } = *ops;
    let (k8, n8) = (k.next_multiple_of(8), n.next_multiple_of(8));
    let padded = if (k8, n8) != (k, n) {
        Some((
            pad_u16(gpu, ops.a, [m, k], [m, k8])?,
            pad_u16(gpu, ops.b, [k, n], [k8, n8])?,
        ))
    } else {
        None
    };
    let (a, b) = padded.as_ref().map_or((ops.a, ops.b), |(a, b)| (a, b));
    let f = gpu.function(module, &rung.kernel)?;
    let ta = tma::encode(gpu, a, &tma::gemm_tile_a(m, k8))?;
    let tb = tma::encode(gpu, b, &tma::gemm_tile_b(k8, n8))?;
    let args = Args::new()
        .value(ta)
        .value(tb)
        .mem(ops.c)
        .opt(ops.bias)
        .i32(m as i32)
        .i32(n as i32)
        .i32(k8 as i32)
        .i32(ops.relu as i32);
    // SAFETY: the sm_90a GEMM kernels take (tensor map A, tensor map B, float* C,
    // const float* bias, int M, int N, int K, int relu); the maps describe A (M x K8) and
    // B (K8 x N8) in buffers of those sizes, and C's and the bias's sizes were checked by
    // the caller.
    unsafe { gpu.launch(&f, launch, args) }?;
    if padded.is_some() {
        // The padded copies are freed on return: let the kernel finish reading them.
        gpu.synchronize()?;
    }
    Ok(())
}

/// A `rows x cols` matrix of 16-bit elements copied into a zero-filled `out_rows x out_cols`
/// one on the device.
pub fn pad_u16(
    gpu: &Gpu,
    src: &DevMem,
    [rows, cols]: [usize; 2],
    [out_rows, out_cols]: [usize; 2],
) -> Result<DevMem> {
    if src.bytes() < rows * cols * 2 || out_rows < rows || out_cols < cols {
        return Err(Error::Shape(format!(
            "pad {rows}x{cols} (in {} bytes) to {out_rows}x{out_cols}",
            src.bytes()
        )));
    }
    let dst = gpu.alloc(out_rows * out_cols * 2)?;
    let f = gpu.function(&OPS, "pad_u16")?;
    let launch = gpu.grid_stride(out_rows * out_cols);
    let args = Args::new()
        .mem(src)
        .mem(&dst)
        .i32(rows as i32)
        .i32(cols as i32)
        .i32(out_rows as i32)
        .i32(out_cols as i32);
    // SAFETY: pad_u16 takes (const u16* src, u16* dst, int rows, int cols, int out_rows,
    // int out_cols); `src` holds rows x cols and `dst` out_rows x out_cols elements.
    unsafe { gpu.launch(&f, launch, args) }?;
    Ok(dst)
}

/// Every rung, in ladder order.
pub fn rungs() -> &'static [Rung] {
    static RUNGS: OnceLock<Vec<Rung>> = OnceLock::new();
    RUNGS.get_or_init(|| {
        serde_json::from_str(include_str!("../../kernels/gemm_rungs.json"))
            .expect("kernels/gemm_rungs.json is checked by the tests")
    })
}

/// The rung called `name`.
pub fn rung(name: &str) -> Result<&'static Rung> {
    rungs().iter().find(|r| r.rung == name).ok_or_else(|| {
        let names: Vec<&str> = rungs().iter().map(|r| r.rung.as_str()).collect();
        Error::Invalid(format!(
            "unknown GEMM rung '{name}': use one of {}",
            names.join(", ")
        ))
    })
}

/// The best rung of a precision that runs anywhere (the last of the ladder that does). The
/// Hopper rung is picked only by name: it has not yet passed `keel gpu-check` on a GPU.
pub fn best(precision: Precision) -> &'static Rung {
    rungs()
        .iter()
        .rev()
        .find(|r| r.precision == precision && !r.needs_hopper())
        .expect("every precision has a rung that runs anywhere")
}

/// Operands of one GEMM on the device. A and B hold f32, or bf16 bits for a BF16 rung.
pub struct Operands<'a> {
    pub a: &'a DevMem,
    pub b: &'a DevMem,
    pub c: &'a DevMem,
    pub bias: Option<&'a DevMem>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub relu: bool,
}

/// Launch `rung` on `ops` (asynchronously on a GPU).
pub fn gemm(gpu: &Gpu, rung: &Rung, ops: &Operands) -> Result<()> {
    gemm_from(gpu, rung.module(), rung, ops)
}

/// [`gemm`] with the rung's kernel taken from `module`, another build of its source (the
/// mutation checks run deliberately broken copies through the same launch code).
pub fn gemm_from(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &Rung,
    ops: &Operands,
) -> Result<()> {
    let Operands {
        a,
        b,
        c,
        bias,
        m,
        n,
        k,
        relu,
    } = *ops;
    if m == 0 || n == 0 || k == 0 || [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::Shape(format!(
            "GEMM {m}x{n}x{k}: every size must be between 1 and 2^31-1"
        )));
    }
    let e = rung.precision.input_bytes();
    let need = |what: &str, mem: &DevMem, bytes: usize| {
        if mem.bytes() < bytes {
            Err(Error::Shape(format!(
                "GEMM {m}x{n}x{k}: {what} holds {} bytes, needs {bytes}",
                mem.bytes()
            )))
        } else {
            Ok(())
        }
    };
    need("A", a, m * k * e)?;
    need("B", b, k * n * e)?;
    need("C", c, m * n * 4)?;
    if let Some(bias) = bias {
        need("bias", bias, n * 4)?;
    }
    let launch = rung.launch(m, n)?;
    let (m32, n32, k32) = (m as i32, n as i32, k as i32);
    if rung.needs_hopper() {
        return hopper(gpu, module, rung, ops, launch);
    }
    let f = gpu.function(module, &rung.kernel)?;
    let args = Args::new()
        .mem(a)
        .mem(b)
        .mem(c)
        .opt(bias)
        .i32(m32)
        .i32(n32)
        .i32(k32)
        .i32(relu as i32);
    // SAFETY: every ladder kernel takes (A, B, float* C, const float* bias, int M, int N,
    // int K, int relu) with A and B of the rung's input type (kernels/README.md); the
    // buffers' sizes for this M, N, K were checked above.
    unsafe { gpu.launch(&f, launch, args) }
}
