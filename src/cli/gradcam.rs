//! `keel visualize gradcam` and `keel visualize saliency`: why a model chose a class.
//!
//! Both explain one class score of one photo, from a trained model folder (its classes) or
//! from the ImageNet top (`--weights` with the top; ImageNet's classes). Everything that can
//! be refused (the source, the class, the layer, the image) is checked before anything is
//! computed, and the picture is written atomically, so a failure leaves no file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;

use super::backend::BackendArgs;
use super::common::{base_for_model, load_weights};
use crate::io::image::{Interpolation, RgbImage, decode_rgb};
use crate::io::labels::{IMAGENET_CLASS_COUNT, imagenet_classes};
use crate::nn::{Vgg, preprocess_rgb8};
use crate::tensor::{Backend, Tensor};
use crate::transfer::{FrozenBase, TrainedModel};
use crate::viz::gradcam::{self, DEFAULT_LAYER, Explainer, OVERLAY_ALPHA};

/// What both commands take: the network, the photo, the class, where the picture goes.
#[derive(clap::Args, Debug)]
pub(super) struct Explain {
    /// A model folder written by `keel train` followed by the image; or only the image, with
    /// --weights (the ImageNet top).
    #[arg(value_name = "[MODEL_DIR] IMG", num_args = 1..=2, required = true)]
    paths: Vec<PathBuf>,
    /// Explain the ImageNet top of this weights file (it must hold fc1, fc2 and predictions)
    /// instead of a model folder.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// The class to explain, as the model folder or ImageNet's index names it (a label such as
    /// tabby, a WordNet id, or a class index) [default: the predicted class].
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// The file to write: a PNG (gradcam, saliency) or an HTML page (report).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
}

/// Options of `keel visualize gradcam`.
#[derive(Parser, Debug)]
pub struct GradcamArgs {
    #[command(flatten)]
    pub(super) explain: Explain,
    /// The conv layer whose output is weighted (block1_conv1 ... block5_conv3; at or below the
    /// layer a model folder's head reads).
    #[arg(long, default_value = DEFAULT_LAYER, value_name = "LAYER")]
    layer: String,
}

/// Options of `keel visualize saliency`.
#[derive(Parser, Debug)]
pub struct SaliencyArgs {
    #[command(flatten)]
    pub(super) explain: Explain,
}

pub fn run_gradcam(a: GradcamArgs) -> anyhow::Result<()> {
    let net = Network::open(&a.explain)?;
    let explainer = net.explainer()?;
    explainer.above(&a.layer)?; // refuse a bad layer before reading the image
    let class = net.class_index(a.explain.class.as_deref())?;
    let (photo, x) = net.load(image_path(&a.explain))?;
    let cam = explainer.gradcam(net.backend.as_ref(), &x, &a.layer, class)?;
    println!(
        "class {} (index {}), probability {:.4}; Grad-CAM at {} ({}x{})",
        net.class_name(cam.class),
        cam.class,
        cam.probability,
        a.layer,
        cam.map.height,
        cam.map.width
    );
    let picture = gradcam::overlay(&photo, &cam.map, OVERLAY_ALPHA);
    write(&picture, &a.explain.output)
}

pub fn run_saliency(a: SaliencyArgs) -> anyhow::Result<()> {
    let net = Network::open(&a.explain)?;
    let explainer = net.explainer()?;
    let class = net.class_index(a.explain.class.as_deref())?;
    let (_, x) = net.load(image_path(&a.explain))?;
    let s = explainer.saliency(net.backend.as_ref(), &x, class)?;
    println!(
        "class {} (index {}), probability {:.4}",
        net.class_name(s.class),
        s.class,
        s.probability
    );
    write(&gradcam::greyscale(&s.map), &a.explain.output)
}

fn image_path(e: &Explain) -> &Path {
    e.paths.last().expect("clap requires one path")
}

fn write(picture: &RgbImage, out: &Path) -> anyhow::Result<()> {
    gradcam::write_png(picture, out)?;
    eprintln!(
        "wrote {} ({}x{})",
        out.display(),
        picture.width,
        picture.height
    );
    Ok(())
}

/// The network whose class score is explained.
enum Source {
    Model {
        model: Box<TrainedModel>,
        base: Box<FrozenBase>,
    },
    ImageNet {
        vgg: Vgg,
    },
}

struct Network {
    source: Source,
    backend: std::sync::Arc<dyn Backend>,
}

