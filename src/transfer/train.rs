//! The whole job: photos in, a trained model folder out; and the same model used again to
//! evaluate a labeled folder or predict new photos.
//!
//! Training runs in one or two phases, as Keras's transfer-learning guide does. Phase 1 trains
//! the head on the frozen base's features. With fine-tuning, phase 2 then unfreezes the top
//! of the base (from `blockN_conv1` up) and trains it together with the head, at a small
//! learning rate. The frozen layers below run once per image: their output, the input of the
//! first trainable layer, is cached like the head's features, and each epoch costs only the
//! trainable part.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::augment::{Augment, CropSource, FlipSource};
use super::base::{ExtractOptions, Extraction, FrozenBase};
use super::model::{
    FineTuneInfo, HeadInfo, MODEL_FORMAT, MODEL_VERSION, ModelCard, TrainedModel, TrainingInfo,
};
use super::store::{MemoryBudget, RowStore};
use crate::error::{Error, Result};
use crate::io::dataset::{Dataset, LabeledFolder, Sample, Skipped};
use crate::io::feature_cache::FeatureCache;
use crate::nn::fit::{self, EpochMetrics, FitConfig, FitReport, Fixed, Samples, TrainSource};
use crate::nn::head::{Head, HeadSpec};
use crate::nn::metrics::Classification;
use crate::nn::param::map_params;
use crate::nn::{Classifier, ConvTail};

/// The second phase: which block to unfreeze, and how to train it.
#[derive(Clone, Debug)]
pub struct FineTune {
    /// The lowest block trained (5 for `block5`: its convolutions, its pool and everything
    /// above).
    pub block: usize,
    pub fit: FitConfig,
}

impl FineTune {
    /// Parse `block5` (or `5`) into a block number, checked against the model's five blocks.
    pub fn parse_block(s: &str) -> Result<usize> {
        let t = s.trim().to_ascii_lowercase();
        let n = t.strip_prefix("block").unwrap_or(&t);
        match n.parse::<usize>() {
            Ok(b @ 1..=5) => Ok(b),
            _ => Err(Error::Invalid(format!(
                "--fine-tune {s}: VGG has blocks block1 to block5 (e.g. --fine-tune block5 \
                 trains block5_conv1 up)"
            ))),
        }
    }

    /// The first trainable layer.
    pub fn first_layer(&self) -> String {
        format!("block{}_conv1", self.block)
    }
}

/// How to train, beyond the optimisation settings of [`FitConfig`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The head's layer list without the classifier, e.g. `gap,dense256,relu,dropout0.5`.
    pub head: String,
    /// Phase 1: the head on the frozen base.
    pub fit: FitConfig,
    /// Phase 2, if any.
    pub fine_tune: Option<FineTune>,
    pub augment: Augment,
    /// Feature cache; `None` runs the base on every image each time.
    pub cache: Option<FeatureCache>,
    pub skip_bad: bool,
    /// Images per forward pass of the base.
    pub batch: usize,
    /// Show progress bars.
    pub progress: bool,
    /// Bytes of stored features and activations kept in memory; beyond this they stream from
    /// a temporary file.
    pub memory_budget: usize,
}

/// The default memory budget for stored features and activations: 1 GiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            head: crate::nn::head::DEFAULT_HEAD.to_string(),
            fit: FitConfig::default(),
            fine_tune: None,
            augment: Augment::default(),
            cache: None,
            skip_bad: false,
            batch: 4,
            progress: false,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// A file keel did not use, as `report.json` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

impl From<&Skipped> for SkippedFile {
    fn from(s: &Skipped) -> Self {
        SkippedFile {
            path: s.path.clone(),
            reason: s.reason.clone(),
        }
    }
}

/// Loss and metrics on one set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: Classification,
}

