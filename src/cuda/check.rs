//! `keel gpu-check`: every kernel validated against keel's CPU reference on the device, then
//! the GEMM ladder timed next to cuBLAS in the same math mode. The validation half is plain
//! code over [`Gpu`], so the tests run it on the CPU build too.

use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use super::backend::CudaBackend;
use super::cublas::Cublas;
use super::gemm::{self, Operands, Precision, Rung};
use super::gpu::{DevMem, Gpu};
use super::source::ModuleSource;
use crate::cpu::CpuReference;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{
    Activation, Backend, Conv2dSpec, GlobalPool, LayerParams, Padding, Pool2dSpec, Tensor,
};

/// Odd and ragged GEMM sizes `(M, N, K)` every rung is validated on: 1x1x1, sizes below one
/// tile, K not a multiple of any tile, several tiles with ragged edges.
pub const QUICK_SIZES: &[[usize; 3]] = &[
    [1, 1, 1],
    [3, 5, 7],
    [17, 63, 33],
    [63, 47, 130],
    [130, 129, 65],
];

/// More sizes for a GPU, where they are cheap.
pub const FULL_SIZES: &[[usize; 3]] = &[
    [257, 255, 129],
    [1000, 999, 1001],
    [1, 777, 300],
    [513, 1, 64],
];

/// Round to TF32 as `cvt.rna.tf32.f32` does: 10 mantissa bits, ties away from zero.
pub fn round_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits().wrapping_add(0x1000)) & 0xffff_e000)
}

/// `C = A·B (+ bias) (ReLU)` in f64, row-major.
pub fn reference_gemm(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    [m, n, k]: [usize; 3],
    relu: bool,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for p in 0..k {
            let av = a[i * k + p] as f64;
            for (j, cv) in row.iter_mut().enumerate() {
                *cv += av * b[p * n + j] as f64;
            }
        }
        for (j, cv) in row.iter_mut().enumerate() {
            if let Some(bias) = bias {
                *cv += bias[j] as f64;
            }
            if relu && *cv < 0.0 {
                *cv = 0.0;
            }
        }
    });
    c
}

/// One rung on one size.
#[derive(Clone, Debug, Serialize)]
pub struct Validation {
    pub rung: String,
    pub precision: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub epilogue: bool,
    /// `max |C - ref| / max |ref|`; infinite when C holds a NaN or infinity.
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// Device buffers with the inputs of one GEMM, as the rung's precision takes them, and the
/// (equally rounded) host copies the reference uses.
pub struct GemmInputs {
    pub a: DevMem,
    pub b: DevMem,
    pub bias: DevMem,
    pub c: DevMem,
    pub host_a: Vec<f32>,
    pub host_b: Vec<f32>,
    pub host_bias: Vec<f32>,
}

/// Random inputs in [-1, 1) for `[m, n, k]` in `precision` (seeded; never all zero).
pub fn inputs(
    gpu: &Gpu,
    precision: Precision,
    [m, n, k]: [usize; 3],
    seed: u64,
) -> Result<GemmInputs> {
    let mut rng = Rng::new(seed);
    let mut host_a = rng.uniform_vec(m * k, -1.0, 1.0);
    let mut host_b = rng.uniform_vec(k * n, -1.0, 1.0);
    let host_bias = rng.uniform_vec(n, -1.0, 1.0);
    let (a, b) = match precision {
        Precision::Bf16 => {
            let to = |v: &mut Vec<f32>| -> Vec<u16> {
                v.iter_mut()
                    .map(|x| {
                        let h = half::bf16::from_f32(*x);
                        *x = h.to_f32();
                        h.to_bits()
                    })
                    .collect()
            };
            let (ba, bb) = (to(&mut host_a), to(&mut host_b));
            (gpu.upload(&ba)?, gpu.upload(&bb)?)
        }
        Precision::Tf32 | Precision::Fp32 => {
            let a = gpu.upload(&host_a)?;
            let b = gpu.upload(&host_b)?;
            if precision == Precision::Tf32 {
                // The reference sees the inputs as the tensor cores do, so the tolerance covers
                // the accumulation order, and a wrong fragment cannot hide in rounding noise.
                host_a.iter_mut().for_each(|x| *x = round_tf32(*x));
                host_b.iter_mut().for_each(|x| *x = round_tf32(*x));
            }
            (a, b)
        }
    };
    let bias = gpu.upload(&host_bias)?;
    let c = gpu.alloc(m * n * 4)?;
    Ok(GemmInputs {
        a,
        b,
        bias,
        c,
        host_a,
        host_b,
        host_bias,
    })
}

/// Run `rung` on random `[m, n, k]` with the output poisoned with NaN first, and compare it
/// with the f64 reference.
pub fn validate(
    gpu: &Gpu,
    rung: &Rung,
    size: [usize; 3],
    epilogue: bool,
    seed: u64,
) -> Result<Validation> {
    validate_from(gpu, rung.module(), rung, size, epilogue, seed)
}

/// [`validate`] with the kernel from `module` (a mutated copy of the ladder's source).
pub fn validate_from(
    gpu: &Gpu,
    module: &'static ModuleSource,
    rung: &Rung,
    size: [usize; 3],
    epilogue: bool,
    seed: u64,
) -> Result<Validation> {
    let [m, n, k] = size;
    let x = inputs(gpu, rung.precision, size, seed)?;
    gpu.fill_bytes(&x.c, 0xff)?;
    gemm::gemm_from(
        gpu,
        module,
        rung,
        &Operands {
            a: &x.a,
            b: &x.b,
            c: &x.c,
            bias: epilogue.then_some(&x.bias),
            m,
            n,
            k,
            relu: epilogue,
        },
    )?;
    gpu.synchronize()?;
    let got: Vec<f32> = gpu.to_vec(&x.c, m * n)?;
    let want = reference_gemm(
        &x.host_a,
        &x.host_b,
        epilogue.then_some(&x.host_bias[..]),
        size,
        epilogue,
    );
    let error = relative_error(&got, &want);
    let tolerance = rung.precision.tolerance();
    Ok(Validation {
        rung: rung.rung.clone(),
        precision: rung.precision.name(),
        m,
        n,
        k,
        epilogue,
        error,
        tolerance,
        passed: error <= tolerance,
    })
}

/// `max |got - want| / max |want|`, infinite if `got` holds anything non-finite (NaN never
/// passes).
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0f64, |s, v| s.max(v.abs())).max(1e-30);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |s, (&g, &w)| s.max((g as f64 - w).abs()));
    diff / scale
}

