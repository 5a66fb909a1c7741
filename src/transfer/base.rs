//! The frozen convolutional base: VGG up to a chosen layer, run once per image with the
//! results cached on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cpu::Cpu;
use crate::error::{Error, Result};
use crate::io::dataset::Skipped;
use crate::io::feature_cache::{FeatureCache, sha256_file};
use crate::io::image::{Interpolation, RgbImage, load_img};
use crate::nn::{TOP_LAYERS, Vgg, VggConfig, WeightSet, preprocess_rgb8};
use crate::tensor::Tensor;

use super::progress::Progress;

/// What a head was trained on top of; stored in `model.json` and checked before a model
/// folder is used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// `vgg16` or `vgg19`.
    pub model: String,
    /// [`WeightSet::checksum`] of the conv base.
    pub weights_checksum: String,
    /// The weights file used when training (informational, and the default for later runs).
    pub weights_file: PathBuf,
    /// The layer whose output the head reads.
    pub layer: String,
    /// Input height and width.
    pub input: [usize; 2],
    /// Keras's `preprocess_input` mode.
    pub preprocessing: String,
    /// Keras's `load_img` interpolation.
    pub interpolation: String,
}

/// VGG's conv base up to `layer`, ready to turn photos into features.
pub struct FrozenBase {
    vgg: Vgg,
    info: BaseInfo,
    interpolation: Interpolation,
    feature_shape: Vec<usize>,
}

/// How [`FrozenBase::extract`] runs.
pub struct ExtractOptions<'a> {
    /// Where features are cached; `None` runs the base on every image.
    pub cache: Option<&'a FeatureCache>,
    /// Skip (and report) unreadable images instead of stopping at the first.
    pub skip_bad: bool,
    /// Images per forward pass.
    pub batch: usize,
    /// Label of the progress bar; `None` shows none.
    pub progress: Option<&'a str>,
    /// Mirror every image left to right (for flip augmentation).
    pub flip: bool,
}

impl Default for ExtractOptions<'_> {
    fn default() -> Self {
        ExtractOptions {
            cache: None,
            skip_bad: false,
            batch: 4,
            progress: None,
            flip: false,
        }
    }
}

/// Features of the images that could be read, in input order.
pub struct Extraction {
    /// `kept.len() * feature_len` values.
    pub data: Vec<f32>,
    /// Indices (into the input paths) of the images whose features are in `data`.
    pub kept: Vec<usize>,
    /// Unreadable images (only with `skip_bad`).
    pub skipped: Vec<Skipped>,
    /// Images run through the base, and images found in the cache.
    pub computed: usize,
    pub cached: usize,
    pub seconds: f64,
}

impl FrozenBase {
    /// The conv base of `weights` (a file with the top works too; the top is dropped), cut at
    /// `layer`, for `input`-sized images resized with `interpolation`.
    pub fn new(
        weights: WeightSet,
        layer: &str,
        input: [usize; 2],
        interpolation: Interpolation,
    ) -> Result<FrozenBase> {
        let id = weights.identify()?;
        // Absolute, so `evaluate` and `predict` find the file from any working directory.
        let weights_file =
            std::fs::canonicalize(&weights.source).unwrap_or_else(|_| weights.source.clone());
        let set = weights.conv_base();
        let weights_checksum = set.checksum();
        let config = VggConfig {
            include_top: false,
            input,
            widths: id.widths,
            ..VggConfig::notop(id.arch)
        };
        if TOP_LAYERS.contains(&layer) || layer == "flatten" {
            return Err(Error::Invalid(format!(
                "layer {layer} is in VGG's top; transfer learning reads a conv-base layer \
                 (e.g. block5_pool)"
            )));
        }
        let vgg = Vgg::new(config, set)?;
        let spec = vgg.layer_specs().find(|s| s.name == layer).ok_or_else(|| {
            Error::Invalid(format!(
                "{} has no layer named '{layer}'; its layers are: {}",
                id.arch,
                vgg.layer_names().join(", ")
            ))
        })?;
        let feature_shape = spec.output.dims().to_vec();
        if feature_shape.len() != 3 {
            return Err(Error::Invalid(format!(
                "layer {layer} is the input, not a feature layer"
            )));
        }
        Ok(FrozenBase {
            info: BaseInfo {
                model: id.arch.name().to_string(),
                weights_checksum,
                weights_file,
                layer: layer.to_string(),
                input,
                preprocessing: "caffe".into(),
                interpolation: interpolation.to_string(),
            },
            vgg,
            interpolation,
            feature_shape,
        })
    }

    /// Load a weights file (Keras .h5 or keel safetensors) and build the base.
    pub fn load(
        path: &Path,
        layer: &str,
        input: [usize; 2],
        interpolation: Interpolation,
    ) -> Result<FrozenBase> {
        FrozenBase::new(crate::io::load_weights(path)?, layer, input, interpolation)
    }

    pub fn info(&self) -> &BaseInfo {
        &self.info
    }

    pub fn interpolation(&self) -> Interpolation {
        self.interpolation
    }

    /// Per-image feature shape `(H, W, C)`.
    pub fn feature_shape(&self) -> &[usize] {
        &self.feature_shape
    }

