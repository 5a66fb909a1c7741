//! `keel visualize`: pictures of what the network sees. `maps` and `filters` show the layers
//! themselves; `gradcam` and `saliency` (in `gradcam.rs`) show why a model chose a class.

use clap::{Parser, Subcommand};

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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Maps(a) => maps(a),
        Command::Filters(a) => filters(a),
        Command::Gradcam(a) => super::gradcam::run_gradcam(a),
        Command::Saliency(a) => super::gradcam::run_saliency(a),
    }
}

/// Options of `keel visualize maps`.
#[derive(Parser, Debug)]
pub struct MapsArgs {}

/// Options of `keel visualize filters`.
#[derive(Parser, Debug)]
pub struct FiltersArgs {}

fn maps(_a: MapsArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel visualize maps is not built yet")
}

fn filters(_a: FiltersArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel visualize filters is not built yet")
}
