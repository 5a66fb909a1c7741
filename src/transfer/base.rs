//! The frozen convolutional base: VGG up to a chosen layer, run once per image with the
//! results cached on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::dataset::Skipped;
use crate::io::feature_cache::{FeatureCache, sha256_file};
use crate::io::image::{Interpolation, RgbImage, load_img};
use crate::nn::{ConvTail, TOP_LAYERS, Vgg, WeightSet, preprocess_rgb8};
use crate::tensor::{Backend, Tensor};

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

/// VGG's conv base up to `layer`, on the backend the caller chose, ready to turn photos into
/// features. Clones share the weights.
#[derive(Clone)]
pub struct FrozenBase {
    vgg: Arc<Vgg>,
    backend: Arc<dyn Backend>,
    info: BaseInfo,
    interpolation: Interpolation,
    feature_shape: Vec<usize>,
    /// The checksum of fine-tuned layers that replace the weights' own (part of the cache key,
    /// so tuned and original features never mix).
    tuned: Option<String>,
}

/// An image's error without the leading path, which a [`Skipped`] entry already holds (the
/// `--skip-bad` report would otherwise print the path twice).
fn reason_without_path(e: &Error, path: &Path) -> String {
    let text = e.to_string();
    let prefix = format!("{}: ", path.display());
    text.strip_prefix(&prefix)
        .map_or(text.clone(), str::to_string)
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

/// What an extraction did. The features themselves went to the caller's sink, in input order.
pub struct Extraction {
    /// Indices (into the input paths) of the images whose features were delivered.
    pub kept: Vec<usize>,
    /// Unreadable images (only with `skip_bad`).
    pub skipped: Vec<Skipped>,
    /// Images run through the base, and images found in the cache.
    pub computed: usize,
    pub cached: usize,
    pub seconds: f64,
    /// Seconds the backend spent running batches (on a GPU: uploading, computing and
    /// bringing features back); the rest of `seconds` it waited for images.
    pub busy_seconds: f64,
}

impl FrozenBase {
    /// The conv base of `weights` (a file with the top works too; the top is dropped), cut at
    /// `layer`, for `input`-sized images resized with `interpolation`, run on `backend`.
    pub fn new(
        weights: WeightSet,
        layer: &str,
        input: [usize; 2],
        interpolation: Interpolation,
        backend: Arc<dyn Backend>,
    ) -> Result<FrozenBase> {
        // Absolute, so `evaluate` and `predict` find the file from any working directory.
        let weights_file =
            std::fs::canonicalize(&weights.source).unwrap_or_else(|_| weights.source.clone());
        let set = weights.conv_base();
        let weights_checksum = set.checksum();
        let id = set.identity().clone();
        if TOP_LAYERS.contains(&layer) || layer == "flatten" {
            return Err(Error::Invalid(format!(
                "layer {layer} is in VGG's top; transfer learning reads a conv-base layer \
                 (e.g. block5_pool)"
            )));
        }
        let vgg = Vgg::new(id.base_config(input), set)?;
        if vgg.layer_index(layer)? == 0 {
            return Err(Error::Invalid(format!(
                "layer {layer} is the input, not a feature layer"
            )));
        }
        let base = FrozenBase {
            info: BaseInfo {
                model: id.arch.name().to_string(),
                weights_checksum,
                weights_file,
                layer: String::new(),
                input,
                preprocessing: "caffe".into(),
                interpolation: interpolation.to_string(),
            },
            vgg: Arc::new(vgg),
            backend,
            interpolation,
            feature_shape: Vec::new(),
            tuned: None,
        };
        base.at_layer(layer)
    }

    /// Load a weights file (Keras .h5 or keel safetensors) and build the base.
    pub fn load(
        path: &Path,
        layer: &str,
        input: [usize; 2],
        interpolation: Interpolation,
        backend: Arc<dyn Backend>,
    ) -> Result<FrozenBase> {
        let weights = crate::io::load_weights(path)?;
        FrozenBase::new(weights, layer, input, interpolation, backend)
    }

    /// The same base (weights shared) read at another layer.
    /// The input layer gives the preprocessed image itself: what `--fine-tune block1` stores.
    pub fn at_layer(&self, layer: &str) -> Result<FrozenBase> {
        let i = self.vgg.layer_index(layer)?;
        let spec = self.vgg.layer_specs().nth(i).expect("an index of a layer");
        let feature_shape = spec.output.dims().to_vec();
        if feature_shape.len() != 3 {
            return Err(Error::Invalid(format!(
                "layer {layer} has no (H, W, C) output to read features from"
            )));
        }
        let mut base = self.clone();
        base.info.layer = layer.to_string();
        base.feature_shape = feature_shape;
        Ok(base)
    }

    /// The name of the layer just below `name`.
    pub fn layer_before(&self, name: &str) -> Result<String> {
        let i = self.vgg.layer_index(name)?;
        let names = self.vgg.layer_names();
        i.checked_sub(1)
            .map(|j| names[j].to_string())
            .ok_or_else(|| Error::Invalid(format!("{name} is the first layer")))
    }

    /// A trainable copy of the layers from `first` (`block5_conv1`) to the end of the base.
    pub fn tail(&self, first: &str) -> Result<ConvTail> {
        self.vgg.tail(first)
    }

    /// The same base with `tail`'s (fine-tuned) weights in place of its own; `checksum` names
    /// them in cache keys. [`FrozenBase::info`] still describes the original weights, which a
    /// model folder records and checks.
    pub fn with_tuned(&self, tail: &ConvTail, checksum: String) -> Result<FrozenBase> {
        let mut base = self.clone();
        base.vgg = Arc::new(self.vgg.as_ref().clone().with_tail(tail)?);
        base.tuned = Some(checksum);
        Ok(base)
    }

    /// The whole conv base (fine-tuned layers in place) for `input`-sized images.
    pub fn vgg_at(&self, input: [usize; 2]) -> Result<Vgg> {
        self.vgg.with_input(input)
    }

    /// The backend the base runs on.
    /// The VGG this base runs (fine-tuned layers in place), up to and including its layer.
    pub fn vgg(&self) -> &Vgg {
        &self.vgg
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The backend, shared.
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
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
        let tuned = match &self.tuned {
            Some(t) => format!("|tuned={t}"),
            None => String::new(),
        };
        // fp32 on any device gives the same features to rounding; TF32 or BF16 do not.
        let precision = match self.backend().reduced_precision() {
            Some(p) => format!("|precision={p}"),
            None => String::new(),
        };
        format!(
            "{}{tuned}{precision}|{}|{}|{}x{}|{}|{}|flip={flip}",
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

    /// Features of a batch of RGB images of the input size, in host memory.
    pub fn run_images(&self, images: &[RgbImage]) -> Result<Tensor> {
        self.run_batch(&self.batch_tensor(images)?)
    }

    /// The base's input for `images`: preprocessed and stacked, on the CPU.
    fn batch_tensor(&self, images: &[RgbImage]) -> Result<Tensor> {
        let [h, w] = self.info.input;
        let items: Vec<Tensor> = images
            .par_iter()
            .map(|img| preprocess_rgb8(img.height, img.width, &img.data)?.reshape([h, w, 3]))
            .collect::<Result<_>>()?;
        Tensor::stack(&items)
    }

    /// Features of a preprocessed batch, in host memory.
    fn run_batch(&self, x: &Tensor) -> Result<Tensor> {
        let be = self.backend();
        let mut out = self
            .vgg
            .forward_outputs(be, x, &[self.info.layer.as_str()])?;
        be.to_host(out.remove(0))
    }

    /// Features of every image in `paths`, from the cache where possible, handed to `sink`
    /// one image at a time in input order (with the image's index), so the caller decides
    /// where they go. Unreadable images stop the run with an error naming the first one, or
    /// with `skip_bad` are left out and listed.
    ///
    /// Batches stream: while the backend runs one batch, CPU threads read, decode, resize and
    /// preprocess the next, so a GPU is not left waiting on JPEG decoding.
    pub fn extract(
        &self,
        paths: &[PathBuf],
        opts: &ExtractOptions,
        sink: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<Extraction> {
        let started = Instant::now();
        let key_base = self.cache_key(opts.flip);
        // Hash (when caching) in parallel; a file that cannot be read is a bad image.
        let hashes: Vec<Result<Option<String>>> = paths
            .par_iter()
            .map(|p| match opts.cache {
                Some(_) => sha256_file(p).map(|h| Some(FeatureCache::key(&key_base, &h))),
                None => Ok(None),
            })
            .collect();
        let mut bad: Vec<(usize, Error)> = Vec::new();
        let mut keys: Vec<Option<String>> = Vec::with_capacity(paths.len());
        for (i, h) in hashes.into_iter().enumerate() {
            match h {
                Ok(k) => keys.push(k),
                Err(e) => {
                    bad.push((i, e));
                    keys.push(None);
                }
            }
        }
        let fail = |bad: Vec<(usize, Error)>| {
            let (_, e) = bad.into_iter().next().expect("at least one");
            Error::Invalid(format!(
                "{e} (pass --skip-bad to leave unreadable images out)"
            ))
        };
        if !opts.skip_bad && !bad.is_empty() {
            return Err(fail(bad));
        }
        let mut progress = Progress::new(opts.progress, paths.len());
        let (mut computed, mut cached) = (0, 0);
        let mut busy = 0.0;
        let mut kept = Vec::with_capacity(paths.len());
        let all: Vec<usize> = (0..paths.len()).collect();
        let chunks: Vec<&[usize]> = all.chunks(opts.batch.max(1)).collect();
        let hash_bad: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        let prepare = |chunk: &[usize]| self.prepare(chunk, paths, &keys, &hash_bad, opts);
        let mut next = chunks.first().map(|c| prepare(c));
        for (k, chunk) in chunks.iter().enumerate() {
            let mut batch = next.take().expect("prepared ahead")?;
            bad.append(&mut batch.bad);
            if !opts.skip_bad && !bad.is_empty() {
                return Err(fail(bad));
            }
            cached += batch.cached;
            // The backend runs this batch while the pool prepares the next one.
            let (features, ahead) = rayon::join(
                || -> Result<Option<(Tensor, f64)>> {
                    let Some(x) = &batch.input else {
                        return Ok(None);
                    };
                    let t = Instant::now();
                    let y = self.run_batch(x)?;
                    Ok(Some((y, t.elapsed().as_secs_f64())))
                },
                || chunks.get(k + 1).map(|c| prepare(c)),
            );
            next = ahead;
            if let Some((y, seconds)) = features? {
                busy += seconds;
                for (j, &slot) in batch.computed.iter().enumerate() {
                    let row = y.index0(j)?;
                    if let (Some(c), Some(key)) = (opts.cache, &keys[chunk[slot]]) {
                        c.put(key, &row)?;
                    }
                    batch.rows[slot] = Some(row.data().to_vec());
                }
                computed += batch.computed.len();
            }
            for (slot, row) in batch.rows.into_iter().enumerate() {
                if let Some(row) = row {
                    sink(chunk[slot], &row)?;
                    kept.push(chunk[slot]);
                }
            }
            if let Some(p) = &mut progress {
                p.inc(chunk.len());
            }
        }
        drop(progress);
        bad.sort_by_key(|(i, _)| *i);
        let skipped = bad
            .into_iter()
            .map(|(i, e)| Skipped {
                path: paths[i].clone(),
                reason: reason_without_path(&e, &paths[i]),
            })
            .collect();
        Ok(Extraction {
            kept,
            skipped,
            computed,
            cached,
            seconds: started.elapsed().as_secs_f64(),
            busy_seconds: busy,
        })
    }

    /// One batch's cached features and, for the rest, the decoded and preprocessed input.
    fn prepare(
        &self,
        chunk: &[usize],
        paths: &[PathBuf],
        keys: &[Option<String>],
        hash_bad: &[usize],
        opts: &ExtractOptions,
    ) -> Result<Prepared> {
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; chunk.len()];
        let mut missing = Vec::new();
        let mut cached = 0;
        for (slot, &i) in chunk.iter().enumerate() {
            if hash_bad.contains(&i) {
                continue;
            }
            let hit = match (opts.cache, &keys[i]) {
                (Some(c), Some(k)) => c.get(k, &self.feature_shape),
                _ => None,
            };
            match hit {
                Some(v) => {
                    rows[slot] = Some(v);
                    cached += 1;
                }
                None => missing.push(slot),
            }
        }
        let loaded: Vec<(usize, Result<RgbImage>)> = missing
            .par_iter()
            .map(|&slot| {
                let img = self.load_image(&paths[chunk[slot]]).map(|img| {
                    if opts.flip {
                        flip_horizontal(&img)
                    } else {
                        img
                    }
                });
                (slot, img)
            })
            .collect();
        let (mut computed, mut images, mut bad) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, r) in loaded {
            match r {
                Ok(img) => {
                    computed.push(slot);
                    images.push(img);
                }
                Err(e) => bad.push((chunk[slot], e)),
            }
        }
        let input = if images.is_empty() {
            None
        } else {
            Some(self.batch_tensor(&images)?)
        };
        Ok(Prepared {
            rows,
            computed,
            input,
            bad,
            cached,
        })
    }
}

/// A batch ready for the base: see [`FrozenBase::prepare`].
struct Prepared {
    /// Per slot of the chunk: the features, once known (from the cache first).
    rows: Vec<Option<Vec<f32>>>,
    /// The slots `input`'s images belong to, in order.
    computed: Vec<usize>,
    input: Option<Tensor>,
    /// Images of the chunk that could not be read.
    bad: Vec<(usize, Error)>,
    cached: usize,
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
