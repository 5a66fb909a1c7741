//! `keel bench`: the study ladder and the timings `../shared/bench/compare_cpu.sh` reads.
//!
//! stdout gets one line per repetition holding only its seconds, after a warm-up, so a script
//! can read the numbers; everything a person reads (the kernel, its correctness against the
//! reference, GFLOP/s and the share of this machine's measured FMA peak) goes to stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use super::backend::{BackendArgs, parse_algo, parse_isa};
use super::common::parse_hw;
use crate::cpu::conv::{
    ConvAlgo, ConvPlan, conv2d_backward_bf16, conv2d_backward_with, conv2d_bf16, conv2d_with,
};
use crate::cpu::gemm::{self, Epilogue, Kernel};
use crate::cpu::isa::Isa;
use crate::cpu::peak::{bf16_dot_peak_gflops, fma_peak_gflops};
use crate::cpu::{conv2d_backward_reference, conv2d_reference};
use crate::nn::{Arch, LayerKind, Vgg, VggConfig};
use crate::rng::Rng;
use crate::tensor::{AlignedVec, Conv2dSpec, LayerParams, Tensor, Wanted};

#[derive(Parser, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
    /// Worker threads [default: KEEL_THREADS, else all cores].
    #[arg(long, global = true, value_name = "N")]
    pub(super) threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum What {
    /// C[M,N] = A[M,K] * B[K,N], row-major f32, random inputs.
    Gemm(GemmArgs),
    /// One VGG16 convolution layer with random weights and input.
    Conv(ConvArgs),
    /// The VGG16 conv base (to block5_pool) on random preprocessed input.
    Vgg16(VggArgs),
    /// This machine's FMA peak (GFLOP/s) on the current thread count, per instruction set.
    Peak,
}

#[derive(Parser, Debug)]
struct ConvArgs {
    /// The layer, by its Keras name (block1_conv1 ... block5_conv3).
    #[arg(long)]
    layer: String,
    /// reference, direct, implicit-gemm, winograd2, winograd4 (default: keel's choice).
    #[arg(long)]
    algo: Option<String>,
    /// Instruction set: portable, avx2, avx512, neon (default: the best here).
    #[arg(long)]
    isa: Option<String>,
    /// forward, input-grad (the gradient with respect to the input) or kernel-grad (with
    /// respect to the kernel and bias).
    #[arg(long, default_value = "forward")]
    pass: String,
    /// Network input size HxW (the layer's size follows from it).
    #[arg(long, value_parser = parse_hw, default_value = "224x224")]
    input: [usize; 2],
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// fp32, or bf16 (the products in bf16 with AVX512-BF16, sums in fp32; the kernel
    /// gradient stays fp32 in both).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Timed repetitions after one warm-up (default: REPS from the environment, else 5).
    #[arg(long)]
    reps: Option<usize>,
}

#[derive(Parser, Debug)]
struct VggArgs {
    /// VGG16 weights (.h5 or .safetensors, with or without the top); default: seeded random
    /// weights, which take the same time.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Network input size HxW.
    #[arg(long, value_parser = parse_hw, default_value = "224x224")]
    input: [usize; 2],
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Force one convolution algorithm where it applies (default: keel's choice per layer).
    #[arg(long)]
    algo: Option<String>,
    /// Instruction set: portable, avx2, avx512, neon, or reference for the reference kernels.
    #[arg(long)]
    isa: Option<String>,
    /// fp32, or bf16 (the convolutions' products in bf16 with AVX512-BF16, sums in fp32).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Timed repetitions after one warm-up (default: REPS from the environment, else 5).
    #[arg(long)]
    reps: Option<usize>,
}

#[derive(Parser, Debug)]
struct GemmArgs {
    /// Rows of A and C.
    m: usize,
    /// Columns of B and C.
    n: usize,
    /// Columns of A, rows of B (the sum's length).
    k: usize,
    /// Rung of the ladder: naive, blocked, packed, avx2, avx512, neon, or avx512bf16 or
    /// amxbf16 (bf16 operands, f32 sums; amxbf16 on Intel's AMX tiles) (default: the fastest
    /// f32 rung here, under KEEL_ISA's cap).
    #[arg(long)]
    kernel: Option<String>,
    /// Timed repetitions after one warm-up (default: REPS from the environment, else 5).
    #[arg(long)]
    reps: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Gemm(g) => bench_gemm(g),
        What::Conv(c) => bench_conv(c),
        What::Vgg16(v) => bench_vgg16(v),
        What::Peak => {
            let threads = rayon::current_num_threads();
            let mut avx512 = None;
            for isa in Isa::all_available() {
                let g = fma_peak_gflops(isa, 0.3);
                eprintln!("{isa:>8}: {g:.1} GFLOP/s on {threads} threads");
                if isa == Isa::Avx512 {
                    avx512 = Some(g);
                }
            }
            // bf16_dot_peak_gflops runs only where the AVX-512 f32 peak was just measured.
            if let (Some(g), Some(f32_peak)) = (bf16_dot_peak_gflops(0.3), avx512) {
                eprintln!(
                    "avx512bf16: {g:.1} GFLOP/s on {threads} threads (vdpbf16ps; {:.2}x the avx512 \
                     f32 FMA peak above)",
                    g / f32_peak
                );
            }
            Ok(())
        }
    }
}

