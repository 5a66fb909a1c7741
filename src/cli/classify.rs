//! `keel classify`: ImageNet top-k for photos, as `decode_predictions(model.predict(x))`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use super::backend::BackendArgs;
use super::common::{ModelArgs, collect_images, load_weights, parse_hw};
use crate::io::image::Interpolation;
use crate::io::labels::{IMAGENET_CLASS_COUNT, decode_predictions, top_k};
use crate::nn::Vgg;

#[derive(Parser, Debug)]
pub struct Args {
    /// Image files or directories.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    backend: BackendArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Input size HxW (default: the size the file's fc1 was trained for, 224x224 for ImageNet).
    #[arg(long, value_parser = parse_hw)]
    input: Option<[usize; 2]>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (set, id) = load_weights(a.model.weights.as_deref(), a.model.model, true)?;
    if !id.include_top {
        bail!(
            "{}: holds only the {} conv base (no fc1, fc2, predictions); classify needs the file with the top (keel fetch {} --top)",
            set.source.display(),
            id.arch,
            id.arch.name()
        );
    }
    let mut config = id.config();
    config.input = match a.input {
        Some(hw) => hw,
        None => square_input_for_fc1(&set, id.widths[4]).unwrap_or(config.input),
    };
    let model = Vgg::new(config.clone(), set)?;
    let paths = collect_images(&a.images)?;
    let backend = a.backend.build()?;
    for path in &paths {
        let x = crate::io::batch::load_preprocessed(
            std::slice::from_ref(path),
            config.input,
            a.model.interpolation.unwrap_or(Interpolation::Nearest),
        )?;
        let probs = backend.to_host(model.forward(backend.as_ref(), &x)?)?;
        println!("{}", path.display());
        if config.classes == IMAGENET_CLASS_COUNT {
            for (rank, p) in decode_predictions(&probs, a.top)?[0].iter().enumerate() {
                println!(
                    "  {:>2}. {} {:<28} {:.4}",
                    rank + 1,
                    p.wnid,
                    p.name,
                    p.score
                );
            }
        } else {
            for (rank, i) in top_k(probs.data(), a.top).into_iter().enumerate() {
                println!("  {:>2}. class {i:<5} {:.4}", rank + 1, probs.data()[i]);
            }
        }
    }
    Ok(())
}

/// The square input whose block5 output flattens to fc1's input size (224 for 7x7x512).
fn square_input_for_fc1(set: &crate::nn::WeightSet, channels: usize) -> Option<[usize; 2]> {
    let fin = set
        .get("fc1")?
        .tensors
        .first()?
        .tensor
        .dims()
        .first()
        .copied()?;
    let cells = fin / channels.max(1);
    let side = (cells as f64).sqrt().round() as usize;
    (side * side * channels == fin && side > 0).then_some([32 * side, 32 * side])
}