impl Network {
    /// The model folder or the ImageNet top, exactly one of them.
    fn open(e: &Explain) -> anyhow::Result<Network> {
        let backend = e.backend.build()?;
        let source = match (&e.paths[..], &e.weights) {
            ([_, _], Some(_)) => {
                bail!("give a model folder or --weights FILE (the ImageNet top), not both")
            }
            ([dir, _], None) => {
                let model = TrainedModel::load(dir)?;
                let base = base_for_model(&model, dir, None, backend.clone())?;
                Source::Model {
                    model: Box::new(model),
                    base: Box::new(base),
                }
            }
            (_, Some(w)) => Source::ImageNet {
                vgg: imagenet_vgg(w)?,
            },
            (_, None) => bail!(
                "give a model folder before the image, or --weights FILE with the ImageNet top"
            ),
        };
        Ok(Network { source, backend })
    }

    fn explainer(&self) -> anyhow::Result<Explainer<'_>> {
        Ok(match &self.source {
            Source::Model { model, base } => Explainer::for_model(model, base)?,
            Source::ImageNet { vgg } => Explainer::imagenet(vgg)?,
        })
    }

    /// The class names, in index order.
    fn classes(&self) -> Vec<String> {
        match &self.source {
            Source::Model { model, .. } => model.card.classes.clone(),
            Source::ImageNet { vgg } if vgg.config().classes == IMAGENET_CLASS_COUNT => {
                imagenet_classes().iter().map(|c| c.name.clone()).collect()
            }
            Source::ImageNet { vgg } => (0..vgg.config().classes)
                .map(|i| format!("class {i}"))
                .collect(),
        }
    }

    fn class_name(&self, i: usize) -> String {
        self.classes()
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("class {i}"))
    }

    /// `--class` as an index: a name, an ImageNet WordNet id, or an index.
    fn class_index(&self, class: Option<&str>) -> anyhow::Result<Option<usize>> {
        let Some(want) = class else {
            return Ok(None);
        };
        let names = self.classes();
        let imagenet =
            matches!(self.source, Source::ImageNet { .. }) && names.len() == IMAGENET_CLASS_COUNT;
        let by_name = names.iter().position(|n| n == want).or_else(|| {
            imagenet
                .then(|| {
                    imagenet_classes().iter().position(|c| {
                        c.wnid == want || c.name.eq_ignore_ascii_case(&want.replace(' ', "_"))
                    })
                })
                .flatten()
        });
        let by_index = want.parse::<usize>().ok().filter(|&i| i < names.len());
        if let Some(i) = by_name.or(by_index) {
            return Ok(Some(i));
        }
        let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
        let more = if names.len() > shown.len() {
            format!(", ... ({} in all)", names.len())
        } else {
            String::new()
        };
        bail!(
            "unknown class '{want}'; the classes are {}{more}, or an index from 0 to {}",
            shown.join(", "),
            names.len().saturating_sub(1)
        )
    }

    /// The photo as it is (for the overlay) and the network's preprocessed input `(1, H, W, 3)`.
    fn load(&self, path: &Path) -> anyhow::Result<(RgbImage, Tensor)> {
        let photo = decode_rgb(path)?;
        let resized = match &self.source {
            Source::Model { base, .. } => base.load_image(path)?,
            Source::ImageNet { vgg } => {
                let [h, w] = vgg.config().input;
                crate::io::image::load_img(path, Some((h, w)), Interpolation::Nearest)?
            }
        };
        let (h, w) = (resized.height, resized.width);
        let x = preprocess_rgb8(h, w, &resized.data)?.reshape([1, h, w, 3])?;
        Ok((photo, x))
    }
}

/// VGG with its ImageNet top from `weights`, at the input size its fc1 was made for.
fn imagenet_vgg(weights: &Path) -> anyhow::Result<Vgg> {
    let (set, id) = load_weights(Some(weights), None, true)?;
    if !id.include_top {
        bail!(
            "{}: holds only the {} conv base (no fc1, fc2, predictions); --weights needs the \
             file with the top (keel fetch {} --top), or give a model folder instead",
            set.source.display(),
            id.arch,
            id.arch.name()
        );
    }
    let mut config = id.config();
    if let Some(input) = super::classify::square_input_for_fc1(&set, id.widths[4]) {
        config.input = input;
    }
    Vgg::new(config, set).with_context(|| format!("{}", weights.display()))
}

/// Options of `keel visualize report`.
#[derive(Parser, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub(super) explain: Explain,
    /// Activation maps shown per block.
    #[arg(long, default_value_t = 8, value_name = "N")]
    channels: usize,
}

