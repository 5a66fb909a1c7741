//! The `keel` command line: argument parsing and one file per command.

mod backend;
mod bench;
mod classify;
mod common;
mod convert;
mod evaluate;
mod export;
mod features;
mod fetch;
mod gpu_check;
mod gradcam;
mod info;
mod predict;
mod summary;
mod train;
mod tune;
mod visualize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// keel: transfer learning on Keras-exact VGG16/VGG19, with its own kernels.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for the kernels (default: all cores; also KEEL_THREADS). The commands
    /// that compute take it after their name too.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a classifier head on a folder of labeled photos over the frozen VGG base.
    Train(Box<train::Args>),
    /// Evaluate a trained model folder on labeled photos: accuracy, per-class P/R/F1,
    /// confusion matrix.
    Evaluate(evaluate::Args),
    /// Predict classes of photos with a trained model folder (csv or json).
    Predict(predict::Args),
    /// Print the model's layers like Keras's model.summary(), with FLOPs, activation memory
    /// and receptive field.
    Summary(summary::Args),
    /// Classify photos with the ImageNet top: top-k classes with probabilities.
    Classify(classify::Args),
    /// Extract the output of a layer for every image into a .npy file.
    Features(features::Args),
    /// Convert a Keras .h5 weights file to safetensors.
    Convert(convert::Args),
    /// Export a trained model folder as a Keras .weights.h5 (with the .py that loads it) or an
    /// ONNX model.
    Export(export::Args),
    /// Download the official Keras weights into keel's cache, checking Keras's md5.
    Fetch(fetch::Args),
    /// Time keel's kernels: GEMM and convolution rungs, the VGG16 conv base, the FMA peak.
    Bench(bench::Args),
    /// Validate every CUDA kernel on the GPU against the CPU reference, then time the GEMM
    /// ladder next to cuBLAS (a build with the cuda feature, on a machine with a GPU).
    GpuCheck(gpu_check::Args),
    /// Pictures of what the network sees: activation maps, filters, Grad-CAM, saliency.
    Visualize(visualize::Args),
    /// What keel detected on this machine (CPU, caches, cores, instruction sets) and what it
    /// chose from it (kernels, block sizes, tuning).
    Info(info::Args),
    /// Measure block sizes and each VGG16 layer's convolution algorithm on this machine, and
    /// store the fastest for this CPU model in $KEEL_HOME/tune (used from then on).
    Tune(tune::Args),
}

/// Run the command line; errors are printed as one message and give exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    common::init_threads(cli.threads.or(cli.command.threads()))?;
    crate::cpu::alloc::keep_freed_buffers();
    // The command runs on a worker of the rayon pool, not on the main thread. Each parallel
    // kernel then starts on the calling worker at once; started from outside the pool it is
    // handed over to a sleeping worker first, which measured 40 us per fork-join here against
    // 2 us inside, over the hundreds of fork-joins of a VGG16 pass.
    let mut result = None;
    rayon::scope(|s| s.spawn(|_| result = Some(dispatch(cli.command))));
    result.expect("the scope ran the command")
}

impl Command {
    /// `--threads` given after the command's name (only commands that compute take it).
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Train(a) => a.backend.threads,
            Command::Evaluate(a) => a.using.backend.threads,
            Command::Predict(a) => a.using.backend.threads,
            Command::Classify(a) => a.backend.threads,
            Command::Features(a) => a.backend.threads,
            Command::Visualize(a) => a.threads(),
            Command::Bench(a) => a.threads,
            Command::Tune(a) => a.threads,
            _ => None,
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(a) => train::run(*a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Summary(a) => summary::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Features(a) => features::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Export(a) => export::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Bench(a) => bench::run(a),
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::Visualize(a) => visualize::run(a),
        Command::Info(a) => info::run(a),
        Command::Tune(a) => tune::run(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every option and argument of every command says what it is, and `--threads` is offered
    /// only where it does something.
    #[test]
    fn every_argument_has_help_and_threads_only_where_it_counts() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || ["help", "version"].contains(&id) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cli = Cli::command();
        let mut missing = Vec::new();
        walk(&cli, "keel", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        for name in ["convert", "fetch", "summary", "export"] {
            let sub = cli.find_subcommand(name).unwrap();
            assert!(
                sub.get_arguments().all(|a| a.get_id() != "threads"),
                "{name} offers --threads, which it ignores"
            );
        }
        for name in [
            "train", "evaluate", "predict", "features", "classify", "bench",
        ] {
            let sub = cli.find_subcommand(name).unwrap();
            assert!(
                sub.get_arguments().any(|a| a.get_id() == "threads"),
                "{name} takes --threads"
            );
        }
    }
}
