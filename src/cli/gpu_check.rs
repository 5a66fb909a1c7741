//! `keel gpu-check`: the one call a GPU machine runs. It validates every kernel against keel's
//! CPU reference on the device and VGG16's whole conv base against the CPU backend in each
//! precision, then times the GEMM ladder next to cuBLAS and VGG16's base next to PyTorch
//! (`scripts/torch_vgg16.py`), both sides on the same device in the same call.

use std::path::PathBuf;

/// Options of `keel gpu-check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GPU: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Only the small validation sizes and one timing size (4096^3).
    #[arg(long)]
    quick: bool,
    /// Validate only; time nothing (what compute-sanitizer runs).
    #[arg(long)]
    no_timing: bool,
    /// Only these rungs (repeatable) [default: every rung this GPU runs].
    #[arg(long = "rung", value_name = "NAME")]
    rungs: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Images per batch of the VGG16 comparison.
    #[arg(long, default_value_t = 64, value_name = "N")]
    batch: usize,
    /// Image size of the VGG16 comparison.
    #[arg(long, default_value_t = 224, value_name = "PIXELS")]
    size: usize,
    /// PyTorch's side of the VGG16 comparison, run with $KEEL_TORCH_PYTHON (else python3);
    /// skipped, with a line saying so, when it cannot run.
    #[arg(long, default_value = "scripts/torch_vgg16.py", value_name = "FILE")]
    torch_script: PathBuf,
    /// Leave PyTorch out of the VGG16 comparison.
    #[arg(long)]
    no_torch: bool,
    /// The real VGG16 base (Keras's notop .h5), to check against Keras's outputs in
    /// --keras-ref on the device.
    #[arg(long, value_name = "FILE", requires = "keras_ref")]
    weights: Option<PathBuf>,
    /// Keras's reference outputs for --weights: preprocess/NAME.npy inputs and
    /// block5_pool/NAME_block5_pool.npy outputs (the layout of ../shared/weights/ref).
    #[arg(long, value_name = "DIR", requires = "weights")]
    keras_ref: Option<PathBuf>,
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: Args) -> anyhow::Result<()> {
    let _ = (a.quick, a.no_timing, &a.rungs, &a.json, a.batch, a.size);
    let _ = (&a.torch_script, a.no_torch, &a.weights, &a.keras_ref);
    anyhow::bail!(
        "--device {}: no CUDA device: this keel was built without CUDA; rebuild with \
         `cargo build --release --features cuda`",
        a.device
    )
}

