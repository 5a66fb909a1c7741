//! Fine-tuning the top of VGG16 as a library, in the two phases of Keras's transfer-learning
//! guide: a head on the frozen base first, then the base's top block unfrozen and trained with
//! the head at a small learning rate. What `keel train --fine-tune block5` does, in view.
//!
//! ```text
//! cargo run --release --example fine_tune -- PHOTOS WEIGHTS.h5 OUT_DIR
//! cargo run --release --example fine_tune -- \
//!     ../shared/datasets/hymenoptera ../shared/weights/vgg16_imagenet_notop.h5 /tmp/avb-ft
//! ```
//! PHOTOS is `<class>/...` folders or `{train,val}/<class>/...`, as for `keel train`.

use std::path::PathBuf;
use std::sync::Arc;

use keel::cpu::Cpu;
use keel::io::dataset::scan_training_folder;
use keel::io::image::Interpolation;
use keel::nn::fit::{FitConfig, Fixed, Samples, evaluate, fit};
use keel::nn::head::{DEFAULT_HEAD, Head, HeadSpec};
use keel::nn::optim::OptimizerKind;
use keel::nn::{Classifier, ConvTail};
use keel::transfer::{
    ExtractOptions, FineTune, FrozenBase, MemoryBudget, TrainOptions, extract_features, train,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [photos, weights, out] = [0, 1, 2].map(|i| args.get(i).cloned());
    let (Some(photos), Some(weights), Some(out)) = (photos, weights, out) else {
        anyhow::bail!("usage: PHOTOS WEIGHTS.h5 OUT_DIR");
    };
    let data = scan_training_folder(&photos, None, 0)?;
    let backend = Arc::new(Cpu::new());
    let be = backend.as_ref();

    // The base, and what trains: block5's convolutions and pool (a copy with its own weights).
    let base = FrozenBase::load(
        &weights,
        "block5_pool",
        [224, 224],
        Interpolation::Bilinear,
        backend.clone(),
    )?;
    let tail: ConvTail = base.tail("block5_conv1")?;
    // The frozen part runs once per image: store its output, block5_conv1's input.
    let below = base.at_layer(&base.layer_before(tail.first_layer())?)?;
    let budget = MemoryBudget::new(1 << 30);
    let opts = ExtractOptions {
        progress: Some("block4_pool"),
        ..Default::default()
    };
    let (train_x, _) = extract_features(&below, &data.train, &opts, &budget)?;
    let (val_x, _) = extract_features(&below, &data.val, &opts, &budget)?;

    // Phase 1: the head alone, on the frozen tail's output, computed once. The tail is taken
    // out of the model so that fit() trains the head only.
    let spec = HeadSpec::parse(DEFAULT_HEAD, data.classes.len())?;
    let head = Head::new(spec, tail.output_shape(), 0)?;
    let mut model = Classifier::with_tail(tail, head)?;
    let frozen = model.tail.take();
    let phase1_x = run_tail(be, frozen.as_ref().unwrap(), &train_x)?;
    let phase1_val = run_tail(be, frozen.as_ref().unwrap(), &val_x)?;
    let cfg = FitConfig::default();
    fit(
        be,
        &mut model,
        &mut Fixed(&phase1_x),
        Some(&phase1_val),
        &cfg,
        &mut |m| {
            println!(
                "head  epoch {:>2} val_acc {:.4}",
                m.epoch,
                m.val_accuracy.unwrap_or(0.0)
            );
        },
    )?;

    // Phase 2: put the tail back and train both, at a small learning rate.
    model.tail = frozen;
    let cfg2 = FitConfig {
        epochs: 5,
        lr: 1e-5,
        optimizer: OptimizerKind::from_name("adam").map_err(anyhow::Error::msg)?,
        ..cfg
    };
    fit(
        be,
        &mut model,
        &mut Fixed(&train_x),
        Some(&val_x),
        &cfg2,
        &mut |m| {
            println!(
                "tuned epoch {:>2} val_acc {:.4}",
                m.epoch,
                m.val_accuracy.unwrap_or(0.0)
            );
        },
    )?;
    let (_, acc, _) = evaluate(be, &model, &val_x, 0.0)?;
    println!("validation accuracy after fine-tuning: {:.2}%", acc * 100.0);

    // Or all of it in one call, written as a model folder (head.safetensors and
    // tuned.safetensors beside model.json), which `keel evaluate` and `keel predict` read.
    let outcome = train(
        &data,
        &base,
        &TrainOptions {
            fine_tune: Some(FineTune {
                block: 5,
                fit: cfg2,
            }),
            ..Default::default()
        },
        &mut |_| {},
    )?;
    outcome.save(&out, true)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The frozen tail's output for every stored row: the head's features in phase 1.
fn run_tail(
    be: &dyn keel::tensor::Backend,
    tail: &ConvTail,
    x: &dyn Samples,
) -> anyhow::Result<keel::nn::fit::Features> {
    let mut data = Vec::new();
    let idx: Vec<usize> = (0..x.len()).collect();
    for chunk in idx.chunks(16) {
        let y = be.to_host(tail.forward(be, &x.gather(chunk)?)?)?;
        data.extend_from_slice(y.data());
    }
    Ok(keel::nn::fit::Features {
        shape: tail.output_shape().to_vec(),
        data,
        labels: x.labels().to_vec(),
    })
}
