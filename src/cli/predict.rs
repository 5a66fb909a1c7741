//! `keel predict`: class probabilities for new photos from a model folder.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use super::common::{UseModelArgs, collect_images, csv_field, print_skipped};
use crate::transfer::predict_paths;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// path,class,probability: one row per image and class (the top ones).
    Csv,
    /// path,predicted,<class 1>,<class 2>,...: one row per image, a probability column per
    /// class (the form spreadsheets and pandas expect; --top does not apply).
    Wide,
    /// A list of {path, predictions: [{class, probability}, ...]}.
    Json,
}

#[derive(Parser, Debug)]
pub struct Args {
    /// A model folder written by `keel train`.
    model_dir: PathBuf,
    /// Image files or folders (walked recursively, in sorted path order).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Classes per image, most probable first (more than the model has: all of them).
    #[arg(long, default_value_t = 1)]
    top: usize,
    /// csv (one row per image and class), wide (one row per image, a column per class) or
    /// json.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    pub(super) using: UseModelArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let paths = collect_images(&a.images)?;
    let (model, base) = a.using.open(&a.model_dir)?;
    let classes = &model.card.classes;
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let cache = a.using.cache.cache();
    let opts = a.using.extract_options(cache.as_ref());
    let (rows, skipped) = predict_paths(&model, &base, &paths, &opts)?;
    print_skipped("unreadable images left out (--skip-bad)", &skipped);
    let ranked = |p: &[f32]| {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&i, &j| p[j].total_cmp(&p[i]).then(i.cmp(&j)));
        order.truncate(a.top);
        order
    };
    let text = match a.format {
        Format::Csv => {
            let mut s = String::from("path,class,probability\n");
            for r in &rows {
                let (path, p) = (&r.path, &r.probabilities);
                for c in ranked(p) {
                    s += &format!(
                        "{},{},{:.6}\n",
                        csv_field(&path.display().to_string()),
                        csv_field(&classes[c]),
                        p[c]
                    );
                }
            }
            s
        }
        Format::Wide => {
            let mut s = String::from("path,predicted");
            for c in classes {
                s += &format!(",{}", csv_field(c));
            }
            s.push('\n');
            for r in &rows {
                let p = &r.probabilities;
                let best = ranked(p)[0];
                s += &format!(
                    "{},{}",
                    csv_field(&r.path.display().to_string()),
                    csv_field(&classes[best])
                );
                for v in p {
                    s += &format!(",{v:.6}");
                }
                s.push('\n');
            }
            s
        }
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let (path, p) = (&r.path, &r.probabilities);
                    let preds: Vec<serde_json::Value> = ranked(p)
                        .into_iter()
                        .map(|c| serde_json::json!({"class": classes[c], "probability": p[c]}))
                        .collect();
                    serde_json::json!({"path": path.display().to_string(), "predictions": preds})
                })
                .collect();
            serde_json::to_string_pretty(&items)? + "\n"
        }
    };
    match &a.output {
        Some(out) => {
            crate::io::atomic::write_atomic(out, |w| w.write_all(text.as_bytes()))?;
            eprintln!("wrote {} predictions to {}", rows.len(), out.display());
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}
