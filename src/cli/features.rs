//! `keel features`: the output of one layer for every image, into a .npy file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use super::backend::BackendArgs;
use super::common::{ModelArgs, base_for_model, collect_images, load_weights, parse_hw};
use crate::io::image::Interpolation;
use crate::nn::{Pooling, TOP_LAYERS, Vgg, VggConfig};
use crate::tensor::{GlobalPool, Tensor};
use crate::transfer::TrainedModel;

#[derive(Parser, Debug)]
pub struct Args {
    /// Image files or directories (walked recursively, in sorted path order).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    /// A model folder written by keel train: use the base it was trained on, with its
    /// fine-tuned layers (and, unless --input is given, its input size and resize filter).
    #[arg(long, value_name = "MODEL_DIR", conflicts_with = "model")]
    from: Option<PathBuf>,
    /// The layer whose output to save (Keras's name).
    #[arg(long, default_value = "block5_pool")]
    layer: String,
    /// Global pooling of the layer's output over H and W: none, avg or max.
    #[arg(long, default_value = "none")]
    pooling: Pooling,
    /// Input size HxW every image is resized to [default: 224x224, Keras's].
    #[arg(long, value_parser = parse_hw)]
    input: Option<[usize; 2]>,
    /// Images per forward pass of the base (as `keel train --base-batch`).
    #[arg(long, default_value_t = 4, alias = "batch")]
    base_batch: usize,
    /// Output .npy file: (images, ...layer shape) float32; the image paths, one per line in
    /// row order, go to the same name with .paths.txt.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.base_batch == 0 {
        bail!("--base-batch must be at least 1");
    }
    let needs_top = a.layer == "flatten" || TOP_LAYERS.contains(&a.layer.as_str());
    let backend = a.backend.build()?;
    let (model, input, interpolation) = match &a.from {
        Some(dir) => {
            if needs_top {
                bail!(
                    "--from uses a model's conv base; layer {} is in VGG's top",
                    a.layer
                );
            }
            let trained = TrainedModel::load(dir)?;
            let info = &trained.card.base;
            let input = a.input.unwrap_or(info.input);
            let interpolation = a.model.interpolation.unwrap_or(info.interpolation.parse()?);
            let base = base_for_model(&trained, dir, a.model.weights.as_deref(), backend.clone())?;
            (base.vgg_at(input)?, input, interpolation)
        }
        None => {
            let input = a.input.unwrap_or([224, 224]);
            let (set, id) = load_weights(a.model.weights.as_deref(), a.model.model, needs_top)?;
            let (set, config) = if needs_top {
                if !id.include_top {
                    bail!(
                        "{}: layer {} is in the top, but the file holds only the conv base",
                        set.source.display(),
                        a.layer
                    );
                }
                (
                    set,
                    VggConfig {
                        input,
                        ..id.config()
                    },
                )
            } else {
                (set.conv_base(), id.base_config(input))
            };
            let interpolation = a.model.interpolation.unwrap_or(Interpolation::Nearest);
            (Vgg::new(config, set)?, input, interpolation)
        }
    };
    model.layer_index(&a.layer)?;
    let paths = collect_images(&a.images)?;
    let backend = backend.as_ref();

    let bar = indicatif::ProgressBar::new(paths.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows: Vec<Tensor> = Vec::with_capacity(paths.len());
    let load = |chunk: &[PathBuf]| crate::io::batch::load_preprocessed(chunk, input, interpolation);
    let chunks: Vec<&[PathBuf]> = paths.chunks(a.base_batch).collect();
    let started = std::time::Instant::now();
    let mut busy = 0.0;
    let mut next = chunks.first().map(|c| load(c));
    for (k, chunk) in chunks.iter().enumerate() {
        let x = next.take().expect("loaded ahead")?;
        // The network runs this batch while CPU threads decode the next one.
        let (y, ahead) = rayon::join(
            || -> anyhow::Result<Tensor> {
                let t = std::time::Instant::now();
                let mut y = model
                    .forward_outputs(backend, &x, &[a.layer.as_str()])?
                    .remove(0);
                if a.pooling != Pooling::None {
                    if y.shape().rank() != 4 {
                        bail!(
                            "--pooling needs a spatial layer, but {} outputs {}",
                            a.layer,
                            y.shape()
                        );
                    }
                    let kind = if a.pooling == Pooling::Avg {
                        GlobalPool::Avg
                    } else {
                        GlobalPool::Max
                    };
                    y = backend.global_pool(&y, kind)?;
                }
                let y = backend.to_host(y)?;
                busy += t.elapsed().as_secs_f64();
                Ok(y)
            },
            || chunks.get(k + 1).map(|c| load(c)),
        );
        next = ahead;
        let y = y?;
        for i in 0..chunk.len() {
            rows.push(y.index0(i)?);
        }
        bar.inc(chunk.len() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let features = Tensor::stack(&rows)?;
    let list_path = paths_file_for(&a.output);
    let listing: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    crate::io::npy::write_f32(&a.output, &features)?;
    let written = crate::io::atomic::write_atomic(&list_path, |w| {
        std::io::Write::write_all(w, listing.as_bytes())
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&a.output); // both files or neither
        return Err(e).context("cannot write the path list");
    }
    eprintln!(
        "wrote {}: {} features of {} images ({})",
        a.output.display(),
        features.shape(),
        paths.len(),
        list_path.display()
    );
    eprintln!(
        "{:.1} s, {} images/s; {} busy {}",
        seconds,
        crate::transfer::progress::rate_text(paths.len() as f64 / seconds.max(1e-9)),
        backend.name(),
        busy_text(busy, seconds)
    );
    Ok(())
}

/// How much of a run the backend computed: "93% of the time (1.2 s)". The rest it waited for
/// images to be decoded.
pub fn busy_text(busy: f64, total: f64) -> String {
    format!(
        "{:.0}% of the time ({busy:.1} s)",
        100.0 * busy / total.max(1e-9)
    )
}

/// `f.npy` -> `f.paths.txt`.
fn paths_file_for(output: &std::path::Path) -> PathBuf {
    output.with_extension("paths.txt")
}