/// The rungs that run on `gpu`.
pub fn runnable(gpu: &Gpu) -> Vec<&'static Rung> {
    gemm::rungs()
        .iter()
        .filter(|r| !r.needs_hopper() || gpu.arch() == "sm_90a")
        .collect()
}

/// One op of the backend compared with the CPU reference backend.
#[derive(Clone, Debug, Serialize)]
pub struct OpValidation {
    pub op: String,
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// `got` (on the device) against the CPU's `want`: `max |got - want| / max |want|`, infinite
/// on a NaN.
fn op_validation(
    cuda: &CudaBackend,
    op: &str,
    got: Tensor,
    want: &Tensor,
    tolerance: f64,
) -> Result<OpValidation> {
    let got = cuda.to_host(got)?;
    if got.dims() != want.dims() {
        return Err(Error::Shape(format!(
            "{op}: {} on the device, {} on the CPU",
            got.shape(),
            want.shape()
        )));
    }
    let w: Vec<f64> = want.data().iter().map(|&v| v as f64).collect();
    let error = relative_error(got.data(), &w);
    Ok(OpValidation {
        op: op.into(),
        error,
        tolerance,
        passed: error <= tolerance,
    })
}

/// The backend's ops on small odd shapes against [`CpuReference`]: convolutions (same and
/// valid padding, stride 2, a 1x1), pools, dense, softmax, global pools, ReLU and mul.
pub fn validate_backend(gpu: &Arc<Gpu>) -> Result<Vec<OpValidation>> {
    let cuda = CudaBackend::new(gpu.clone());
    let cpu = CpuReference;
    let mut rng = Rng::new(7);
    let mut tensor = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), &rng.uniform_vec(n, -1.0, 1.0))
    };
    let mut out = Vec::new();
    let mut compare =
        |op: &str, got: Result<Tensor>, want: Result<Tensor>, tol: f64| -> Result<()> {
            out.push(op_validation(&cuda, op, got?, &want?, tol)?);
            Ok(())
        };
    let fp32 = Precision::Fp32.tolerance();
    let x = tensor(&[2, 9, 7, 5])?;
    let xd = cuda.upload(x.clone())?;
    let convs = [
        ("conv 3x3 same relu", [3, 3, 5, 6], Conv2dSpec::same_relu()),
        (
            "conv 3x3 valid stride 2",
            [3, 3, 5, 4],
            Conv2dSpec {
                stride: [2, 2],
                padding: Padding::Valid,
                activation: Activation::Linear,
            },
        ),
        (
            "conv 1x1",
            [1, 1, 5, 3],
            Conv2dSpec {
                stride: [1, 1],
                padding: Padding::Same,
                activation: Activation::Relu,
            },
        ),
    ];
    for (name, kshape, spec) in convs {
        let w = LayerParams::new(tensor(&kshape)?, Some(tensor(&kshape[3..])?));
        let w2 = w.clone();
        compare(
            name,
            cuda.conv2d(&xd, &w, &spec),
            cpu.conv2d(&x, &w2, &spec),
            fp32,
        )?;
    }
    let pools = [
        ("max pool 2x2", Pool2dSpec::vgg()),
        (
            "max pool 3x3 stride 2 same",
            Pool2dSpec {
                size: [3, 3],
                stride: [2, 2],
                padding: Padding::Same,
            },
        ),
    ];
    for (name, spec) in pools {
        compare(
            name,
            cuda.max_pool2d(&xd, &spec),
            cpu.max_pool2d(&x, &spec),
            0.0,
        )?;
    }
    for (name, kind) in [
        ("global avg pool", GlobalPool::Avg),
        ("global max pool", GlobalPool::Max),
    ] {
        compare(
            name,
            cuda.global_pool(&xd, kind),
            cpu.global_pool(&x, kind),
            fp32,
        )?;
    }
    compare("relu", cuda.relu(&xd), cpu.relu(&x), 0.0)?;
    let mask = tensor(&[2, 9, 7, 5])?;
    let maskd = cuda.upload(mask.clone())?;
    compare("mul", cuda.mul(&xd, &maskd), cpu.mul(&x, &mask), 0.0)?;
    let v = tensor(&[3, 37])?;
    let vd = cuda.upload(v.clone())?;
    let w = LayerParams::new(tensor(&[37, 11])?, Some(tensor(&[11])?));
    let w2 = w.clone();
    compare(
        "dense relu",
        cuda.dense(&vd, &w, Activation::Relu),
        cpu.dense(&v, &w2, Activation::Relu),
        fp32,
    )?;
    compare("softmax", cuda.softmax(&vd), cpu.softmax(&v), 1e-6)?;
    Ok(out)
}

