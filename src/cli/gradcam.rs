//! `keel visualize gradcam` and `keel visualize saliency`: why a model chose a class.

use clap::Parser;

/// Options of `keel visualize gradcam`.
#[derive(Parser, Debug)]
pub struct GradcamArgs {}

/// Options of `keel visualize saliency`.
#[derive(Parser, Debug)]
pub struct SaliencyArgs {}

pub fn run_gradcam(_a: GradcamArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel visualize gradcam is not built yet")
}

pub fn run_saliency(_a: SaliencyArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel visualize saliency is not built yet")
}
