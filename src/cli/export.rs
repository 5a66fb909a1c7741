//! `keel export`: a trained model folder as a file other tools load (Keras, ONNX Runtime).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use super::common::base_for_model;
use crate::cpu::CpuReference;
use crate::transfer::{ExportGraph, TrainedModel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A Keras 3 `.weights.h5` of the whole model, with a `.py` beside it that builds the
    /// model in Keras and loads it.
    Keras,
    /// An ONNX model: preprocessed NHWC input to class probabilities.
    Onnx,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// A model folder written by `keel train`.
    model_dir: PathBuf,
    /// keras (.weights.h5 and a .py that loads it) or onnx.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Base weights [default: the file the model was trained with, else the official Keras
    /// file from the cache]; refused unless they are the weights the model was trained on.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.output.exists() && !a.overwrite {
        bail!(
            "{}: exists; pass --overwrite to replace it",
            a.output.display()
        );
    }
    let model = TrainedModel::load(&a.model_dir)?;
    let base = base_for_model(
        &model,
        &a.model_dir,
        a.weights.as_deref(),
        std::sync::Arc::new(CpuReference),
    )?;
    let graph = ExportGraph::new(&model, &base)
        .with_context(|| format!("exporting {}", a.model_dir.display()))?;
    match a.format {
        Format::Keras => crate::io::export::keras::write(&graph, &a.output)?,
        Format::Onnx => crate::io::export::onnx::write(&graph, &a.output)?,
    }
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