/// One HTML page walking the photo through the network: the input, each block's last
/// convolution, the prediction, Grad-CAM and saliency. Every picture is computed before the
/// page is written, atomically, so a failure leaves no file.
pub fn run_report(a: ReportArgs) -> anyhow::Result<()> {
    use crate::viz::maps::{MapsPicture, maps_png};
    use crate::viz::report::{Figure, Report, Section};

    if a.channels == 0 {
        bail!("--channels must be at least 1");
    }
    let net = Network::open(&a.explain)?;
    let explainer = net.explainer()?;
    let class = net.class_index(a.explain.class.as_deref())?;
    let path = image_path(&a.explain);
    let (photo, x) = net.load(path)?;
    let be = net.backend.as_ref();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let png = |img: &RgbImage| -> anyhow::Result<Vec<u8>> {
        crate::viz::plots::encode_png(img.data.clone(), (img.width as u32, img.height as u32))
            .map_err(anyhow::Error::msg)
    };
    let [_, h, w, _] = x.shape().nhwc("input")?;

    let mut sections = vec![Section {
        heading: "The input".into(),
        text: format!(
            "The photo ({}x{}) is resized to {h}x{w}, turned from RGB into BGR and has the \
             ImageNet mean of each channel subtracted (Keras's caffe preprocessing): that is \
             all VGG sees.",
            photo.width, photo.height
        ),
        figures: vec![Figure {
            caption: name.clone(),
            png: png(&photo)?,
        }],
    }];

    // Each block's last convolution, up to the layer the classifier reads.
    let convs = explainer.conv_layers();
    let mut blocks = Vec::new();
    for b in 1..=5 {
        if let Some(last) = convs.iter().rfind(|l| l.starts_with(&format!("block{b}_"))) {
            blocks.push(last.to_string());
        }
    }
    let mut figures = Vec::new();
    for layer in &blocks {
        let act = explainer.activation(be, &x, layer)?;
        let width = act.dims()[3];
        let channels: Vec<usize> = (0..a.channels.min(width)).collect();
        let pic = MapsPicture {
            layer,
            image_name: &name,
            columns: 8,
        };
        figures.push(Figure {
            caption: format!("{layer}: the first {} of {width} channels", channels.len()),
            png: maps_png(&pic, &act, &channels)?,
        });
    }
    sections.push(Section {
        heading: "Block by block".into(),
        text: "Each block's last convolution, after its ReLU. Early maps follow edges and \
               colours at full resolution; each 2x2 pool halves the grid, and deeper channels \
               answer to larger and more abstract patterns (the receptive field of block5_conv3 \
               is 196 pixels wide). Each map is scaled to its own range."
            .into(),
        figures,
    });

    let cam_layer = convs.last().copied().unwrap_or(DEFAULT_LAYER).to_string();
    let cam = explainer.gradcam(be, &x, &cam_layer, class)?;
    let sal = explainer.saliency(be, &x, Some(cam.class))?;
    let label = net.class_name(cam.class);
    sections.push(Section {
        heading: "The prediction, and why".into(),
        text: format!(
            "Class {label} (index {}), probability {:.4}. Grad-CAM weights each channel of \
             {cam_layer} by the mean gradient of that class's score over it and keeps what \
             speaks for the class; saliency is the size of the score's gradient at each input \
             pixel.",
            cam.class, cam.probability
        ),
        figures: vec![
            Figure {
                caption: format!("Grad-CAM of {label} at {cam_layer}"),
                png: png(&gradcam::overlay(&photo, &cam.map, OVERLAY_ALPHA))?,
            },
            Figure {
                caption: format!("saliency of {label}"),
                png: png(&gradcam::greyscale(&sal.map))?,
            },
        ],
    });
    let report = Report {
        title: format!("{name} through {}", explainer_name(&net)),
        intro: format!(
            "What each part of the network does with {name}, made by keel visualize report."
        ),
        sections,
    };
    let html = report.to_html();
    crate::io::atomic::write_atomic(&a.explain.output, |f| {
        std::io::Write::write_all(f, html.as_bytes())
    })?;
    println!(
        "class {label} (index {}), probability {:.4}",
        cam.class, cam.probability
    );
    eprintln!(
        "wrote {} ({} pictures, {} KiB)",
        a.explain.output.display(),
        3 + blocks.len(),
        html.len() / 1024
    );
    Ok(())
}

fn explainer_name(net: &Network) -> String {
    match &net.source {
        Source::Model { model, .. } => format!(
            "{} + {} ({})",
            model.card.base.model,
            model.card.head.spec,
            model.card.classes.join(", ")
        ),
        Source::ImageNet { vgg } => format!("{} with the ImageNet top", vgg.config().arch),
    }
}
