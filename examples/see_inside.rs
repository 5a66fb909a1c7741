//! keel as a library: the calls behind `keel visualize`, for a program that draws its own
//! pictures of what VGG sees.
//!
//! ```text
//! cargo run --release --example see_inside -- WEIGHTS.h5 IMAGE OUT_DIR [MODEL_DIR]
//! cargo run --release --example see_inside -- \
//!     ../shared/weights/vgg16_imagenet_notop.h5 docs/tour/test_card.png /tmp/see
//! ```
//! Writes into OUT_DIR: activation maps of two layers for IMAGE, the first layer's filters, the
//! input patterns that excite four block3_conv1 channels, and, given a model folder from
//! `keel train` (trained on WEIGHTS), Grad-CAM and saliency of its prediction for IMAGE.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel::cpu::Cpu;
use keel::io::image::{Interpolation, decode_rgb};
use keel::nn::{Vgg, preprocess_rgb8};
use keel::tensor::Backend;
use keel::transfer::{FrozenBase, TrainedModel};
use keel::viz::filters::{self, AscentOptions};
use keel::viz::gradcam::{self, Explainer, OVERLAY_ALPHA};
use keel::viz::maps::{self, MapsPicture};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let (Some(weights_path), Some(image), Some(out)) = (args.first(), args.get(1), args.get(2))
    else {
        anyhow::bail!("usage: WEIGHTS.h5 IMAGE OUT_DIR [MODEL_DIR]");
    };
    std::fs::create_dir_all(out)?;
    let backend: Arc<dyn Backend> = Arc::new(Cpu::new());

    // The conv base at Keras's input size; the architecture comes from the file.
    let weights = keel::io::load_weights(weights_path)?;
    let id = weights.identity().clone();
    let vgg = Vgg::new(id.base_config([224, 224]), weights.conv_base())?;

    // 1. Activation maps: any layers' outputs from one forward pass, drawn as labelled grids.
    let x = keel::io::batch::load_preprocessed(
        std::slice::from_ref(image),
        [224, 224],
        Interpolation::Nearest,
    )?;
    let layers = ["block1_conv1", "block5_conv3"];
    let outputs = vgg.forward_outputs(backend.as_ref(), &x, &layers)?;
    let image_name = image.file_name().unwrap_or_default().to_string_lossy();
    for (layer, y) in layers.iter().zip(outputs) {
        let y = backend.to_host(y)?;
        let picture = MapsPicture {
            layer,
            image_name: &image_name,
            columns: 8,
        };
        let channels: Vec<usize> = (0..16).collect();
        save(
            &out.join(format!("maps_{layer}.png")),
            &maps::maps_png(&picture, &y, &channels)?,
        )?;
    }

    // 2. The first layer's kernels are pictures already: 3x3 RGB tiles.
    let kernel = vgg
        .layers_with_weights()
        .find_map(|(spec, params)| (spec.name == "block1_conv1").then_some(params).flatten())
        .map(|p| p.kernel())
        .ok_or_else(|| anyhow::anyhow!("block1_conv1 has no kernel"))?;
    let all: Vec<usize> = (0..64).collect();
    let png = filters::first_layer_png("block1_conv1", kernel, &all, 8)?;
    save(&out.join("filters_block1_conv1.png"), &png)?;

    // 3. Deeper channels: the input that excites each most, by seeded gradient ascent.
    let opts = AscentOptions {
        steps: 10,
        ..AscentOptions::default()
    };
    let channels = [0, 1, 2, 3];
    let ascent = filters::ascend(&vgg, backend.as_ref(), "block3_conv1", &channels, &opts)?;
    let png = filters::ascent_png("block3_conv1", &ascent, &channels, &opts, 4)?;
    save(&out.join("filters_block3_conv1.png"), &png)?;

    // 4. Why a trained model chose its class: Grad-CAM at block5_conv3 and saliency.
    if let Some(dir) = args.get(3) {
        explain(dir, weights_path, image, out, backend)?;
    }
    Ok(())
}

/// Grad-CAM and saliency of the class a `keel train` model folder predicts for `image`.
fn explain(
    dir: &Path,
    weights: &Path,
    image: &Path,
    out: &Path,
    backend: Arc<dyn Backend>,
) -> anyhow::Result<()> {
    let model = TrainedModel::load(dir)?;
    // The base as the model was trained on it: same layer, input size and resize filter, and
    // the fine-tuned layers (if any) in place of the file's.
    let info = &model.card.base;
    let base = FrozenBase::load(
        weights,
        &info.layer,
        info.input,
        info.interpolation.parse()?,
        backend.clone(),
    )?;
    model.check_base(&base, dir)?;
    let base = model.tuned_base(&base)?;
    let explainer = Explainer::for_model(&model, &base)?;

    let resized = base.load_image(image)?;
    let x = preprocess_rgb8(resized.height, resized.width, &resized.data)?.reshape([
        1,
        resized.height,
        resized.width,
        3,
    ])?;
    let cam = explainer.gradcam(backend.as_ref(), &x, "block5_conv3", None)?;
    println!(
        "{}: {} (probability {:.4})",
        image.display(),
        model.card.classes[cam.class],
        cam.probability
    );
    let photo = decode_rgb(image)?;
    let overlay = gradcam::overlay(&photo, &cam.map, OVERLAY_ALPHA);
    gradcam::write_png(&overlay, &out.join("gradcam.png"))?;
    let saliency = explainer.saliency(backend.as_ref(), &x, Some(cam.class))?;
    gradcam::write_png(
        &gradcam::greyscale(&saliency.map),
        &out.join("saliency.png"),
    )?;
    println!("wrote {}", out.join("gradcam.png").display());
    Ok(())
}

/// PNG bytes to `path`, atomically (no half-written picture if the program stops).
fn save(path: &Path, png: &[u8]) -> anyhow::Result<()> {
    keel::io::atomic::write_atomic(path, |w| std::io::Write::write_all(w, png))?;
    println!("wrote {}", path.display());
    Ok(())
}
