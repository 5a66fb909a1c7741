//! `keel visualize`: pictures of what the network sees. `maps` and `filters` show the layers
//! themselves; `gradcam` and `saliency` (in `gradcam.rs`) show why a model chose a class.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use super::backend::BackendArgs;
use super::common::{load_weights, parse_hw};
use crate::io::image::Interpolation;
use crate::nn::{Arch, LayerKind, LayerSpec, TOP_LAYERS, Vgg};
use crate::viz::filters::{self, AscentOptions};
use crate::viz::maps::{self, MapsPicture};

#[derive(Parser, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A labelled grid of one layer's activation maps for an image.
    Maps(MapsArgs),
    /// A layer's filters: RGB tiles for the first layer, the input patterns that excite each
    /// channel deeper down.
    Filters(FiltersArgs),
    /// Grad-CAM of a trained model's (or ImageNet's) class score, over the photo.
    Gradcam(super::gradcam::GradcamArgs),
    /// The gradient of a class score with respect to the input pixels.
    Saliency(super::gradcam::SaliencyArgs),
    /// One self-contained HTML page walking a photo through the network: the input, each
    /// block's maps, the prediction, Grad-CAM and saliency.
    Report(super::gradcam::ReportArgs),
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Maps(a) => maps(a),
        Command::Filters(a) => filters(a),
        Command::Gradcam(a) => super::gradcam::run_gradcam(a),
        Command::Saliency(a) => super::gradcam::run_saliency(a),
        Command::Report(a) => super::gradcam::run_report(a),
    }
}

/// Options of `keel visualize maps`.
#[derive(Parser, Debug)]
pub struct MapsArgs {
    /// The photo whose activations to draw.
    image: PathBuf,
    /// Keras weights (.h5, any flavour, or a keel .safetensors); default: the official Keras
    /// file from keel's cache, downloaded if missing.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// vgg16 or vgg19 (inferred from the weights and checked against them).
    #[arg(long)]
    model: Option<Arch>,
    /// Resize filter, as Keras's load_img: nearest or bilinear.
    #[arg(long, default_value = "nearest")]
    interpolation: Interpolation,
    /// The layer whose output to draw (Keras's name: input_1, block3_conv1, block4_pool, ...).
    #[arg(long)]
    layer: String,
    /// Channels to draw: A..B (B excluded), N, or a comma-separated list of both
    /// [default: the first 64, or all if fewer].
    #[arg(long, value_name = "LIST")]
    channels: Option<String>,
    /// Input size HxW the photo is resized to [default: 224x224, Keras's].
    #[arg(long, value_parser = parse_hw, default_value = "224x224")]
    input: [usize; 2],
    /// Tiles per row of the grid.
    #[arg(long, default_value_t = 8)]
    columns: usize,
    #[command(flatten)]
    backend: BackendArgs,
    /// Output PNG file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Options of `keel visualize filters`.
#[derive(Parser, Debug)]
pub struct FiltersArgs {
    /// Keras weights (.h5, any flavour, or a keel .safetensors); default: the official Keras
    /// file from keel's cache, downloaded if missing.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// vgg16 or vgg19 (inferred from the weights and checked against them).
    #[arg(long)]
    model: Option<Arch>,
    /// The convolution whose filters to draw (Keras's name: block1_conv1, block4_conv2, ...).
    #[arg(long)]
    layer: String,
    /// Channels to draw: A..B (B excluded), N, or a comma-separated list of both
    /// [default: the first 64 of the first layer, the first 16 deeper].
    #[arg(long, value_name = "LIST")]
    channels: Option<String>,
    /// Gradient-ascent steps for a layer past the first.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Seed of the noise the ascent starts from.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input size HxW of the ascent (at least 32x32).
    #[arg(long, value_parser = parse_hw, default_value = "64x64")]
    input: [usize; 2],
    /// Tiles per row of the grid.
    #[arg(long, default_value_t = 8)]
    columns: usize,
    #[command(flatten)]
    backend: BackendArgs,
    /// Output PNG file.
    #[arg(short, long)]
    output: PathBuf,
}

impl Args {
    /// `--threads` given after `visualize maps` or `visualize filters`; the threads of the
    /// other subcommands are theirs to report.
    pub(super) fn threads(&self) -> Option<usize> {
        match &self.command {
            Command::Maps(a) => a.backend.threads,
            Command::Filters(a) => a.backend.threads,
            Command::Gradcam(a) => a.explain.backend.threads,
            Command::Saliency(a) => a.explain.backend.threads,
            Command::Report(a) => a.explain.backend.threads,
        }
    }
}

/// Refuse a bad output path before any work, not after it.
fn check_output(output: &Path, columns: usize) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!(
            "{}: is a directory; give the PNG file to write",
            output.display()
        );
    }
    if columns == 0 {
        bail!("--columns must be at least 1");
    }
    Ok(())
}

