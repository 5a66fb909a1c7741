//! keel as a library: load Keras weights, build VGG16, run images through it.
//!
//! ```text
//! cargo run --release --example classify_and_features -- WEIGHTS.h5 IMAGE...
//! ```
//! With a file that has the top (vgg16_weights_tf_dim_ordering_tf_kernels.h5) it prints the
//! ImageNet top-3 of each image; with a conv-base file it prints the shape and mean of the
//! globally averaged block5_pool features.

use std::path::PathBuf;

use keel::cpu::Cpu;
use keel::io::image::Interpolation;
use keel::nn::{Pooling, Vgg, VggConfig};
use keel::tensor::Backend;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let weights_path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: WEIGHTS.h5 IMAGE..."))?;
    let images: Vec<PathBuf> = args.collect();

    // Any Keras flavour (.h5) or a keel safetensors file; the architecture comes from the file.
    let weights = keel::io::load_weights(&weights_path)?;
    let id = weights.identity().clone();
    println!(
        "{}: {} ({})",
        weights_path.display(),
        id.describe(),
        weights.format
    );

    // Keras's defaults for what the file holds; without the top, add global average pooling.
    let config = if id.include_top {
        id.config()
    } else {
        VggConfig {
            pooling: Pooling::Avg,
            ..id.config()
        }
    };
    let model = Vgg::new(config.clone(), weights)?;

    // load_img(target_size=(224, 224)) + preprocess_input, stacked into one batch.
    let x = keel::io::batch::load_preprocessed(&images, config.input, Interpolation::Nearest)?;
    let backend = Cpu::new();
    let y = backend.to_host(model.forward(&backend, &x)?)?;

    if id.include_top && id.classes == 1000 {
        for (path, top) in images
            .iter()
            .zip(keel::io::labels::decode_predictions(&y, 3)?)
        {
            let best: Vec<String> = top
                .iter()
                .map(|p| format!("{} {:.3}", p.name, p.score))
                .collect();
            println!("{}: {}", path.display(), best.join(", "));
        }
    } else {
        for (i, path) in images.iter().enumerate() {
            let f = y.index0(i)?;
            let mean = f.data().iter().sum::<f32>() / f.numel() as f32;
            println!("{}: features {} mean {mean:.4}", path.display(), f.shape());
        }
    }
    Ok(())
}