/// Where the time went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub features_seconds: f64,
    pub images_computed: usize,
    pub images_cached: usize,
    /// Phase 1 (the head), including the frozen top's pass when fine-tuning.
    pub training_seconds: f64,
    /// Phase 2 (fine-tuning), 0 without it.
    pub fine_tune_seconds: f64,
    /// Whether stored activations streamed from disk (they did not fit the memory budget).
    pub streamed_from_disk: bool,
    /// Of `features_seconds`, the time the backend spent running the base (the rest it waited
    /// for images to be decoded).
    #[serde(default)]
    pub base_busy_seconds: f64,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub dataset: PathBuf,
    pub classes: Vec<String>,
    /// The epoch whose weights were kept, counted across both phases.
    pub best_epoch: Option<usize>,
    /// On the validation images, with the kept weights; `None` without validation.
    pub validation: Option<Evaluation>,
    /// The same for the head alone, before fine-tuning (only with `--fine-tune`).
    pub validation_before_fine_tune: Option<Evaluation>,
    /// On the training images without augmentation or dropout.
    pub train: Evaluation,
    pub timings: Timings,
    /// Files skipped while scanning (hidden, not images) and unreadable images (`--skip-bad`).
    pub skipped: Vec<SkippedFile>,
}

/// A finished training run.
pub struct TrainOutcome {
    pub model: TrainedModel,
    /// Both phases' history, epochs numbered across them.
    pub fit: FitReport,
    /// The first epoch of phase 2, when there was one.
    pub fine_tune_from: Option<usize>,
    pub report: Report,
    /// Images left out because they could not be read (with `skip_bad`).
    pub unreadable: Vec<Skipped>,
}

/// Features of `samples` (labels from the samples) into a store, leaving out unreadable images
/// when `skip_bad`.
pub fn extract_features(
    base: &FrozenBase,
    samples: &[Sample],
    opts: &ExtractOptions,
    budget: &MemoryBudget,
) -> Result<(RowStore, Extraction)> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let mut store = RowStore::new(base.feature_shape(), samples.len(), budget)?;
    let ex = base.extract(&paths, opts, &mut |i, row| {
        store.push(row, samples[i].label)
    })?;
    Ok((store.finish()?, ex))
}

/// Run the frozen `tail` over every stored row: the head's features for phase 1.
fn through_tail(
    base: &FrozenBase,
    tail: &ConvTail,
    src: &RowStore,
    budget: &MemoryBudget,
) -> Result<RowStore> {
    let be = base.backend();
    let mut out = RowStore::new(tail.output_shape(), src.len(), budget)?;
    let idx: Vec<usize> = (0..src.len()).collect();
    for chunk in idx.chunks(16) {
        let y = be.to_host(tail.forward(be, &src.gather(chunk)?)?)?;
        let labels: Vec<usize> = chunk.iter().map(|&i| src.labels()[i]).collect();
        out.push_batch(&y, &labels)?;
    }
    out.finish()
}

fn evaluation(
    base: &FrozenBase,
    model: &Classifier,
    data: &dyn Samples,
    classes: &[String],
    l2: f64,
) -> Result<Evaluation> {
    let (loss, _, predicted) = fit::evaluate(base.backend(), model, data, l2)?;
    Ok(Evaluation {
        images: data.len(),
        loss,
        metrics: Classification::new(classes, data.labels(), &predicted),
    })
}

/// The stored inputs of what trains: the head's features, or with fine-tuning the input of
/// the first trainable layer.
struct Inputs {
    train: RowStore,
    val: Option<RowStore>,
    /// Mirrored training images (with `--augment flip` alone).
    flipped: Option<RowStore>,
    /// The kept training images' paths (for `--augment crop`).
    train_paths: Vec<PathBuf>,
}

