//! `keel info`: what keel detected on this machine and what it chose from it, so that a slow
//! run on a new machine can be traced to a wrong detection or a wrong choice, and so that
//! scripts can read both (`--format json`).

use std::io::Write;

use clap::Parser;
use serde::Serialize;

use crate::cpu::gemm::BlockingSource;
use crate::cpu::gemm::Kernel;
use crate::cpu::gemm::blocking::{self, Blocking};
use crate::cpu::isa::Isa;
use crate::cpu::machine::{self, Machine, human_bytes};
use crate::cpu::tune::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Aligned lines for people.
    Text,
    /// One JSON object: machine, kernel, threads, blocking, tuning.
    Json,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// text or json.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// The block sizes one kernel uses, and where they came from.
#[derive(Serialize)]
struct KernelBlocking {
    isa: &'static str,
    mr: usize,
    nr: usize,
    #[serde(flatten)]
    blocking: Blocking,
    /// "tuned" (keel tune measured them on this CPU model) or "model" (the cache model's).
    source: &'static str,
    /// The cache model's values, for comparison when tuned.
    model: Blocking,
    /// Bytes of the A micro-panel (MR x KC floats), which the model sizes to stay in L1d.
    a_panel_bytes: usize,
}

/// Everything `keel info` reports.
#[derive(Serialize)]
struct Report {
    describe: String,
    id: String,
    machine: &'static Machine,
    /// The kernel the commands use: the best this CPU runs, under KEEL_ISA's cap.
    kernel: String,
    /// The best kernel this CPU runs, whatever KEEL_ISA says.
    best_kernel: &'static str,
    /// Whether the AMX-BF16 rung (`amxbf16`) runs here: "usable", or "not usable: " and why.
    amx_bf16: String,
    /// The GEMM rung `--precision bf16` runs on here, or why it cannot run.
    bf16: String,
    /// Where that rung is AVX512-BF16: `vdpbf16ps`'s flops over the f32 FMA's, measured now.
    bf16_dot_over_f32: Option<f64>,
    /// KEEL_ISA as set (null when unset).
    keel_isa: Option<String>,
    /// Why KEEL_ISA cannot be used, when it cannot.
    keel_isa_error: Option<String>,
    threads: usize,
    /// From the cache model, for every instruction set this CPU runs, lowest first.
    blocking: Vec<KernelBlocking>,
    /// The tuning file in use (null: none).
    tuning: Option<String>,
}

impl Report {
    fn gather() -> Report {
        let m = machine::get();
        let keel_isa = std::env::var("KEEL_ISA")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let (kernel, keel_isa_error) = match Isa::from_env() {
            Ok(isa) => (Kernel::for_isa(isa).name().to_string(), None),
            Err(e) => (
                "none (KEEL_ISA is invalid)".to_string(),
                Some(e.to_string()),
            ),
        };
        let blocking = Isa::all_available()
            .into_iter()
            .map(|isa| {
                let (mr, nr) = blocking::tile(isa);
                let (chosen, source) = crate::cpu::gemm::blocking_choice(isa);
                KernelBlocking {
                    isa: isa.name(),
                    mr,
                    nr,
                    blocking: chosen,
                    source: match source {
                        BlockingSource::Tuned => "tuned",
                        BlockingSource::Model => "model",
                    },
                    model: blocking::model(m, mr, nr, 4),
                    a_panel_bytes: mr * chosen.kc * 4,
                }
            })
            .collect();
        Report {
            describe: m.describe(),
            id: m.id(),
            machine: m,
            kernel,
            best_kernel: Kernel::best().name(),
            amx_bf16: match crate::cpu::gemm::amx::status() {
                Ok(()) => "usable".to_string(),
                Err(why) => format!("not usable: {why}"),
            },
            bf16: if crate::cpu::gemm::bf16::available() {
                crate::cpu::gemm::bf16_kernel().name().to_string()
            } else {
                "not available: needs AVX512-BF16, and KEEL_ISA not below avx512".to_string()
            },
            bf16_dot_over_f32: crate::cpu::peak::bf16_dot_over_f32(0.05),
            keel_isa,
            keel_isa_error,
            threads: rayon::current_num_threads(),
            blocking,
            tuning: match crate::cpu::tune::status() {
                Status::Loaded(p) => Some(format!("{} (KEEL_TUNING=off ignores it)", p.display())),
                Status::Absent(p) => Some(format!(
                    "none: keel tune has not been run on this CPU model ({} is absent)",
                    p.display()
                )),
                Status::Disabled => Some("off (KEEL_TUNING)".to_string()),
                Status::Ignored(e) => Some(format!("ignored: {e}")),
            },
        }
    }