/// The conv base of `weights` for `input`-sized images.
fn conv_base(
    weights: Option<&Path>,
    model: Option<Arch>,
    input: [usize; 2],
) -> anyhow::Result<Vgg> {
    let (set, id) = load_weights(weights, model, false)?;
    Ok(Vgg::new(id.base_config(input), set.conv_base())?)
}

/// The spec of `layer`, or an error naming the layers there are (and why a top layer is not
/// one of them: these pictures need a spatial output).
fn find_layer(vgg: &Vgg, layer: &str) -> anyhow::Result<LayerSpec> {
    if layer == "flatten" || TOP_LAYERS.contains(&layer) {
        bail!(
            "{layer} is in VGG's top and has no spatial output; pick a layer of the conv base: {}",
            vgg.layer_names().join(", ")
        );
    }
    let i = vgg.layer_index(layer)?;
    vgg.layer_specs()
        .nth(i)
        .cloned()
        .context("the layer index is out of the model")
}

fn write_png(output: &Path, png: &[u8]) -> anyhow::Result<()> {
    crate::io::atomic::write_atomic(output, |w| std::io::Write::write_all(w, png))?;
    Ok(())
}

fn maps(a: MapsArgs) -> anyhow::Result<()> {
    check_output(&a.output, a.columns)?;
    let backend = a.backend.build()?;
    let vgg = conv_base(a.weights.as_deref(), a.model, a.input)?;
    let spec = find_layer(&vgg, &a.layer)?;
    let width = spec.output.dims().last().copied().unwrap_or(0);
    let channels = maps::parse_channels(a.channels.as_deref(), width, 64)?;
    let x = crate::io::batch::load_preprocessed(
        std::slice::from_ref(&a.image),
        a.input,
        a.interpolation,
    )?;
    let y = vgg
        .forward_outputs(backend.as_ref(), &x, &[a.layer.as_str()])?
        .remove(0);
    let y = backend.to_host(y)?;
    let name = a.image.file_name().map_or_else(
        || a.image.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let picture = MapsPicture {
        layer: &a.layer,
        image_name: &name,
        columns: a.columns,
    };
    let png = maps::maps_png(&picture, &y, &channels)?;
    write_png(&a.output, &png)?;
    eprintln!(
        "wrote {}: {} channel(s) of {} {}",
        a.output.display(),
        channels.len(),
        a.layer,
        y.shape()
    );
    Ok(())
}

fn filters(a: FiltersArgs) -> anyhow::Result<()> {
    check_output(&a.output, a.columns)?;
    let backend = a.backend.build()?;
    let vgg = conv_base(a.weights.as_deref(), a.model, a.input)?;
    let spec = find_layer(&vgg, &a.layer)?;
    let LayerKind::Conv2d { cin, cout } = spec.kind else {
        let convs: Vec<&str> = vgg
            .layer_specs()
            .filter(|s| matches!(s.kind, LayerKind::Conv2d { .. }))
            .map(|s| s.name.as_str())
            .collect();
        bail!(
            "{} is a {} layer and has no filters; pick a convolution: {}",
            a.layer,
            spec.keras_type(),
            convs.join(", ")
        );
    };
    let first = cin == 3;
    let default = if first {
        filters::DEFAULT_FIRST_LAYER
    } else {
        filters::DEFAULT_DEEPER
    };
    let channels = maps::parse_channels(a.channels.as_deref(), cout, default)?;
    let png = if first {
        let kernel = vgg
            .layers_with_weights()
            .find(|(s, _)| s.name == a.layer)
            .and_then(|(_, p)| p)
            .map(|p| p.kernel())
            .with_context(|| format!("{} has no kernel", a.layer))?;
        filters::first_layer_png(&a.layer, kernel, &channels, a.columns)?
    } else {
        let opts = AscentOptions {
            steps: a.steps,
            seed: a.seed,
            input: a.input,
            ..AscentOptions::default()
        };
        let ascent = filters::ascend(&vgg, backend.as_ref(), &a.layer, &channels, &opts)?;
        report_gain(&ascent, &channels);
        filters::ascent_png(&a.layer, &ascent, &channels, &opts, a.columns)?
    };
    write_png(&a.output, &png)?;
    eprintln!(
        "wrote {}: {} filter(s) of {}",
        a.output.display(),
        channels.len(),
        a.layer
    );
    Ok(())
}

/// How much the ascent raised each channel's mean pre-ReLU activation: a channel it could not
/// raise got no gradient, and its tile is noise, not a pattern.
fn report_gain(ascent: &filters::Ascent, channels: &[usize]) {
    let (Some(first), Some(last)) = (ascent.means.first(), ascent.means.last()) else {
        return;
    };
    let gains: Vec<String> = channels
        .iter()
        .zip(first.iter().zip(last))
        .map(|(c, (f, l))| format!("{c}: {f:.3} -> {l:.3}"))
        .collect();
    eprintln!(
        "mean activation before ReLU, first -> last step: {}",
        gains.join(", ")
    );
}