#[cfg(feature = "cuda")]
pub fn run(a: Args) -> anyhow::Result<()> {
    use anyhow::{Context, bail};

    use crate::cuda::check::{self, FULL_SIZES, QUICK_SIZES};
    use crate::cuda::{Gpu, gemm};
    use crate::tensor::Device;

    let Device::Cuda(ordinal) = Device::parse(&a.device)? else {
        bail!("gpu-check runs on a GPU: --device cuda or cuda:N");
    };
    let gpu = Gpu::open(ordinal).with_context(|| format!("--device {}", a.device))?;
    if gpu.is_emulated() && !(a.quick && a.no_timing) {
        bail!("the CPU build of the kernels (KEEL_CUDA_CPU_BUILD=1) runs only --quick --no-timing");
    }
    let rungs: Vec<&gemm::Rung> = if a.rungs.is_empty() {
        check::runnable(&gpu)
    } else {
        a.rungs
            .iter()
            .map(|n| gemm::rung(n))
            .collect::<Result<_, _>>()?
    };
    match gpu.cuda_device() {
        Some(d) => println!(
            "device: {} ({}, {} SMs, {} MHz, {} MiB L2); nvrtc {}",
            gpu.name(),
            gpu.arch(),
            d.sm_count,
            d.clock_khz / 1000,
            d.l2_bytes >> 20,
            {
                let (major, minor) = crate::cuda::nvrtc::version()?;
                format!("{major}.{minor}")
            }
        ),
        None => println!("device: {}", gpu.name()),
    }

    let mut sizes: Vec<[usize; 3]> = QUICK_SIZES.to_vec();
    if !a.quick {
        sizes.extend_from_slice(FULL_SIZES);
    }
    println!("\n== validation against the CPU reference (output poisoned with NaN first)");
    println!(
        "{:<14} {:>5} {:>18} {:>9} {:>10} {:>9}  ",
        "rung", "prec", "M x N x K", "epilogue", "error", "tolerance"
    );
    let mut validations = Vec::new();
    for r in &rungs {
        for (i, &size) in sizes.iter().enumerate() {
            let v =
                check::validate(&gpu, r, size, i % 2 == 1, 11 + i as u64).with_context(|| {
                    format!("rung {} at {}x{}x{}", r.rung, size[0], size[1], size[2])
                })?;
            println!(
                "{:<14} {:>5} {:>18} {:>9} {:>10.2e} {:>9.0e}  {}",
                v.rung,
                v.precision,
                format!("{}x{}x{}", v.m, v.n, v.k),
                if v.epilogue { "bias+relu" } else { "-" },
                v.error,
                v.tolerance,
                if v.passed { "ok" } else { "FAIL" }
            );
            validations.push(v);
        }
    }
    println!(
        "\n{:<14} {:>5} {:>38} {:>10} {:>9}",
        "conv rung", "prec", "case", "error", "tolerance"
    );
    let mut cases: Vec<crate::cuda::check_conv::ConvCase> =
        crate::cuda::check_conv::QUICK_CASES.to_vec();
    if !a.quick && !gpu.is_emulated() {
        cases.extend_from_slice(crate::cuda::check_conv::VGG_CASES);
    }
    let mut convs = Vec::new();
    for r in crate::cuda::conv::rungs() {
        for (i, case) in cases.iter().enumerate().filter(|(_, c)| c.fits(r)) {
            let v = crate::cuda::check_conv::validate(&gpu, r, *case, 31 + i as u64)
                .with_context(|| format!("conv rung {} on {case}", r.rung))?;
            println!(
                "{:<14} {:>5} {:>38} {:>10.2e} {:>9.0e}  {}",
                v.rung,
                v.precision,
                v.case.to_string(),
                v.error,
                v.tolerance,
                if v.passed { "ok" } else { "FAIL" }
            );
            convs.push(v);
        }
    }
    let mut ops = check::validate_backend(&gpu)?;
    ops.extend(check::validate_training(&gpu)?);
    for o in &ops {
        println!(
            "{:<28} {:>10.2e} {:>9.0e}  {}",
            o.op,
            o.error,
            o.tolerance,
            if o.passed { "ok" } else { "FAIL" }
        );
    }

    // The whole conv base against the CPU backend, in every precision, on small images (the
    // CPU side is the slow one). Not on the CPU build, where full-width VGG16 takes many
    // minutes: the tests run the micro VGG16 through the same launch code instead.
    let mut parity = Vec::new();
    if gpu.is_emulated() {
        println!(
            "\n== VGG16 conv base against the CPU backend: skipped on the CPU build (too slow there)"
        );
    } else {
        let (pb, ps) = (2, 64);
        println!(
            "\n== VGG16 conv base on the device against keel's CPU backend ({pb} x {ps}x{ps}, random weights)"
        );
        for p in [
            gemm::Precision::Fp32,
            gemm::Precision::Tf32,
            gemm::Precision::Bf16,
        ] {
            let v = crate::cuda::check_vgg::parity(&gpu, p, pb, ps)?;
            println!(
                "{:<28} {:>10.2e} {:>9.0e}  {}",
                format!("vgg16 {}", v.precision),
                v.error,
                v.tolerance,
                if v.passed { "ok" } else { "FAIL" }
            );
            parity.push(v);
        }
    }
    if let (Some(weights), Some(dir)) = (&a.weights, &a.keras_ref) {
        println!(
            "\n== the real VGG16 base ({}) on the device against Keras's block5_pool",
            weights.display()
        );
        for v in crate::cuda::check_vgg::keras_parity(&gpu, weights, dir)? {
            println!(
                "{:<28} {:>10.2e} {:>9.0e}  {}",
                v.case,
                v.error,
                v.tolerance,
                if v.passed { "ok" } else { "FAIL" }
            );
            parity.push(v);
        }
    }

    let mut timings = Vec::new();
    let mut vgg_times = Vec::new();
    if !a.no_timing {
        let times: &[[usize; 3]] = if a.quick {
            &[[4096, 4096, 4096]]
        } else {
            &[
                [1024, 1024, 1024],
                [2048, 2048, 2048],
                [4096, 4096, 4096],
                [4093, 4091, 4097],
            ]
        };
        println!("\n== GEMM ladder against cuBLAS (CUDA events, L2 flushed, median)");
        println!(
            "{:<14} {:>5} {:>16} {:>9} {:>10} {:>8} {:>8}",
            "rung", "prec", "M x N x K", "ms", "GFLOP/s", "%cuBLAS", "%peak"
        );
        for &size in times {
            for t in check::time_ladder(&gpu, size, &rungs)? {
                println!(
                    "{:<14} {:>5} {:>16} {:>9.3} {:>10.0} {:>8} {:>8}",
                    t.rung,
                    t.precision,
                    format!("{}x{}x{}", t.m, t.n, t.k),
                    t.ms,
                    t.gflops,
                    t.pct_cublas.map_or("-".into(), |p| format!("{p:.1}")),
                    t.pct_peak.map_or("-".into(), |p| format!("{p:.1}")),
                );
                timings.push(t);
            }
        }
    }
    if !a.no_timing {
        vgg_times = compare_vgg16(&gpu, &a)?;
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "conv": convs,
            "parity": parity,
            "vgg16": vgg_times,
            "device": gpu.name(),
            "arch": gpu.arch(),
            "sm_count": gpu.cuda_device().map(|d| d.sm_count),
            "clock_mhz": gpu.cuda_device().map(|d| d.clock_khz / 1000),
            "validation": validations,
            "ops": ops,
            "timing": timings,
        });
        crate::io::atomic::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &doc).map_err(std::io::Error::other)
        })?;
    }
    let failed = validations.iter().filter(|v| !v.passed).count()
        + convs.iter().filter(|v| !v.passed).count()
        + ops.iter().filter(|o| !o.passed).count()
        + parity.iter().filter(|p| !p.passed).count();
    if failed > 0 {
        bail!("{failed} validation(s) failed");
    }
    println!(
        "\nall {} validations passed",
        validations.len() + convs.len() + ops.len() + parity.len()
    );
    Ok(())
}