    fn text(&self) -> String {
        let m = self.machine;
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!("cpu        {}", self.describe));
        line(format!("cpu id     {}", self.id));
        let cores = m
            .physical_cores
            .map_or("unknown".to_string(), |c| c.to_string());
        line(format!(
            "cpus       {} available to keel, {} online, {cores} physical cores",
            m.threads, m.logical_cpus
        ));
        line(String::new());
        line(format!(
            "{:<6} {:>10} {:>5} {:>5} {:>10}  source",
            "cache", "size", "ways", "line", "shared by"
        ));
        for (name, c) in [("L1d", m.l1d), ("L2", m.l2), ("L3", m.l3)] {
            line(format!(
                "{name:<6} {:>10} {:>5} {:>5} {:>10}  {}",
                human_bytes(c.size),
                c.ways,
                c.line,
                c.shared_by,
                c.source.name()
            ));
        }
        line(String::new());
        let isas: Vec<String> = m
            .features
            .list()
            .iter()
            .map(|(name, on)| format!("{name} {}", if *on { "yes" } else { "no" }))
            .collect();
        line(format!("isa        {}", isas.join(", ")));
        let pipes = |n: usize| match n {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        let believed = match (m.uarch, m.pipes_guessed) {
            (_, true) => "a guess: CPU not in keel's table".to_string(),
            (Some(u), false) => format!("believed for {u}"),
            (None, false) => "no AVX-512".to_string(),
        };
        line(format!(
            "fma pipes  512-bit {}, 256-bit {} ({believed}; keel bench peak measures)",
            pipes(m.fma512_pipes),
            pipes(m.fma256_pipes)
        ));
        line(String::new());
        line(format!(
            "gemm       {} (best this CPU runs: {})",
            self.kernel, self.best_kernel
        ));
        line(format!("AMX-BF16   {}", self.amx_bf16));
        line(format!(
            "bf16       {} (what --precision bf16 runs on)",
            self.bf16
        ));
        if let Some(r) = self.bf16_dot_over_f32 {
            line(format!(
                "           vdpbf16ps runs at {r:.2}x the f32 FMA's flops here (measured now): {}",
                if r < 1.0 {
                    "bf16 saves memory on this CPU, not time"
                } else {
                    "bf16 is faster where the products dominate"
                }
            ));
        }
        match (&self.keel_isa, &self.keel_isa_error) {
            (None, _) => line("KEEL_ISA   not set".to_string()),
            (Some(v), None) => line(format!("KEEL_ISA   {v} (a cap)")),
            (Some(_), Some(e)) => line(format!("KEEL_ISA   {e}")),
        }
        line(format!("threads    {}", self.threads));
        line(String::new());
        line(format!(
            "{:<9} {:>7} {:>5} {:>5} {:>5}  {:<6} A micro-panel",
            "blocking", "tile", "MC", "KC", "NC", "from"
        ));
        for k in &self.blocking {
            let from = if k.source == "tuned" && k.blocking != k.model {
                format!(
                    "tuned (model: {}/{}/{})",
                    k.model.mc, k.model.kc, k.model.nc
                )
            } else {
                k.source.to_string()
            };
            line(format!(
                "{:<9} {:>7} {:>5} {:>5} {:>5}  {:<6} {:.1} KiB",
                k.isa,
                format!("{}x{}", k.mr, k.nr),
                k.blocking.mc,
                k.blocking.kc,
                k.blocking.nc,
                from,
                k.a_panel_bytes as f64 / 1024.0
            ));
        }
        line(
            "(f32 block sizes: keel tune's where it ran, else the cache model of gemm/blocking.rs)"
                .to_string(),
        );
        line(String::new());
        if let Some(t) = &self.tuning {
            line(format!("tuning     {t}"));
        }
        s
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let report = Report::gather();
    let out = match a.format {
        Format::Text => report.text(),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    // `keel info | head` closes the pipe early: that is the reader's choice, not an error.
    match std::io::stdout().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