/// One timed GEMM.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// A rung's name, or `cublas`.
    pub rung: String,
    pub precision: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Median over `runs` timed runs (CUDA events, L2 flushed before each).
    pub ms: f64,
    pub runs: usize,
    pub gflops: f64,
    /// Against cuBLAS in the same precision and size, same run.
    pub pct_cublas: Option<f64>,
    /// Against the device's dense peak for the precision at its maximum clock.
    pub pct_peak: Option<f64>,
}

/// Dense peak GFLOP/s for `precision`: FLOPs per clock per SM by architecture (the vendor's
/// datasheet figures) times SMs times the maximum clock.
pub fn peak_gflops(gpu: &Gpu, precision: Precision) -> Option<f64> {
    let d = gpu.cuda_device()?;
    let per_sm_clk = match (d.compute_capability, precision) {
        ((9, 0), Precision::Fp32) => 256.0,
        ((9, 0), Precision::Tf32) => 2048.0,
        ((9, 0), Precision::Bf16) => 4096.0,
        ((8, 0), Precision::Fp32) => 128.0,
        ((8, 0), Precision::Tf32) => 512.0,
        ((8, 0), Precision::Bf16) => 1024.0,
        _ => return None,
    };
    Some(per_sm_clk * d.sm_count as f64 * d.clock_khz as f64 * 1e3 / 1e9)
}