/// `--reps`, else `REPS` (what compare_cpu.sh exports), else 5.
pub(super) fn reps(given: Option<usize>) -> anyhow::Result<usize> {
    let reps = match given {
        Some(r) => r,
        None => match std::env::var("REPS") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .with_context(|| format!("REPS={v} is not a number"))?,
            _ => 5,
        },
    };
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(reps)
}

/// Run `work` once to warm up, then `reps` times, printing each time; returns the times.
pub(super) fn time_reps(reps: usize, mut work: impl FnMut()) -> Vec<f64> {
    work();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            work();
            let s = t.elapsed().as_secs_f64();
            println!("{s:.6}");
            s
        })
        .collect()
}

/// The stderr summary: GFLOP/s of the median and best repetition, and % of this machine's
/// peak (that of its best ISA, whatever the kernel ran on).
pub(super) fn report_speed(flops: f64, times: &[f64]) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let best = sorted[0];
    let peak = fma_peak_gflops(Isa::best(), 0.1);
    let g = |s: f64| flops / s / 1e9;
    eprintln!(
        "median {:.4} s  {:.1} GFLOP/s ({:.0}% of peak)  best {:.1} GFLOP/s ({:.0}%)  peak {:.0} GFLOP/s on {} threads",
        median,
        g(median),
        100.0 * g(median) / peak,
        g(best),
        100.0 * g(best) / peak,
        peak,
        rayon::current_num_threads()
    );
}

fn bench_gemm(a: GemmArgs) -> anyhow::Result<()> {
    let kernel = match &a.kernel {
        None => Kernel::for_isa(Isa::from_env()?),
        Some(s) => Kernel::parse(s).with_context(|| {
            format!(
                "unknown --kernel {s}: use naive, blocked, packed, avx2, avx512, neon, avx512bf16 \
                 or amxbf16"
            )
        })?,
    };
    if !kernel.available() {
        if let (Kernel::AmxBf16, Err(why)) = (kernel, gemm::amx::status()) {
            bail!("this machine cannot run the amxbf16 kernel: {why}");
        }
        bail!(
            "this CPU cannot run the {kernel} kernel (it has {})",
            Isa::names(&Isa::all_available())
        );
    }
    let (m, n, k) = (a.m, a.n, a.k);
    if m == 0 || n == 0 || k == 0 {
        bail!("M, N and K must be at least 1");
    }
    let reps = reps(a.reps)?;
    let mut rng = Rng::new(0);
    // keel's aligned storage, as tensors use (large buffers get 2 MB pages, as numpy's do).
    let am = AlignedVec::from_slice(&rng.uniform_vec(m * k, -1.0, 1.0));
    let bm = AlignedVec::from_slice(&rng.uniform_vec(k * n, -1.0, 1.0));
    let mut cm = AlignedVec::zeros(m * n);
    let (am, bm) = (am.as_slice(), bm.as_slice());
    let c = cm.as_mut_slice();
    let times = time_reps(reps, || {
        gemm::gemm_with(kernel, m, n, k, am, k, bm, n, c, n, Epilogue::NONE, true)
    });
    // Spot-check 256 entries against f64 dot products: the whole naive product of a large
    // shape would take longer than the benchmark.
    let mut worst = 0f64;
    for _ in 0..256 {
        let (i, j) = (rng.below(m as u64) as usize, rng.below(n as u64) as usize);
        let (mut s, mut abs) = (0f64, 0f64);
        // The bf16 rung is held to the product of its rounded operands.
        let op = |v: f32| {
            if kernel.is_bf16() {
                gemm::bf16::bf16_to_f32(gemm::bf16::round_bf16(v)) as f64
            } else {
                v as f64
            }
        };
        for p in 0..k {
            let t = op(am[i * k + p]) * op(bm[p * n + j]);
            s += t;
            abs += t.abs();
        }
        let got = c[i * n + j] as f64;
        let err = if got.is_finite() {
            (got - s).abs() / abs.max(1e-30)
        } else {
            f64::INFINITY
        };
        worst = worst.max(err);
    }
    eprintln!(
        "gemm {m}x{n}x{k} kernel {kernel} on {} threads: worst error / sum|a*b| over 256 sampled entries {worst:.1e} ({})",
        rayon::current_num_threads(),
        if worst <= 1e-5 {
            "ok, tolerance 1e-5"
        } else {
            "FAILED, tolerance 1e-5"
        }
    );
    report_speed(2.0 * (m * n * k) as f64, &times);
    if worst > 1e-5 {
        bail!("the {kernel} kernel disagrees with the reference");
    }
    Ok(())
}

