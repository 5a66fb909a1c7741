//! `keel evaluate`: a model folder against a labeled photo folder.

use std::path::PathBuf;

use clap::Parser;

use super::common::{UseModelArgs, print_skipped};
use crate::io::dataset::scan_evaluation_folders;
use crate::transfer::evaluate_folder;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// A model folder written by `keel train`.
    model_dir: PathBuf,
    /// Labeled photos: DIR/<class>/..., class names as in the model.
    data: PathBuf,
    /// text or json (as `keel predict` and `keel classify`).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// The same as --format json (kept for scripts written before --format).
    #[arg(long, hide = true)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    pub(super) using: UseModelArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let folder = scan_evaluation_folders(&a.data)?;
    print_skipped("skipped while scanning", &folder.skipped);
    let (model, base) = a.using.open(&a.model_dir)?;
    let cache = a.using.cache.cache();
    let opts = a.using.extract_options(cache.as_ref());
    let (eval, skipped) = evaluate_folder(&model, &base, &folder, &opts)?;
    print_skipped("unreadable images left out (--skip-bad)", &skipped);
    let json = serde_json::to_string_pretty(&eval)?;
    if let Some(out) = &a.output {
        crate::io::atomic::write_atomic(out, |w| std::io::Write::write_all(w, json.as_bytes()))?;
    }
    if a.json || a.format == Format::Json {
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