/// Time `run` (one GEMM launch) with CUDA events: two warm-ups, then runs until 1.5 s of GPU
/// time or 30 runs (at least 5), each after overwriting an L2-sized buffer so every run
/// starts with a cold cache.
pub fn time(
    gpu: &Gpu,
    flush: &DevMem,
    mut run: impl FnMut() -> Result<()>,
) -> Result<(f64, usize)> {
    let d = gpu
        .cuda_device()
        .ok_or_else(|| Error::cuda("cuEventRecord", "timing needs a real GPU"))?;
    let (start, end) = (d.timing_event()?, d.timing_event()?);
    for _ in 0..2 {
        run()?;
    }
    gpu.synchronize()?;
    let mut times = Vec::new();
    let mut total = 0.0;
    while times.len() < 5 || (total < 1500.0 && times.len() < 30) {
        gpu.fill_bytes(flush, times.len() as u8)?;
        start
            .record(&d.stream)
            .map_err(|e| Error::cuda("cuEventRecord", format!("{e:?}")))?;
        run()?;
        end.record(&d.stream)
            .map_err(|e| Error::cuda("cuEventRecord", format!("{e:?}")))?;
        end.synchronize()
            .map_err(|e| Error::cuda("cuEventSynchronize", format!("{e:?}")))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| Error::cuda("cuEventElapsedTime", format!("{e:?}")))?
            as f64;
        total += ms;
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times.len()))
}

/// Time every runnable rung and cuBLAS at `size`, in ladder order, cuBLAS first per
/// precision so each rung's share of it comes from the same run.
pub fn time_ladder(gpu: &Gpu, size: [usize; 3], rungs: &[&Rung]) -> Result<Vec<Timing>> {
    let [m, n, k] = size;
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    let l2 = gpu.cuda_device().map_or(64 << 20, |d| d.l2_bytes as usize);
    let flush = gpu.alloc((2 * l2).max(1 << 20))?;
    let blas = Cublas::new(gpu)?;
    let mut out = Vec::new();
    for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let mine: Vec<&&Rung> = rungs.iter().filter(|r| r.precision == precision).collect();
        if mine.is_empty() {
            continue;
        }
        let x = inputs(gpu, precision, size, 1)?;
        let peak = peak_gflops(gpu, precision);
        let (ms, runs) = time(gpu, &flush, || {
            blas.gemm(precision, &x.a, &x.b, &x.c, m, n, k)
        })?;
        let row = |rung: &str, ms: f64, runs: usize, base: Option<f64>| {
            let gflops = flops / (ms * 1e6);
            Timing {
                rung: rung.into(),
                precision: precision.name(),
                m,
                n,
                k,
                ms,
                runs,
                gflops,
                pct_cublas: base.map(|b| 100.0 * b / ms),
                pct_peak: peak.map(|p| 100.0 * gflops / p),
            }
        };
        out.push(row("cublas", ms, runs, None));
        for r in mine {
            let ops = Operands {
                a: &x.a,
                b: &x.b,
                c: &x.c,
                bias: None,
                m,
                n,
                k,
                relu: false,
            };
            let (rms, rruns) = time(gpu, &flush, || gemm::gemm(gpu, r, &ops))?;
            out.push(row(&r.rung, rms, rruns, Some(ms)));
        }
    }
    Ok(out)
}