/// Check the fine-tuning request against the base before any image is read.
fn check_fine_tune(base: &FrozenBase, opts: &TrainOptions, ft: &FineTune) -> Result<ConvTail> {
    if opts.augment.crop {
        return Err(Error::Invalid(
            "--augment crop cannot be combined with --fine-tune: fine-tuning stores the \
             activations below the trainable layers once per image, and crops change them \
             every epoch (use --augment flip)"
                .into(),
        ));
    }
    let tail = base.tail(&ft.first_layer())?;
    if tail.output_shape() != base.feature_shape() {
        return Err(Error::Invalid(format!(
            "--fine-tune needs the head to read the end of the conv base (--layer {}), not {}",
            tail.last_layer(),
            base.info().layer
        )));
    }
    ft.fit.validate()?;
    Ok(tail)
}

/// Train a head on `dataset` over the frozen `base`, then with `opts.fine_tune` the top of the
/// base with it. `on_epoch` sees each epoch's metrics (epochs numbered across both phases).
pub fn train(
    dataset: &Dataset,
    base: &FrozenBase,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<TrainOutcome> {
    let classes = dataset.classes.clone();
    let spec = HeadSpec::parse(&opts.head, classes.len())?;
    spec.shapes(base.feature_shape())?;
    let tail = opts
        .fine_tune
        .as_ref()
        .map(|ft| check_fine_tune(base, opts, ft))
        .transpose()?;
    let budget = MemoryBudget::new(opts.memory_budget);
    // What the stored rows are: the head's features, or the input of the first trainable
    // layer (the output of the layer before it).
    let stored = match &tail {
        Some(t) => {
            let before = base.layer_before(t.first_layer())?;
            base.at_layer(&before)?
        }
        None => base.clone(),
    };
    let mut timings = Timings {
        features_seconds: 0.0,
        images_computed: 0,
        images_cached: 0,
        training_seconds: 0.0,
        fine_tune_seconds: 0.0,
        streamed_from_disk: false,
        base_busy_seconds: 0.0,
    };
    let mut unreadable: Vec<Skipped> = Vec::new();
    let inputs = extract_inputs(
        dataset,
        &stored,
        opts,
        &budget,
        &mut timings,
        &mut unreadable,
    )?;
    timings.streamed_from_disk = [
        Some(&inputs.train),
        inputs.val.as_ref(),
        inputs.flipped.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(RowStore::on_disk);

    // Phase 1: the head on the frozen base's features.
    let started = Instant::now();
    let be = base.backend();
    let phase1_inputs = match &tail {
        Some(t) => Some(Inputs {
            train: through_tail(base, t, &inputs.train, &budget)?,
            val: inputs
                .val
                .as_ref()
                .map(|v| through_tail(base, t, v, &budget))
                .transpose()?,
            flipped: inputs
                .flipped
                .as_ref()
                .map(|f| through_tail(base, t, f, &budget))
                .transpose()?,
            train_paths: Vec::new(),
        }),
        None => None,
    };
    let features = phase1_inputs.as_ref().unwrap_or(&inputs);
    let head = Head::new(spec, base.feature_shape(), opts.fit.seed)?.upload(be)?;
    let mut model = Classifier::head_only(head);
    let phase1 = {
        let mut crop;
        let mut flip;
        let mut fixed = Fixed(&features.train);
        let source: &mut dyn TrainSource = if opts.augment.crop {
            crop = CropSource::new(
                base,
                inputs.train_paths.clone(),
                inputs.train.labels().to_vec(),
                opts.augment.flip,
                opts.fit.seed,
                opts.batch,
                opts.progress,
            );
            &mut crop
        } else if let Some(f) = &features.flipped {
            flip = FlipSource::new(&features.train, f, opts.fit.seed)?;
            &mut flip
        } else {
            &mut fixed
        };
        let val = features.val.as_ref().map(|v| v as &dyn Samples);
        fit::fit(be, &mut model, source, val, &opts.fit, on_epoch)?
    };
    timings.training_seconds = started.elapsed().as_secs_f64();
    let l2 = opts.fit.l2;
    let validation_before = match (&tail, &features.val) {
        (Some(_), Some(v)) => Some(evaluation(base, &model, v, &classes, l2)?),
        _ => None,
    };
    drop(phase1_inputs);

    // Phase 2: the top of the base with the head.
    let mut fine_tune_info = None;
    let mut fine_tune_from = None;
    let mut tuned = None;
    let mut report_fit = phase1.clone();
    if let (Some(ft), Some(tail)) = (&opts.fine_tune, tail) {
        let started = Instant::now();
        let offset = phase1.history.len();
        fine_tune_from = Some(offset + 1);
        let mut ft_model = Classifier::with_tail(tail.upload(be)?, model.head.clone())?;
        let mut flip;
        let mut fixed = Fixed(&inputs.train);
        let source: &mut dyn TrainSource = match &inputs.flipped {
            Some(f) => {
                flip = FlipSource::new(&inputs.train, f, ft.fit.seed)?;
                &mut flip
            }
            None => &mut fixed,
        };
        let val = inputs.val.as_ref().map(|v| v as &dyn Samples);
        let renumber = |m: &EpochMetrics| EpochMetrics {
            epoch: m.epoch + offset,
            ..m.clone()
        };
        // Early stopping spans both phases: fine-tuning must beat the head's best validation
        // loss, or the head-only model is what the folder keeps.
        let baseline = phase1
            .best_epoch
            .and_then(|b| phase1.history.get(b - 1))
            .and_then(|m| m.val_loss);
        let phase2 = fit::fit_from(
            be,
            &mut ft_model,
            source,
            val,
            &ft.fit,
            baseline,
            &mut |m| on_epoch(&renumber(m)),
        )
        .map_err(|e| Error::Invalid(format!("fine-tuning {}: {e}", ft.first_layer())))?;
        timings.fine_tune_seconds = started.elapsed().as_secs_f64();
        let kept = phase2.best_epoch.is_some() || baseline.is_none();
        let tail = ft_model.tail.as_ref().expect("fine-tuning has a tail");
        let named = map_params(tail.params(), |t| be.to_host(t.clone()))?;
        let checksum =
            crate::digest::named_tensors_sha256(named.iter().map(|(n, t)| (n.as_str(), t)));
        fine_tune_info = Some(FineTuneInfo {
            block: format!("block{}", ft.block),
            layers: tail
                .weighted_layers()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            params: tail.num_params(),
            checksum,
            epochs: ft.fit.epochs,
            epochs_run: phase2.history.len(),
            batch_size: ft.fit.batch_size,
            optimizer: ft.fit.optimizer.to_string(),
            lr: ft.fit.lr,
            schedule: ft.fit.schedule.to_string(),
            l2: ft.fit.l2,
            best_epoch: phase2.best_epoch.map(|b| b + offset),
            stopped_early: phase2.stopped_early,
            kept,
        });
        let mut all = phase1.history.clone();
        all.extend(phase2.history.iter().map(renumber));
        report_fit = FitReport {
            history: all,
            best_epoch: match phase2.best_epoch {
                Some(b) => Some(b + offset),
                None => phase1.best_epoch,
            },
            stopped_early: phase2.stopped_early,
        };
        tuned = kept.then_some(named);
        model = ft_model;
    }
    // The final model reads the stored rows: with a tail they are its input, without one the
    // head's features.
    let train_eval = evaluation(base, &model, &inputs.train, &classes, l2)?;
    let val_eval = inputs
        .val
        .as_ref()
        .map(|v| evaluation(base, &model, v, &classes, l2))
        .transpose()?;
    let head_host = model.head.to_host(be)?;
    let card = ModelCard {
        format: MODEL_FORMAT.into(),
        version: MODEL_VERSION,
        keel_version: env!("CARGO_PKG_VERSION").into(),
        classes: classes.clone(),
        base: base.info().clone(),
        head: HeadInfo {
            spec: head_host.spec().to_string(),
            input_shape: head_host.input_shape().to_vec(),
            params: head_host.num_params(),
        },
        training: TrainingInfo {
            dataset: dataset.root.clone(),
            split: dataset.split.to_string(),
            train_images: inputs.train.len(),
            val_images: inputs.val.as_ref().map_or(0, |v| v.len()),
            epochs: opts.fit.epochs,
            epochs_run: phase1.history.len(),
            batch_size: opts.fit.batch_size,
            optimizer: opts.fit.optimizer.to_string(),
            lr: opts.fit.lr,
            schedule: opts.fit.schedule.to_string(),
            l2,
            seed: opts.fit.seed,
            early_stopping: opts.fit.early_stopping,
            augment: opts.augment.names(),
            best_epoch: phase1.best_epoch,
            stopped_early: phase1.stopped_early,
        },
        fine_tune: fine_tune_info,
        history: report_fit.history.clone(),
    };
    let report = Report {
        dataset: dataset.root.clone(),
        classes,
        best_epoch: report_fit.best_epoch,
        validation: val_eval,
        validation_before_fine_tune: validation_before,
        train: train_eval,
        timings,
        skipped: dataset
            .skipped
            .iter()
            .chain(&unreadable)
            .map(SkippedFile::from)
            .collect(),
    };
    Ok(TrainOutcome {
        model: TrainedModel {
            card,
            head: head_host,
            tuned,
        },
        fit: report_fit,
        fine_tune_from,
        report,
        unreadable,
    })
}

/// Extract (or read from the cache) the stored rows of every training, validation and
/// (with `--augment flip`) mirrored training image.
fn extract_inputs(
    dataset: &Dataset,
    stored: &FrozenBase,
    opts: &TrainOptions,
    budget: &MemoryBudget,
    timings: &mut Timings,
    unreadable: &mut Vec<Skipped>,
) -> Result<Inputs> {
    let extract = |samples: &[Sample], label: &str, flip: bool| {
        let ex = ExtractOptions {
            cache: opts.cache.as_ref(),
            skip_bad: opts.skip_bad,
            batch: opts.batch,
            progress: opts.progress.then_some(label),
            flip,
        };
        extract_features(stored, samples, &ex, budget)
    };
    let mut account = |ex: &Extraction, unreadable: &mut Vec<Skipped>| {
        timings.features_seconds += ex.seconds;
        timings.base_busy_seconds += ex.busy_seconds;
        timings.images_computed += ex.computed;
        timings.images_cached += ex.cached;
        unreadable.extend(ex.skipped.iter().cloned());
    };
    let (train, ex) = extract(&dataset.train, "train", false)?;
    account(&ex, unreadable);
    let kept: Vec<Sample> = ex.kept.iter().map(|&i| dataset.train[i].clone()).collect();
    let val = if dataset.val.is_empty() {
        None
    } else {
        let (v, ex) = extract(&dataset.val, "val", false)?;
        account(&ex, unreadable);
        Some(v)
    };
    for (name, set) in [("training", Some(&train)), ("validation", val.as_ref())] {
        if let Some(set) = set
            && set.is_empty()
        {
            return Err(Error::file(
                &dataset.root,
                format!("no readable {name} images are left"),
            ));
        }
    }
    let flipped = if opts.augment.flip && !opts.augment.crop {
        let (f, ex) = extract(&kept, "train (mirrored)", true)?;
        account(&ex, unreadable);
        Some(f)
    } else {
        None
    };
    Ok(Inputs {
        train,
        val,
        flipped,
        train_paths: kept.into_iter().map(|s| s.path).collect(),
    })
}

impl TrainOutcome {
    /// Write the model folder (head, fine-tuned layers, card, report, plots) atomically.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let report = serde_json::to_vec_pretty(&self.report)
            .map_err(|e| Error::Invalid(format!("cannot encode report.json: {e}")))?;
        let mut files = vec![("report.json", report)];
        files.extend(self.plots()?);
        self.model.save(dir, &files, overwrite)
    }

    /// `curves.png` and `confusion.png` (with the `viz` feature; none without it).
    #[cfg(feature = "viz")]
    fn plots(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let points: Vec<crate::viz::plots::EpochPoint> = self
            .fit
            .history
            .iter()
            .map(|m| crate::viz::plots::EpochPoint {
                epoch: m.epoch,
                train_loss: m.train_loss,
                train_acc: m.train_accuracy,
                val_loss: m.val_loss,
                val_acc: m.val_accuracy,
            })
            .collect();
        let plot_err = |what: &str, e: String| Error::Invalid(format!("cannot draw {what}: {e}"));
        let tuned = match &self.model.card.fine_tune {
            Some(ft) => format!(" (fine-tuned from {})", ft.block),
            None => String::new(),
        };
        let title = format!(
            "{} + {}{tuned} on {}",
            self.model.card.base.model,
            self.model.card.head.spec,
            self.report.dataset.display()
        );
        let curves = crate::viz::plots::curves_png(
            &title,
            &points,
            self.fit.best_epoch,
            self.fine_tune_from,
        )
        .map_err(|e| plot_err("curves.png", e))?;
        let (which, eval) = match &self.report.validation {
            Some(v) => ("validation", v),
            None => ("training", &self.report.train),
        };
        let confusion = crate::viz::plots::confusion_png(
            &format!(
                "{which} confusion matrix: accuracy {:.2}% of {}",
                eval.metrics.accuracy * 100.0,
                eval.images
            ),
            &eval.metrics.classes,
            &eval.metrics.confusion,
        )
        .map_err(|e| plot_err("confusion.png", e))?;
        Ok(vec![("curves.png", curves), ("confusion.png", confusion)])
    }

    #[cfg(not(feature = "viz"))]
    fn plots(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// Evaluate a model on a labeled folder whose class names are among the model's.
pub fn evaluate_folder(
    model: &TrainedModel,
    base: &FrozenBase,
    folder: &LabeledFolder,
    opts: &ExtractOptions,
) -> Result<(Evaluation, Vec<Skipped>)> {
    let classes = &model.card.classes;
    let mut remap = Vec::with_capacity(folder.classes.len());
    for name in &folder.classes {
        let i = classes.iter().position(|c| c == name).ok_or_else(|| {
            Error::Invalid(format!(
                "class folder '{name}' is not one of the model's classes ({})",
                classes.join(", ")
            ))
        })?;
        remap.push(i);
    }
    let samples: Vec<Sample> = folder
        .samples
        .iter()
        .map(|s| Sample {
            path: s.path.clone(),
            label: remap[s.label],
        })
        .collect();
    let budget = MemoryBudget::new(DEFAULT_MEMORY_BUDGET);
    let (features, ex) = extract_features(base, &samples, opts, &budget)?;
    if features.is_empty() {
        return Err(Error::Invalid("no readable images to evaluate".into()));
    }
    let classifier = Classifier::head_only(model.head.upload(base.backend())?);
    Ok((
        evaluation(base, &classifier, &features, classes, 0.0)?,
        ex.skipped,
    ))
}

/// One photo's class probabilities, in the model's class order.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub path: PathBuf,
    pub probabilities: Vec<f32>,
}

/// Class probabilities for each readable image, in input order, and the unreadable ones
/// (with `skip_bad`).
pub fn predict_paths(
    model: &TrainedModel,
    base: &FrozenBase,
    paths: &[PathBuf],
    opts: &ExtractOptions,
) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
    let be = base.backend();
    let head = model.head.upload(be)?;
    let mut rows = Vec::with_capacity(paths.len());
    let ex = base.extract(paths, opts, &mut |i, row| {
        let mut shape = vec![1];
        shape.extend(base.feature_shape());
        let x = crate::tensor::Tensor::from_vec(shape, row)?;
        let logits = head.logits(be, &x)?;
        let probs = be.to_host(be.softmax(&be.upload(logits)?)?)?;
        rows.push(Prediction {
            path: paths[i].clone(),
            probabilities: probs.data().to_vec(),
        });
        Ok(())
    })?;
    Ok((rows, ex.skipped))
}
