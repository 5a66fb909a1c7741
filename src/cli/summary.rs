//! `keel summary`: the layer table of a model, without loading weights: VGG16/VGG19 by name,
//! or a trained model folder (its base, then its head).

use std::path::PathBuf;

use clap::Parser;

use super::common::parse_hw;
use crate::nn::{Arch, Pooling, VggConfig, summary_table};

#[derive(Parser, Debug)]
pub struct Args {
    /// vgg16, vgg19, or a model folder written by `keel train`.
    model: String,
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
    let dir = std::path::Path::new(&a.model);
    if dir.is_dir() {
        return model_folder(dir);
    }
    let arch: Arch = a.model.parse().map_err(|e: String| {
        anyhow::anyhow!("{e}; or give a model folder written by keel train")
    })?;
    let a = Args {
        model: a.model.clone(),
        ..a
    };
    let mut config = VggConfig {
        include_top: a.top,
        pooling: a.pooling,
        input: a.input,
        classes: a.classes,
        ..VggConfig::new(arch)
    };
    if let Some(path) = &a.weights {
        let id = crate::io::load_weights(path)?.identity().clone();
        if id.arch != arch {
            anyhow::bail!(
                "{}: holds {} weights, not {}",
                path.display(),
                id.arch,
                arch
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

/// A trained model: its base (to the layer the head reads, widths from the base weights when
/// the recorded file is there), then the head layer by layer, and what was fine-tuned.
fn model_folder(dir: &std::path::Path) -> anyhow::Result<()> {
    let model = crate::transfer::TrainedModel::load(dir)?;
    let card = &model.card;
    let arch: Arch = card.base.model.parse().map_err(anyhow::Error::msg)?;
    let mut config = VggConfig {
        include_top: false,
        input: card.base.input,
        ..VggConfig::new(arch)
    };
    let widths = match crate::io::load_weights(&card.base.weights_file) {
        Ok(set) => {
            config.widths = set.identity().widths;
            "from the base weights".to_string()
        }
        Err(_) => format!(
            "ImageNet's; {} was not found",
            card.base.weights_file.display()
        ),
    };
    println!(
        "{}: {} classes ({}), base {} to {} at {}x{} (layer widths {widths})\n",
        dir.display(),
        card.classes.len(),
        card.classes.join(", "),
        arch,
        card.base.layer,
        card.base.input[0],
        card.base.input[1]
    );
    print!("{}", summary_table(&config));
    let tuned = card.fine_tune.as_ref().is_some_and(|f| f.kept);
    println!(
        "(In this model the base is frozen{}: its trainable counts above are Keras's for the \
         network alone.)",
        if tuned {
            " below the fine-tuned layers"
        } else {
            ""
        }
    );
    let head = &model.head;
    let shapes = head.spec().shapes(head.input_shape())?;
    let tuple = |dims: &[usize]| {
        let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!("({})", d.join(", "))
    };
    println!(
        "\nHead (reads {} {}): {} parameters",
        card.base.layer,
        tuple(head.input_shape()),
        head.num_params()
    );
    let mut n_in: usize = head.input_shape().iter().product();
    for (layer, shape) in head.spec().layers.iter().zip(&shapes) {
        let params = match layer {
            crate::nn::head::HeadLayer::Dense(n) => n_in * n + n,
            _ => 0,
        };
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        println!(
            " {:<16}{:<20}{params:>12}",
            layer.to_string(),
            format!("({})", dims.join(", "))
        );
        n_in = shape.iter().product();
    }
    println!(
        " {:<16}{:<20}{:>12}",
        "softmax",
        format!("({})", card.classes.len()),
        0
    );
    match &card.fine_tune {
        Some(f) if f.kept => println!(
            "\nFine-tuned from {}: {} ({} parameters)",
            f.block,
            f.layers.join(", "),
            f.params
        ),
        Some(f) => println!(
            "\nFine-tuning from {} did not beat the head alone; the folder holds the head-only model",
            f.block
        ),
        None => {}
    }
    Ok(())
}
