//! `keel summary`: the layer table of a model, without loading weights.

use std::path::PathBuf;

use clap::Parser;

use super::common::parse_hw;
use crate::nn::{Arch, Pooling, VggConfig, summary_table};

#[derive(Parser, Debug)]
pub struct Args {
    /// vgg16 or vgg19.
    model: Arch,
    /// Include the classifier (flatten, fc1, fc2, predictions).
    #[arg(long)]
    top: bool,
    /// Input size HxW.
    #[arg(long, value_parser = parse_hw, default_value = "224x224")]
    input: [usize; 2],
    /// Global pooling after block5 (without --top): none, avg or max.
    #[arg(long, default_value = "none")]
    pooling: Pooling,
    /// Classes of the predictions layer (with --top).
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Take the layer widths from this weights file instead of the ImageNet ones.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut config = VggConfig {
        include_top: a.top,
        pooling: a.pooling,
        input: a.input,
        classes: a.classes,
        ..VggConfig::new(a.model)
    };
    if let Some(path) = &a.weights {
        let id = crate::io::load_weights(path)?.identity().clone();
        if id.arch != a.model {
            anyhow::bail!(
                "{}: holds {} weights, not {}",
                path.display(),
                id.arch,
                a.model
            );
        }
        config.widths = id.widths;
        if id.include_top {
            config.fc_units = id.fc_units;
            config.classes = id.classes;
        }
    }
    config.validate()?;
    print!("{}", summary_table(&config));
    Ok(())
}