fn bench_conv(a: ConvArgs) -> anyhow::Result<()> {
    let isa = parse_isa(a.isa.as_deref())?;
    let reps = reps(a.reps)?;
    let bf16 = match a.precision.as_str() {
        "fp32" => false,
        "bf16" if gemm::bf16::available() => true,
        "bf16" => {
            bail!("--precision bf16 needs AVX512-BF16, which this CPU lacks (or KEEL_ISA caps it)")
        }
        p => bail!("unknown --precision {p}: use fp32 or bf16"),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let config = VggConfig {
        input: a.input,
        ..VggConfig::notop(Arch::Vgg16)
    };
    config.validate()?;
    let layers = config.layers();
    let i = layers
        .iter()
        .position(|l| l.name == a.layer && matches!(l.kind, LayerKind::Conv2d { .. }))
        .with_context(|| {
            let names: Vec<&str> = layers
                .iter()
                .filter(|l| matches!(l.kind, LayerKind::Conv2d { .. }))
                .map(|l| l.name.as_str())
                .collect();
            format!(
                "VGG16 has no convolution '{}'; it has: {}",
                a.layer,
                names.join(", ")
            )
        })?;
    let LayerKind::Conv2d { cin, cout } = layers[i].kind else {
        unreachable!("checked above")
    };
    let [h, w] = [
        layers[i - 1].output.dims()[0],
        layers[i - 1].output.dims()[1],
    ];
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec(
        [a.batch, h, w, cin],
        &rng.uniform_vec(a.batch * h * w * cin, 0.0, 2.0),
    )?;
    let std = (2.0 / (9 * cin) as f32).sqrt();
    let k: Vec<f32> = (0..9 * cin * cout).map(|_| rng.normal() * std).collect();
    let kernel = Tensor::from_vec([3, 3, cin, cout], &k)?;
    let bias = Tensor::from_vec([cout], &rng.uniform_vec(cout, -0.1, 0.1))?;
    let spec = Conv2dSpec::same_relu();
    let g = spec.geometry(x.shape(), kernel.shape(), Some(bias.shape()))?;
    let forced = a.algo.as_deref().map(parse_algo).transpose()?;
    let algo = ConvAlgo::choose_forward(forced, &g);
    let params = LayerParams::new(kernel.clone(), Some(bias.clone()));
    let pass = Pass::parse(&a.pass)?;
    // The backward passes need the forward output (the ReLU's mask) and an output gradient.
    let (y, dy) = if pass == Pass::Forward {
        (None, None)
    } else {
        let y = conv2d_reference(&x, &kernel, Some(&bias), &spec)?;
        let dy = Tensor::from_vec(y.dims(), &rng.uniform_vec(y.numel(), -1.0, 1.0))?;
        (Some(y), Some(dy))
    };
    let wanted = match pass {
        Pass::InputGrad => Wanted::INPUT,
        _ => Wanted::PARAMS,
    };
    let mut out = None;
    let mut failed = None;
    let times = time_reps(reps, || {
        let r = match (&y, &dy) {
            (Some(y), Some(dy)) => if bf16 {
                conv2d_backward_bf16(forced, &x, y, dy, &params, &spec, wanted)
            } else {
                conv2d_backward_with(forced, isa, &x, y, dy, &params, &spec, wanted)
            }
            .map(|g| match pass {
                Pass::InputGrad => g.input,
                _ => g.kernel,
            }),
            _ if bf16 => conv2d_bf16(algo, &x, &params, &spec, false).map(Some),
            _ => conv2d_with(algo, isa, &x, &params, &spec).map(Some),
        };
        match r {
            Ok(t) => out = t,
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let got = out.context("the pass produced nothing")?;
    let want = match (&y, &dy) {
        (Some(y), Some(dy)) => {
            let g = conv2d_backward_reference(&x, y, dy, &kernel, &spec, wanted)?;
            match pass {
                Pass::InputGrad => g.input,
                _ => g.kernel,
            }
            .context("the reference produced nothing")?
        }
        _ => conv2d_reference(&x, &kernel, Some(&bias), &spec)?,
    };
    let scale = want.max_abs().max(f32::MIN_POSITIVE);
    let worst = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0f32, f32::max)
        / scale;
    // The input gradient runs the forward algorithms (Winograd's tolerance); the kernel
    // gradient is a GEMM whose sums run over every pixel of the batch (thousands of terms,
    // against 9 * Cin for the forward pass), so it gets F(4x4)'s looser tolerance too.
    // bf16 rounds both operands of every product (2^-9 relative each), and F(4x4)'s
    // transforms amplify that. Worst seen over VGG16's layers at batch 2 (Zen 4): forward
    // 1.7e-2, input gradient 3.0e-2 (its output gradient is random in sign, so the sums
    // cancel and max|ref| is small next to the terms); implicit GEMM 3e-3. About twice that:
    let tol = match pass {
        Pass::KernelGrad => 1e-4,
        Pass::InputGrad if bf16 => 6e-2,
        _ if bf16 => 4e-2,
        _ if algo == ConvAlgo::Winograd4 => 1e-4,
        _ => 1e-5,
    };
    let plan = ConvPlan::of(&params).map_or(0, ConvPlan::bytes);
    eprintln!(
        "{} {} {}x{}x{}->{} batch {} algo {algo} isa {isa}{} on {} threads: max|diff|/max|ref| {worst:.1e} ({}, tolerance {tol:.0e}); prepared weights {:.1} MB",
        a.layer,
        pass.name(),
        h,
        w,
        cin,
        cout,
        a.batch,
        if bf16 { " in bf16" } else { "" },
        rayon::current_num_threads(),
        if worst <= tol { "ok" } else { "FAILED" },
        plan as f64 / 1e6
    );
    report_speed(g.flops() as f64, &times);
    if worst > tol {
        bail!(
            "{algo} {} disagrees with the reference on {}",
            pass.name(),
            a.layer
        );
    }
    Ok(())
}

/// Which pass of a convolution `keel bench conv` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Forward,
    /// The gradient with respect to the input (a forward convolution of the output gradient
    /// with the flipped kernel).
    InputGrad,
    /// The gradients with respect to the kernel and bias (a GEMM over the transposed im2col).
    KernelGrad,
}

impl Pass {
    const ALL: [Pass; 3] = [Pass::Forward, Pass::InputGrad, Pass::KernelGrad];

    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "input-grad",
            Pass::KernelGrad => "kernel-grad",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Pass> {
        Pass::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .with_context(|| format!("unknown --pass {s}: use forward, input-grad or kernel-grad"))
    }
}

fn bench_vgg16(a: VggArgs) -> anyhow::Result<()> {
    let reps = reps(a.reps)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let backend = BackendArgs {
        isa: a.isa.clone(),
        algo: a.algo.clone(),
        precision: a.precision.clone(),
        ..BackendArgs::default()
    }
    .build()?;
    let config = VggConfig {
        input: a.input,
        ..VggConfig::notop(Arch::Vgg16)
    };
    let model = match &a.weights {
        Some(path) => Vgg::new(config, crate::io::load_weights(path)?.conv_base())?,
        None => Vgg::random(config, 0)?,
    };
    let [h, w] = a.input;
    let mut rng = Rng::new(0);
    let x = Tensor::from_vec(
        [a.batch, h, w, 3],
        &rng.uniform_vec(a.batch * h * w * 3, -120.0, 150.0),
    )?;
    let mut failed = None;
    let times = time_reps(reps, || {
        if let Err(e) = model.forward(backend.as_ref(), &x) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let flops: u64 = model.layer_specs().map(|l| l.flops()).sum::<u64>() * a.batch as u64;
    eprintln!(
        "vgg16 conv base {h}x{w} batch {} on {}{} ({} threads), {:.2} GFLOP per pass",
        a.batch,
        backend.name(),
        backend
            .reduced_precision()
            .map_or(String::new(), |p| format!(" in {p}")),
        rayon::current_num_threads(),
        flops as f64 / 1e9
    );
    report_speed(flops as f64, &times);
    Ok(())
}