    pub fn feature_len(&self) -> usize {
        self.feature_shape.iter().product()
    }

    /// Everything but the image that decides an image's features (see [`FeatureCache`]).
    pub fn cache_key(&self, flip: bool) -> String {
        let i = &self.info;
        format!(
            "{}|{}|{}|{}x{}|{}|{}|flip={flip}",
            i.weights_checksum,
            i.model,
            i.layer,
            i.input[0],
            i.input[1],
            i.preprocessing,
            i.interpolation
        )
    }

    /// Load an image as the base sees it: decoded, resized as Keras's `load_img`.
    pub fn load_image(&self, path: &Path) -> Result<RgbImage> {
        let [h, w] = self.info.input;
        load_img(path, Some((h, w)), self.interpolation)
    }

    /// Features of a batch of RGB images of the input size.
    pub fn run_images(&self, images: &[RgbImage]) -> Result<Tensor> {
        let [h, w] = self.info.input;
        let items: Vec<Tensor> = images
            .par_iter()
            .map(|img| preprocess_rgb8(img.height, img.width, &img.data)?.reshape([h, w, 3]))
            .collect::<Result<_>>()?;
        let x = Tensor::stack(&items)?;
        let mut out = self
            .vgg
            .forward_outputs(&Cpu::new(), &x, &[self.info.layer.as_str()])?;
        Ok(out.remove(0))
    }

    /// Features of every image in `paths`, from the cache where possible.
    pub fn extract(&self, paths: &[PathBuf], opts: &ExtractOptions) -> Result<Extraction> {
        let started = Instant::now();
        let n = self.feature_len();
        let key_base = self.cache_key(opts.flip);
        // Hash (when caching) in parallel; a file that cannot be read is a bad image.
        let hashes: Vec<Result<Option<String>>> = paths
            .par_iter()
            .map(|p| match opts.cache {
                Some(_) => sha256_file(p).map(Some),
                None => Ok(None),
            })
            .collect();
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
        let mut keys: Vec<Option<String>> = vec![None; paths.len()];
        let mut bad: Vec<(usize, Error)> = Vec::new();
        let mut pending = Vec::new();
        for (i, h) in hashes.into_iter().enumerate() {
            match h {
                Err(e) => bad.push((i, e)),
                Ok(hash) => {
                    let key = hash.map(|h| FeatureCache::key(&key_base, &h));
                    let hit = match (opts.cache, &key) {
                        (Some(c), Some(k)) => c.get(k, &self.feature_shape),
                        _ => None,
                    };
                    match hit {
                        Some(v) => rows[i] = Some(v),
                        None => pending.push(i),
                    }
                    keys[i] = key;
                }
            }
        }
        let cached = rows.iter().filter(|r| r.is_some()).count();
        let mut progress = Progress::new(opts.progress, pending.len());
        let mut computed = 0;
        for chunk in pending.chunks(opts.batch.max(1)) {
            let loaded: Vec<(usize, Result<RgbImage>)> = chunk
                .par_iter()
                .map(|&i| {
                    let img = self.load_image(&paths[i]).map(|img| {
                        if opts.flip {
                            flip_horizontal(&img)
                        } else {
                            img
                        }
                    });
                    (i, img)
                })
                .collect();
            let mut good = Vec::new();
            let mut images = Vec::new();
            for (i, r) in loaded {
                match r {
                    Ok(img) => {
                        good.push(i);
                        images.push(img);
                    }
                    Err(e) => bad.push((i, e)),
                }
            }
            if !opts.skip_bad && !bad.is_empty() {
                break;
            }
            if !images.is_empty() {
                let y = self.run_images(&images)?;
                for (slot, &i) in good.iter().enumerate() {
                    let row = y.index0(slot)?;
                    if let (Some(c), Some(k)) = (opts.cache, &keys[i]) {
                        c.put(k, &row)?;
                    }
                    rows[i] = Some(row.data().to_vec());
                }
                computed += images.len();
            }
            if let Some(p) = &mut progress {
                p.inc(chunk.len());
            }
        }
        drop(progress);
        bad.sort_by_key(|(i, _)| *i);
        if !opts.skip_bad && !bad.is_empty() {
            let (_, e) = bad.swap_remove(0);
            return Err(Error::Invalid(format!(
                "{e} (pass --skip-bad to leave unreadable images out)"
            )));
        }
        let skipped = bad
            .into_iter()
            .map(|(i, e)| Skipped {
                path: paths[i].clone(),
                reason: e.to_string(),
            })
            .collect();
        let mut data = Vec::with_capacity(paths.len() * n);
        let mut kept = Vec::with_capacity(paths.len());
        for (i, r) in rows.into_iter().enumerate() {
            if let Some(r) = r {
                data.extend_from_slice(&r);
                kept.push(i);
            }
        }
        Ok(Extraction {
            data,
            kept,
            skipped,
            computed,
            cached,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Mirror left to right, as Keras's `RandomFlip("horizontal")`.
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    let mut data = Vec::with_capacity(img.data.len());
    for row in img.data.chunks(img.width * 3) {
        for px in row.chunks(3).rev() {
            data.extend_from_slice(px);
        }
    }
    RgbImage {
        height: img.height,
        width: img.width,
        data,
    }
}
