//! `keel classify`: ImageNet top-k for photos, as `decode_predictions(model.predict(x))`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use super::backend::BackendArgs;
use super::common::{ModelArgs, collect_images, csv_field, load_weights, parse_hw};
use crate::io::image::Interpolation;
use crate::io::labels::{IMAGENET_CLASS_COUNT, decode_predictions, top_k};
use crate::nn::Vgg;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A ranked list per image, for reading.
    Text,
    /// path,rank,wnid,label,probability: one row per image and class.
    Csv,
    /// A list of {path, predictions: [{wnid, label, probability}, ...]}.
    Json,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// Image files or directories.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    /// How many classes to show per image (more than the model has: all of them).
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// text, csv or json (as `keel predict`).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
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
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let top = a.top.min(config.classes);
    let mut rows = Vec::new();
    for path in &paths {
        let x = crate::io::batch::load_preprocessed(
            std::slice::from_ref(path),
            config.input,
            a.model.interpolation.unwrap_or(Interpolation::Nearest),
        )?;
        let probs = backend.to_host(model.forward(backend.as_ref(), &x)?)?;
        // (wnid, label, probability), most probable first.
        let ranked: Vec<(String, String, f32)> = if config.classes == IMAGENET_CLASS_COUNT {
            decode_predictions(&probs, top)?
                .swap_remove(0)
                .into_iter()
                .map(|p| (p.wnid, p.name, p.score))
                .collect()
        } else {
            top_k(probs.data(), top)
                .into_iter()
                .map(|i| (String::new(), format!("class {i}"), probs.data()[i]))
                .collect()
        };
        if a.format == Format::Text {
            println!("{}", path.display());
            for (rank, (wnid, label, p)) in ranked.iter().enumerate() {
                println!("  {:>2}. {wnid} {label:<28} {p:.4}", rank + 1);
            }
        }
        rows.push((path.display().to_string(), ranked));
    }
    match a.format {
        Format::Text => {}
        Format::Csv => {
            println!("path,rank,wnid,label,probability");
            for (path, ranked) in &rows {
                for (rank, (wnid, label, p)) in ranked.iter().enumerate() {
                    println!(
                        "{},{},{wnid},{},{p:.6}",
                        csv_field(path),
                        rank + 1,
                        csv_field(label)
                    );
                }
            }
        }
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|(path, ranked)| {
                    let preds: Vec<serde_json::Value> = ranked
                        .iter()
                        .map(|(w, l, p)| serde_json::json!({"wnid": w, "label": l, "probability": p}))
                        .collect();
                    serde_json::json!({"path": path, "predictions": preds})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
    }
    Ok(())
}

/// The square input whose block5 output flattens to fc1's input size (224 for 7x7x512).
pub(super) fn square_input_for_fc1(
    set: &crate::nn::WeightSet,
    channels: usize,
) -> Option<[usize; 2]> {
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
