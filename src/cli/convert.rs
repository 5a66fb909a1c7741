//! `keel convert`: Keras .h5 -> safetensors, names and layouts kept.

use std::path::PathBuf;

use clap::Parser;

use crate::tensor::DType;

#[derive(Parser, Debug)]
pub struct Args {
    /// The Keras weights file (.h5, any flavour).
    input: PathBuf,
    /// The safetensors file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Storage type of the tensors: f32, f16, bf16 (or f64).
    #[arg(long, default_value = "f32")]
    dtype: DType,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let set = crate::io::load_weights(&a.input)?;
    let id = set.identity();
    crate::io::safetensors::write_weights(&a.output, &set, a.dtype)?;
    let tensors: usize = set.layers().iter().map(|l| l.tensors.len()).sum();
    eprintln!(
        "wrote {}: {}, {} layers, {tensors} tensors, {} parameters, {} (from {})",
        a.output.display(),
        id.describe(),
        set.layers().len(),
        set.num_params(),
        a.dtype,
        set.format
    );
    Ok(())
}
