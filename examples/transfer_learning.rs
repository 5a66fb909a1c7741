//! keel as a library, step by step: the transfer-learning job that `keel train` runs, with
//! each piece in view (frozen base, cached features, head, fit, evaluate, predict, save).
//!
//! ```text
//! cargo run --release --example transfer_learning -- PHOTOS WEIGHTS.h5 OUT_DIR [HxW]
//! cargo run --release --example transfer_learning -- \
//!     ../shared/datasets/hymenoptera ../shared/weights/vgg16_imagenet_notop.h5 /tmp/avb
//! ```
//! PHOTOS is `<class>/...` folders or `{train,val}/<class>/...`, as for `keel train`.

use std::path::PathBuf;
use std::sync::Arc;

use keel::cpu::Cpu;
use keel::io::dataset::scan_training_folder;
use keel::io::feature_cache::FeatureCache;
use keel::io::image::Interpolation;
use keel::nn::Classifier;
use keel::nn::fit::{FitConfig, Fixed, Samples, evaluate, fit};
use keel::nn::head::{DEFAULT_HEAD, Head, HeadSpec};
use keel::nn::metrics::Classification;
use keel::tensor::Backend;
use keel::transfer::{
    ExtractOptions, FrozenBase, MemoryBudget, TrainOptions, extract_features, train,
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [photos, weights, out] = [0, 1, 2].map(|i| args.get(i).map(PathBuf::from));
    let (Some(photos), Some(weights), Some(out)) = (photos, weights, out) else {
        anyhow::bail!("usage: PHOTOS WEIGHTS.h5 OUT_DIR [HxW]");
    };
    let input = match args.get(3) {
        Some(hw) => {
            let (h, w) = hw
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("HxW, e.g. 224x224"))?;
            [h.parse()?, w.parse()?]
        }
        None => [224, 224],
    };

    // 1. The data: classes are the sorted folder names; a train/val split is kept.
    let data = scan_training_folder(&photos, None, 0)?;
    println!(
        "classes {:?}: {} train, {} val",
        data.classes,
        data.train.len(),
        data.val.len()
    );

    // 2. The frozen base: VGG's conv base up to block5_pool, from Keras's .h5, on the fast
    //    CPU kernels (the backend is chosen here, once, and handed down).
    let backend = Arc::new(Cpu::new());
    let base = FrozenBase::load(
        &weights,
        "block5_pool",
        input,
        Interpolation::Bilinear,
        backend.clone(),
    )?;
    println!(
        "base {} {:?}, features {:?}",
        base.info().model,
        base.info().weights_checksum,
        base.feature_shape()
    );

    // 3. Features once, cached on disk by content: a second run starts training at once.
    let cache = FeatureCache::new(FeatureCache::default_dir());
    let opts = ExtractOptions {
        cache: Some(&cache),
        progress: Some("features"),
        ..Default::default()
    };
    // Stored in memory up to 1 GiB, beyond that in a temporary file.
    let budget = MemoryBudget::new(1 << 30);
    let (train_set, _) = extract_features(&base, &data.train, &opts, &budget)?;
    let (val_set, _) = extract_features(&base, &data.val, &opts, &budget)?;

    // 4. A head and the training loop, by hand.
    let spec = HeadSpec::parse(DEFAULT_HEAD, data.classes.len())?;
    let mut model = Classifier::head_only(Head::new(spec, base.feature_shape(), 0)?);
    let cfg = FitConfig::default();
    let be = backend.as_ref();
    let report = fit(
        be,
        &mut model,
        &mut Fixed(&train_set),
        Some(&val_set),
        &cfg,
        &mut |m| {
            println!(
                "epoch {:>2} loss {:.4} val_acc {:.4}",
                m.epoch,
                m.train_loss,
                m.val_accuracy.unwrap_or(0.0)
            );
        },
    )?;
    let (loss, _, predicted) = evaluate(be, &model, &val_set, cfg.l2)?;
    let metrics = Classification::new(&data.classes, val_set.labels(), &predicted);
    println!(
        "best epoch {:?}, val loss {loss:.4}\n{}",
        report.best_epoch,
        metrics.to_text()
    );

    // 5. Probabilities for one photo.
    let first = &data.val[0].path;
    let x = base.run_images(&[base.load_image(first)?])?;
    let p = be.softmax(&model.logits(be, &x)?)?;
    let p = p.data();
    println!("{}: {:?} -> {:?}", first.display(), data.classes, p);

    // 6. Or all of the above in one call, written as a model folder (what `keel train` does).
    let outcome = train(
        &data,
        &base,
        &TrainOptions {
            cache: Some(cache),
            ..Default::default()
        },
        &mut |_| {},
    )?;
    outcome.save(&out, true)?;
    println!("wrote {}", out.display());
    Ok(())
}
