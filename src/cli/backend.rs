//! The one place the command line turns `--device`, `--isa` and `--algo` (and `KEEL_ISA`) into
//! a backend, which every command then hands down. Nothing below the CLI builds one.

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cpu::conv::ConvAlgo;
use crate::cpu::isa::Isa;
use crate::cpu::{Cpu, CpuReference};
use crate::tensor::{Backend, Device};

/// The options of every command that runs the network.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Where to compute: cpu, or cuda[:N] (a GPU, in a build with the cuda feature).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// CPU instruction set: portable, avx2 or avx512 on x86-64, neon on aarch64, or reference
    /// for the plain reference kernels [default: KEEL_ISA (a cap), else the best this CPU
    /// has].
    #[arg(long, value_name = "ISA")]
    pub isa: Option<String>,
    /// Convolution algorithm wherever it applies: reference, direct, implicit-gemm, winograd2
    /// or winograd4 [default: keel's choice per layer].
    #[arg(long, value_name = "ALGO")]
    pub algo: Option<String>,
    /// Worker threads for the kernels [default: KEEL_THREADS, else all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Arithmetic of the convolutions: fp32, tf32 (GPU tensor cores, inputs rounded to a
    /// 10-bit mantissa) or bf16 (bf16 weights and operands: GPU tensor cores, or AVX512-BF16 on
    /// the CPU); accumulation is fp32 in all three. See docs/cuda-conv.md and
    /// docs/cpu-kernels.md for the error each adds.
    #[arg(long, value_name = "P", default_value = "fp32")]
    pub precision: String,
}

impl BackendArgs {
    /// The backend these options name, checked against this machine.
    pub fn build(&self) -> anyhow::Result<Arc<dyn Backend>> {
        let device = Device::parse(&self.device)?;
        if let Device::Cuda(ordinal) = device {
            if self.isa.is_some() || self.algo.is_some() {
                bail!(
                    "--isa and --algo choose CPU kernels; they do not apply to --device {device}"
                );
            }
            return cuda_backend(ordinal, &self.precision)
                .with_context(|| format!("--device {device}"));
        }
        let bf16 = match self.precision.as_str() {
            "fp32" => false,
            "bf16" => true,
            "tf32" => bail!(
                "--precision tf32 is the GPU's tensor-core format (--device cuda); the CPU \
                 computes in fp32, or in bf16 with --precision bf16"
            ),
            other => bail!("unknown --precision {other}: use fp32, tf32 or bf16"),
        };
        if self.isa.as_deref() == Some("reference") {
            if self.algo.is_some() || bf16 {
                bail!(
                    "--algo and --precision bf16 apply to the fast kernels, not to --isa reference"
                );
            }
            return Ok(Arc::new(CpuReference));
        }
        let mut cpu = Cpu::with_isa(parse_isa(self.isa.as_deref())?)?;
        if let Some(a) = &self.algo {
            cpu = cpu.with_algo(parse_algo(a)?);
        }
        if bf16 {
            cpu = cpu.with_bf16()?;
            warn_if_bf16_is_slow();
        }
        Ok(Arc::new(cpu))
    }
}

/// `--precision bf16` on a CPU whose `vdpbf16ps` does fewer flops than its f32 FMA (an Intel
/// core without AMX, or with AMX hidden by a hypervisor) runs slower than fp32; the user asked
/// for bf16 and gets it, told why it is slow. 0.9 leaves room for the measurement's noise.
fn warn_if_bf16_is_slow() {
    if let Some(r) = crate::cpu::peak::bf16_dot_over_f32(0.02)
        && r < 0.9
    {
        eprintln!(
            "note: --precision bf16 runs on AVX512-BF16 here, whose vdpbf16ps does {r:.2}x the \
             f32 FMA's flops on this CPU: expect it slower than fp32; it still halves the \
             transformed weights' memory (keel info, keel bench peak)"
        );
    }
}

/// The CUDA backend on GPU `ordinal` (or on the CPU build of its kernels, see `Gpu::open`).
#[cfg(feature = "cuda")]
fn cuda_backend(ordinal: usize, precision: &str) -> anyhow::Result<Arc<dyn Backend>> {
    use crate::cuda::{CudaBackend, Gpu, gemm::Precision};
    let p = Precision::parse(precision)?;
    Ok(Arc::new(
        CudaBackend::new(Gpu::open(ordinal)?).with_precision(p),
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(_ordinal: usize, _precision: &str) -> anyhow::Result<Arc<dyn Backend>> {
    bail!(
        "no CUDA device: this keel was built without CUDA; rebuild with --features cuda, or \
         use --device cpu"
    )
}

impl Default for BackendArgs {
    fn default() -> Self {
        BackendArgs {
            device: "cpu".into(),
            isa: None,
            algo: None,
            threads: None,
            precision: "fp32".into(),
        }
    }
}

/// `--isa`, which this CPU must run, else `KEEL_ISA` capped to what it has, else the best
/// level here.
pub fn parse_isa(s: Option<&str>) -> anyhow::Result<Isa> {
    Ok(match s {
        Some(s) => Isa::parse_exact(s, "--isa ")?,
        None => Isa::from_env()?,
    })
}

/// A convolution algorithm by name.
pub fn parse_algo(s: &str) -> anyhow::Result<ConvAlgo> {
    ConvAlgo::parse(s).with_context(|| {
        let names: Vec<&str> = ConvAlgo::ALL.iter().map(|a| a.name()).collect();
        format!("unknown --algo {s}: use one of {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_it_is_asked_for_and_refuses_the_rest() {
        let mut a = BackendArgs::default();
        assert!(a.build().unwrap().name().starts_with("cpu-"));
        a.isa = Some("reference".into());
        assert_eq!(a.build().unwrap().name(), "cpu-reference");
        a.algo = Some("winograd4".into());
        assert!(a.build().is_err());
        a.isa = Some("portable".into());
        assert_eq!(a.build().unwrap().name(), "cpu-portable");
        a.algo = Some("fft".into());
        let e = a.build().err().unwrap().to_string();
        assert!(e.contains("unknown --algo fft"), "{e}");
        let e = BackendArgs {
            device: "cuda:1".into(),
            ..BackendArgs::default()
        }
        .build()
        .err()
        .unwrap();
        let e = format!("{e:#}");
        // No GPU here (CI has none): the message says so, with the device asked for.
        if std::env::var("KEEL_CUDA_CPU_BUILD").is_err() {
            assert!(
                e.starts_with("--device cuda:1: ") && e.contains("no CUDA device"),
                "{e}"
            );
        }
        let e = BackendArgs {
            device: "cuda".into(),
            isa: Some("avx2".into()),
            ..BackendArgs::default()
        }
        .build()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("do not apply to --device cuda:0"), "{e}");
        let e = BackendArgs {
            device: "tpu".into(),
            ..BackendArgs::default()
        }
        .build()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("unknown device 'tpu'"), "{e}");
    }
}