/// VGG16's conv base timed by keel in each precision, next to PyTorch on the same device in
/// the same call; returns every measurement (keel's and PyTorch's) for the JSON report.
#[cfg(feature = "cuda")]
fn compare_vgg16(
    gpu: &std::sync::Arc<crate::cuda::Gpu>,
    a: &Args,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use crate::cuda::check_vgg;
    use crate::cuda::gemm::Precision;

    let runs = if a.quick { 5 } else { 10 };
    println!(
        "\n== VGG16 conv base, batch {}, {}x{}: keel next to PyTorch (CUDA events, median of {runs})",
        a.batch, a.size, a.size
    );
    let torch = if a.no_torch {
        Err("left out (--no-torch)".to_string())
    } else {
        run_torch(a, runs)
    };
    if let Err(why) = &torch {
        println!("PyTorch: {why}");
    }
    let torch = torch.unwrap_or_default();
    println!(
        "{:<6} {:>12} {:>12} {:>7} {:>11} {:>11} {:>7}",
        "prec", "keel img/s", "torch img/s", "ratio", "keel MiB", "torch MiB", "ratio"
    );
    let mut out = Vec::new();
    let mut keel_fp32 = None;
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let t = check_vgg::time(gpu, p, a.batch, a.size, runs)?;
        let theirs = torch
            .iter()
            .find(|v| v["precision"] == p.name() && v.get("images_per_s").is_some());
        let their_rate = theirs.and_then(|v| v["images_per_s"].as_f64());
        let their_peak = theirs.and_then(|v| v["peak_bytes"].as_f64());
        let mib = |b: f64| b / (1u64 << 20) as f64;
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        println!(
            "{:<6} {:>12.1} {:>12} {:>7} {:>11.0} {:>11} {:>7}",
            p.name(),
            t.images_per_s,
            opt(their_rate, 1),
            opt(their_rate.map(|r| t.images_per_s / r), 2),
            mib(t.peak_bytes as f64),
            opt(their_peak.map(mib), 0),
            opt(their_peak.map(|b| t.peak_bytes as f64 / b), 2),
        );
        out.push(serde_json::to_value(&t)?);
        if let Some(v) = theirs {
            out.push(v.clone());
        }
        if p == Precision::Fp32 {
            keel_fp32 = Some(t);
        }
    }
    if let Some(t) = keel_fp32 {
        println!("\nkeel fp32, op by op (one pass with an event after each op):");
        println!("{:<20} {:>9} {:>10}", "op", "ms", "GFLOP/s");
        for o in &t.ops {
            println!("{:<20} {:>9.3} {:>10.0}", o.op, o.ms, o.gflops);
        }
    }
    Ok(out)
}

/// PyTorch's measurements, one JSON object per precision, from the script on stdout.
#[cfg(feature = "cuda")]
fn run_torch(a: &Args, runs: usize) -> Result<Vec<serde_json::Value>, String> {
    if !a.torch_script.is_file() {
        return Err(format!(
            "{} not found (run from the repository root, or pass --torch-script)",
            a.torch_script.display()
        ));
    }
    let python = std::env::var("KEEL_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let o = std::process::Command::new(&python)
        .arg(&a.torch_script)
        .args([
            "--batch",
            &a.batch.to_string(),
            "--size",
            &a.size.to_string(),
        ])
        .args(["--runs", &runs.to_string()])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let values: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(e) = values.iter().find_map(|v| v["error"].as_str()) {
        return Err(e.to_string());
    }
    if !o.status.success() || values.is_empty() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or("no output");
        return Err(format!("{} failed: {last}", a.torch_script.display()));
    }
    Ok(values)
}
