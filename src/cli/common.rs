//! What several commands share: thread setup, size parsing, weights resolution, image lists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::backend::BackendArgs;
use crate::io::dataset::{IMAGE_EXTENSIONS, Skipped, is_image_path};
use crate::io::feature_cache::FeatureCache;
use crate::io::fetch;
use crate::io::image::Interpolation;
use crate::nn::{Arch, Identity, WeightSet};
use crate::tensor::Backend;
use crate::transfer::{ExtractOptions, FrozenBase, TrainedModel};

/// Size the rayon pool from `--threads`, else `KEEL_THREADS`, else all cores.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = match threads {
        Some(n) => Some(n),
        None => match std::env::var("KEEL_THREADS") {
            Ok(v) if !v.is_empty() => Some(
                v.parse()
                    .with_context(|| format!("KEEL_THREADS={v} is not a number"))?,
            ),
            _ => None,
        },
    };
    if let Some(n) = n {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    Ok(())
}

/// Parse `HxW` (`224x224`, `100x70`).
pub fn parse_hw(s: &str) -> Result<[usize; 2], String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not HxW (e.g. 224x224)"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{s}' is not HxW (e.g. 224x224)"))
    };
    Ok([p(h)?, p(w)?])
}

/// The options every command that runs the network takes.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Keras weights (.h5, any flavour, or a keel .safetensors); default: the official Keras
    /// file from keel's cache, downloaded if missing.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// vgg16 or vgg19 (inferred from the weights and checked against them).
    #[arg(long)]
    pub model: Option<Arch>,
    /// Resize filter, as Keras's load_img: nearest or bilinear [default: nearest, as
    /// load_img; for train, bilinear, as image_dataset_from_directory].
    #[arg(long)]
    pub interpolation: Option<Interpolation>,
}

/// Load weights from `--weights`, or from the cache (downloading the official Keras file if it
/// is not there). Checks `--model` against the file.
pub fn load_weights(
    weights: Option<&Path>,
    model: Option<Arch>,
    top: bool,
) -> anyhow::Result<(WeightSet, Identity)> {
    let path = match weights {
        Some(p) => p.to_path_buf(),
        None => {
            let file = fetch::official(model.unwrap_or(Arch::Vgg16), top);
            fetch::fetch(&file, true)?
        }
    };
    let set = crate::io::load_weights(&path)?;
    let id = set.identity().clone();
    if let Some(m) = model
        && m != id.arch
    {
        bail!(
            "{}: holds {} weights, but --model {} was given",
            path.display(),
            id.arch,
            m.name()
        );
    }
    Ok((set, id))
}

