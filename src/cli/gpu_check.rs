//! `keel gpu-check`: the one call a GPU machine runs. It validates every kernel against keel's
//! CPU reference on the device, then times the GEMM ladder next to cuBLAS.

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
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: Args) -> anyhow::Result<()> {
    let _ = (a.quick, a.no_timing, &a.rungs, &a.json);
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
    let ops = check::validate_backend(&gpu)?;
    for o in &ops {
        println!(
            "{:<28} {:>10.2e} {:>9.0e}  {}",
            o.op,
            o.error,
            o.tolerance,
            if o.passed { "ok" } else { "FAIL" }
        );
    }

    let mut timings = Vec::new();
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
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
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
    let failed =
        validations.iter().filter(|v| !v.passed).count() + ops.iter().filter(|o| !o.passed).count();
    if failed > 0 {
        bail!("{failed} validation(s) failed");
    }
    println!("\nall {} validations passed", validations.len() + ops.len());
    Ok(())
}
