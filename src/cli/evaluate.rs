//! `keel evaluate`: a model folder against a labeled photo folder.

use std::path::PathBuf;

use clap::Parser;

use super::common::{CacheArgs, base_for_model, print_skipped};
use crate::io::dataset::scan_class_folders;
use crate::transfer::{ExtractOptions, TrainedModel, evaluate_folder};

#[derive(Parser, Debug)]
pub struct Args {
    /// A model folder written by `keel train`.
    model_dir: PathBuf,
    /// Labeled photos: DIR/<class>/..., class names as in the model.
    data: PathBuf,
    /// Base weights [default: the file the model was trained with, else the official Keras
    /// file from the cache]; refused unless they are the weights the model was trained on.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Leave unreadable images out (each is reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = TrainedModel::load(&a.model_dir)?;
    let folder = scan_class_folders(&a.data)?;
    print_skipped("skipped while scanning", &folder.skipped);
    let base = base_for_model(&model, &a.model_dir, a.weights.as_deref())?;
    let cache = a.cache.cache();
    let opts = ExtractOptions {
        cache: cache.as_ref(),
        skip_bad: a.skip_bad,
        progress: Some("features"),
        ..ExtractOptions::default()
    };
    let (eval, skipped) = evaluate_folder(&model, &base, &folder, &opts)?;
    print_skipped("unreadable images left out (--skip-bad)", &skipped);
    let json = serde_json::to_string_pretty(&eval)?;
    if let Some(out) = &a.output {
        crate::io::atomic::write_atomic(out, |w| std::io::Write::write_all(w, json.as_bytes()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        println!(
            "{} on {} ({} images, loss {:.4}):",
            a.model_dir.display(),
            a.data.display(),
            eval.images,
            eval.loss
        );
        print!("{}", eval.metrics.to_text());
    }
    Ok(())
}