/// The training ops on small odd shapes against [`CpuReference`]: the backward passes of a
/// convolution (with its ReLU), a dense layer, the pools and ReLU, softmax cross-entropy and an
/// Adam step, so a GPU (and compute-sanitizer) runs every kernel of `kernels/train.cu`.
pub fn validate_training(gpu: &Arc<Gpu>) -> Result<Vec<OpValidation>> {
    use crate::tensor::{AdamStep, Wanted};
    let cuda = CudaBackend::new(gpu.clone());
    let cpu = CpuReference;
    let mut rng = Rng::new(17);
    let mut tensor = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), &rng.uniform_vec(n, -1.0, 1.0))
    };
    let mut out = Vec::new();
    let mut compare = |op: &str, got: Tensor, want: &Tensor, tol: f64| -> Result<()> {
        out.push(op_validation(&cuda, op, got, want, tol)?);
        Ok(())
    };
    let up = |t: &Tensor| cuda.upload(t.clone());
    // A different summation order over at most a few hundred terms.
    let fp32 = Precision::Fp32.tolerance();

    let (x, w) = (tensor(&[2, 9, 7, 5])?, tensor(&[3, 3, 5, 6])?);
    let b = tensor(&[6])?;
    let spec = Conv2dSpec::same_relu();
    let (wc, wg) = (
        LayerParams::new(w.clone(), Some(b.clone())),
        LayerParams::new(w, Some(b)),
    );
    let y = cpu.conv2d(&x, &wc, &spec)?;
    let dy = tensor(y.dims())?;
    let want = cpu.conv2d_backward(&x, &y, &dy, &wc, &spec, Wanted::ALL)?;
    let got = cuda.conv2d_backward(&up(&x)?, &up(&y)?, &up(&dy)?, &wg, &spec, Wanted::ALL)?;
    for (name, g, w) in [
        ("conv backward: input", got.input, want.input),
        ("conv backward: kernel", got.kernel, want.kernel),
        ("conv backward: bias", got.bias, want.bias),
    ] {
        let missing = || Error::Invalid(format!("{name}: not computed"));
        compare(name, g.ok_or_else(missing)?, &w.ok_or_else(missing)?, fp32)?;
    }

    let (v, k, bias) = (tensor(&[3, 37])?, tensor(&[37, 11])?, tensor(&[11])?);
    let (dc, dg) = (
        LayerParams::new(k.clone(), Some(bias.clone())),
        LayerParams::new(k, Some(bias)),
    );
    let y = cpu.dense(&v, &dc, Activation::Relu)?;
    let dy = tensor(y.dims())?;
    let want = cpu.dense_backward(&v, &y, &dy, &dc, Activation::Relu, Wanted::ALL)?;
    let got = cuda.dense_backward(
        &up(&v)?,
        &up(&y)?,
        &up(&dy)?,
        &dg,
        Activation::Relu,
        Wanted::ALL,
    )?;
    for (name, g, w) in [
        ("dense backward: input", got.input, want.input),
        ("dense backward: kernel", got.kernel, want.kernel),
        ("dense backward: bias", got.bias, want.bias),
    ] {
        let missing = || Error::Invalid(format!("{name}: not computed"));
        compare(name, g.ok_or_else(missing)?, &w.ok_or_else(missing)?, fp32)?;
    }

    let pool = Pool2dSpec::vgg();
    let dy = tensor(cpu.max_pool2d(&x, &pool)?.dims())?;
    let want = cpu.max_pool2d_backward(&x, &dy, &pool)?;
    compare(
        "max pool backward",
        cuda.max_pool2d_backward(&up(&x)?, &up(&dy)?, &pool)?,
        &want,
        0.0,
    )?;
    let dy = tensor(&[2, 5])?;
    let want = cpu.global_pool_backward(&x, &dy, GlobalPool::Avg)?;
    compare(
        "global avg pool backward",
        cuda.global_pool_backward(&up(&x)?, &up(&dy)?, GlobalPool::Avg)?,
        &want,
        fp32,
    )?;
    let dy = tensor(x.dims())?;
    let want = cpu.relu_backward(&x, &dy)?;
    compare(
        "relu backward",
        cuda.relu_backward(&up(&x)?, &up(&dy)?)?,
        &want,
        0.0,
    )?;

    let logits = tensor(&[5, 3])?;
    let labels = [0, 2, 1, 1, 0];
    let want = cpu.softmax_cross_entropy(&logits, &labels)?;
    let got = cuda.softmax_cross_entropy(&up(&logits)?, &labels)?;
    compare(
        "softmax cross-entropy: dlogits",
        got.dlogits,
        &want.dlogits,
        1e-6,
    )?;
    let loss_error = (got.loss - want.loss).abs() / want.loss.abs().max(1e-30);
    let mut extra = vec![OpValidation {
        op: "softmax cross-entropy: loss".into(),
        error: if loss_error.is_nan() {
            f64::INFINITY
        } else {
            loss_error
        },
        tolerance: 1e-6,
        passed: loss_error <= 1e-6,
    }];

    let step = AdamStep {
        alpha: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
        decay: 4e-6,
    };
    let (w0, g, m0, v0) = (
        tensor(&[7, 13])?,
        tensor(&[7, 13])?,
        tensor(&[7, 13])?,
        tensor(&[7, 13])?,
    );
    let v0 = Tensor::from_vec(
        [7, 13],
        &v0.data().iter().map(|v| v.abs()).collect::<Vec<_>>(),
    )?;
    let (mut wc, mut mc, mut vc) = (w0.clone(), m0.clone(), v0.clone());
    cpu.adam_step(&mut wc, &g, &mut mc, &mut vc, &step)?;
    let (mut wd, mut md, mut vd) = (up(&w0)?, up(&m0)?, up(&v0)?);
    cuda.adam_step(&mut wd, &up(&g)?, &mut md, &mut vd, &step)?;
    // The same f32 operations in the same order (no FMA contraction on either side).
    compare("adamw step", wd, &wc, 0.0)?;
    out.append(&mut extra);
    Ok(out)
}