/// The images named by `inputs`: files as given, directories walked recursively in sorted path
/// order, skipping hidden entries and files without an image extension.
pub fn collect_images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("{}: cannot read", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            if found.is_empty() {
                bail!(
                    "{}: no images found (looked for {})",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot list directory", dir.display()))?
            .path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The base a model folder was trained on, from `--weights`, else the file recorded at
/// training (if it still exists), else the official Keras file; refused if its checksum,
/// layer, input size or preprocessing differ from the model's. Fine-tuned layers replace the
/// base's own.
pub fn base_for_model(
    model: &TrainedModel,
    model_dir: &Path,
    weights: Option<&Path>,
    backend: Arc<dyn Backend>,
) -> anyhow::Result<FrozenBase> {
    let info = &model.card.base;
    let arch: Arch = info.model.parse().map_err(anyhow::Error::msg)?;
    let path = match weights {
        Some(w) => w.to_path_buf(),
        None if info.weights_file.is_file() => info.weights_file.clone(),
        None => find_base_weights(model, model_dir, arch)?,
    };
    let (set, _) = load_weights(Some(&path), Some(arch), false)?;
    let interpolation = info.interpolation.parse()?;
    let base = FrozenBase::new(set, &info.layer, info.input, interpolation, backend)?;
    model.check_base(&base, model_dir)?;
    Ok(model.tuned_base(&base)?)
}

/// The weights a model was trained on when the file it recorded has moved: the official files
/// in keel's cache are tried by checksum. Nothing is downloaded: a download would only be the
/// right file if the model was trained on Keras's own weights, and the checksum would say so
/// only afterwards.
fn find_base_weights(
    model: &TrainedModel,
    model_dir: &Path,
    arch: Arch,
) -> anyhow::Result<PathBuf> {
    let info = &model.card.base;
    let mut looked = Vec::new();
    for top in [false, true] {
        let file = fetch::official(arch, top);
        looked.push(file.cached_path().display().to_string());
        if let Some(path) = fetch::cached(&file)?
            && crate::io::load_weights(&path)?.checksum() == info.weights_checksum
        {
            eprintln!(
                "{}: the base weights moved from {}; using {} (same checksum)",
                model_dir.display(),
                info.weights_file.display(),
                path.display()
            );
            return Ok(path);
        }
    }
    bail!(
        "{}: the base weights the model was trained on are no longer at {} (checksum {}), and \
         keel's cache holds no file with that checksum (looked at {}); pass them with \
         --weights FILE",
        model_dir.display(),
        info.weights_file.display(),
        info.weights_checksum,
        looked.join(", ")
    )
}

/// What `evaluate` and `predict` share: which base weights, the cache, unreadable images.
#[derive(clap::Args, Debug)]
pub struct UseModelArgs {
    /// Base weights [default: the file the model was trained with, else the official Keras
    /// file from the cache]; refused unless they are the weights the model was trained on.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Leave unreadable images out (each is reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

impl UseModelArgs {
    /// The model folder and the base it was trained on (checked, fine-tuned layers in place).
    pub fn open(&self, model_dir: &Path) -> anyhow::Result<(TrainedModel, FrozenBase)> {
        let model = TrainedModel::load(model_dir)?;
        let base = base_for_model(
            &model,
            model_dir,
            self.weights.as_deref(),
            self.backend.build()?,
        )?;
        Ok((model, base))
    }

    /// Extraction with a progress bar, `--skip-bad`, and `cache` (from [`CacheArgs::cache`]).
    pub fn extract_options<'a>(&self, cache: Option<&'a FeatureCache>) -> ExtractOptions<'a> {
        ExtractOptions {
            cache,
            skip_bad: self.skip_bad,
            progress: Some("features"),
            ..ExtractOptions::default()
        }
    }
}

/// Where features are cached.
#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    /// Feature cache folder [default: $KEEL_HOME/features, ~/.cache/keel/features].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Run the base on every image without reading or writing the cache.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
}

impl CacheArgs {
    pub fn cache(&self) -> Option<FeatureCache> {
        if self.no_cache {
            None
        } else {
            Some(FeatureCache::new(
                self.cache.clone().unwrap_or_else(FeatureCache::default_dir),
            ))
        }
    }
}

/// List skipped files on stderr: all of them up to 20, then a count.
pub fn print_skipped(what: &str, skipped: &[Skipped]) {
    if skipped.is_empty() {
        return;
    }
    eprintln!("{what}: {} file(s)", skipped.len());
    for s in skipped.iter().take(20) {
        eprintln!("  {}: {}", s.path.display(), s.reason);
    }
    if skipped.len() > 20 {
        eprintln!(
            "  ... and {} more (all are listed in report.json)",
            skipped.len() - 20
        );
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_hw("224x224").unwrap(), [224, 224]);
        assert_eq!(parse_hw("100X70").unwrap(), [100, 70]);
        assert!(parse_hw("224").is_err());
        assert!(parse_hw("ax3").is_err());
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b.jpg"), "\"a,b.jpg\"");
        assert_eq!(csv_field("say \"hi\".jpg"), "\"say \"\"hi\"\".jpg\"");
    }
}
