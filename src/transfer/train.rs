//! The whole job: photos in, a trained model folder out; and the same model used again to
//! evaluate a labeled folder or predict new photos.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::augment::{Augment, CropSource, FlipSource};
use super::base::{ExtractOptions, Extraction, FrozenBase};
use super::model::{HeadInfo, MODEL_FORMAT, MODEL_VERSION, ModelCard, TrainedModel, TrainingInfo};
use crate::error::{Error, Result};
use crate::io::dataset::{Dataset, LabeledFolder, Sample, Skipped};
use crate::io::feature_cache::FeatureCache;
use crate::nn::fit::{self, EpochMetrics, Features, FitConfig, FitReport};
use crate::nn::head::{Head, HeadSpec};
use crate::nn::metrics::Classification;

/// How to train, beyond the optimisation settings of [`FitConfig`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The head's layer list without the classifier, e.g. `gap,dense256,relu,dropout0.5`.
    pub head: String,
    pub fit: FitConfig,
    pub augment: Augment,
    /// Feature cache; `None` runs the base on every image each time.
    pub cache: Option<FeatureCache>,
    pub skip_bad: bool,
    /// Images per forward pass of the base.
    pub batch: usize,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            head: crate::nn::head::DEFAULT_HEAD.to_string(),
            fit: FitConfig::default(),
            augment: Augment::default(),
            cache: None,
            skip_bad: false,
            batch: 4,
            progress: false,
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
    pub training_seconds: f64,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub dataset: PathBuf,
    pub classes: Vec<String>,
    pub best_epoch: Option<usize>,
    /// On the validation images, with the restored best weights; `None` without validation.
    pub validation: Option<Evaluation>,
    /// On the training images without augmentation or dropout.
    pub train: Evaluation,
    pub timings: Timings,
    /// Files skipped while scanning (hidden, not images) and unreadable images (`--skip-bad`).
    pub skipped: Vec<SkippedFile>,
}

/// A finished training run.
pub struct TrainOutcome {
    pub model: TrainedModel,
    pub fit: FitReport,
    pub report: Report,
    /// Images left out because they could not be read (with `skip_bad`).
    pub unreadable: Vec<Skipped>,
}

/// Features of `samples` (labels from the samples), leaving out unreadable images when
/// `skip_bad`.
pub fn extract_features(
    base: &FrozenBase,
    samples: &[Sample],
    opts: &ExtractOptions,
) -> Result<(Features, Extraction)> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let mut ex = base.extract(&paths, opts)?;
    let features = Features {
        shape: base.feature_shape().to_vec(),
        data: std::mem::take(&mut ex.data),
        labels: ex.kept.iter().map(|&i| samples[i].label).collect(),
    };
    Ok((features, ex))
}

fn evaluation(
    head: &Head<f32>,
    data: &Features,
    classes: &[String],
    l2: f64,
) -> Result<Evaluation> {
    let (loss, _, predicted) = fit::evaluate(head, data, l2)?;
    Ok(Evaluation {
        images: data.len(),
        loss,
        metrics: Classification::new(classes, &data.labels, &predicted),
    })
}

/// Train a head on `dataset` over the frozen `base`. `on_epoch` sees each epoch's metrics.
pub fn train(
    dataset: &Dataset,
    base: &FrozenBase,
    opts: &TrainOptions,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<TrainOutcome> {
    let classes = dataset.classes.clone();
    let spec = HeadSpec::parse(&opts.head, classes.len())?;
    spec.shapes(base.feature_shape())?;
    let extract = |samples: &[Sample], label: &str, flip: bool| {
        let ex = ExtractOptions {
            cache: opts.cache.as_ref(),
            skip_bad: opts.skip_bad,
            batch: opts.batch,
            progress: opts.progress.then_some(label),
            flip,
        };
        extract_features(base, samples, &ex)
    };
    let mut timings = Timings {
        features_seconds: 0.0,
        images_computed: 0,
        images_cached: 0,
        training_seconds: 0.0,
    };
    let mut unreadable: Vec<Skipped> = Vec::new();
    let mut account = |ex: &Extraction, unreadable: &mut Vec<Skipped>| {
        timings.features_seconds += ex.seconds;
        timings.images_computed += ex.computed;
        timings.images_cached += ex.cached;
        unreadable.extend(ex.skipped.iter().cloned());
    };
    let (train_set, ex) = extract(&dataset.train, "train", false)?;
    account(&ex, &mut unreadable);
    let train_paths: Vec<PathBuf> = ex
        .kept
        .iter()
        .map(|&i| dataset.train[i].path.clone())
        .collect();
    let val_set = if dataset.val.is_empty() {
        None
    } else {
        let (v, ex) = extract(&dataset.val, "val", false)?;
        account(&ex, &mut unreadable);
        Some(v)
    };
    for (name, set) in [
        ("training", Some(&train_set)),
        ("validation", val_set.as_ref()),
    ] {
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
        let kept: Vec<Sample> = train_paths
            .iter()
            .zip(&train_set.labels)
            .map(|(p, &label)| Sample {
                path: p.clone(),
                label,
            })
            .collect();
        let (f, ex) = extract(&kept, "train (mirrored)", true)?;
        account(&ex, &mut unreadable);
        Some(f)
    } else {
        None
    };

    let started = Instant::now();
    let mut head = Head::<f32>::new(spec, base.feature_shape(), opts.fit.seed)?;
    // The training features stay owned here: they are evaluated again once training ends.
    let mut train_set = train_set;
    let fit_report = if opts.augment.crop {
        let mut source = CropSource::new(
            base,
            train_paths,
            train_set.labels.clone(),
            opts.augment.flip,
            opts.fit.seed,
            opts.batch,
            opts.progress,
        );
        fit::fit(
            &mut head,
            &mut source,
            val_set.as_ref(),
            &opts.fit,
            on_epoch,
        )?
    } else if let Some(f) = flipped {
        let mut source = FlipSource::new(train_set, f, opts.fit.seed)?;
        let r = fit::fit(
            &mut head,
            &mut source,
            val_set.as_ref(),
            &opts.fit,
            on_epoch,
        )?;
        train_set = source.into_plain();
        r
    } else {
        fit::fit(
            &mut head,
            &mut train_set,
            val_set.as_ref(),
            &opts.fit,
            on_epoch,
        )?
    };
    timings.training_seconds = started.elapsed().as_secs_f64();

    let l2 = opts.fit.l2;
    let train_eval = evaluation(&head, &train_set, &classes, l2)?;
    let val_eval = val_set
        .as_ref()
        .map(|v| evaluation(&head, v, &classes, l2))
        .transpose()?;
    let card = ModelCard {
        format: MODEL_FORMAT.into(),
        version: MODEL_VERSION,
        keel_version: env!("CARGO_PKG_VERSION").into(),
        classes: classes.clone(),
        base: base.info().clone(),
        head: HeadInfo {
            spec: head.spec().to_string(),
            input_shape: head.input_shape().to_vec(),
            params: head.num_params(),
        },
        training: TrainingInfo {
            dataset: dataset.root.clone(),
            split: dataset.split.to_string(),
            train_images: train_set.len(),
            val_images: val_set.as_ref().map_or(0, |v| v.len()),
            epochs: opts.fit.epochs,
            epochs_run: fit_report.history.len(),
            batch_size: opts.fit.batch_size,
            optimizer: opts.fit.optimizer.to_string(),
            lr: opts.fit.lr,
            schedule: opts.fit.schedule.to_string(),
            l2,
            seed: opts.fit.seed,
            early_stopping: opts.fit.early_stopping,
            augment: opts.augment.names(),
            best_epoch: fit_report.best_epoch,
            stopped_early: fit_report.stopped_early,
        },
        history: fit_report.history.clone(),
    };
    let report = Report {
        dataset: dataset.root.clone(),
        classes,
        best_epoch: fit_report.best_epoch,
        validation: val_eval,
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
        model: TrainedModel { card, head },
        fit: fit_report,
        report,
        unreadable,
    })
}

impl TrainOutcome {
    /// Write the model folder (head, card, report, plots) atomically.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        let report = serde_json::to_vec_pretty(&self.report)
            .map_err(|e| Error::Invalid(format!("cannot encode report.json: {e}")))?;
        let points: Vec<crate::io::plots::EpochPoint> = self
            .fit
            .history
            .iter()
            .map(|m| crate::io::plots::EpochPoint {
                epoch: m.epoch,
                train_loss: m.train_loss,
                train_acc: m.train_accuracy,
                val_loss: m.val_loss,
                val_acc: m.val_accuracy,
            })
            .collect();
        let plot_err = |what: &str, e: String| Error::Invalid(format!("cannot draw {what}: {e}"));
        let title = format!(
            "{} + {} on {}",
            self.model.card.base.model,
            self.model.card.head.spec,
            self.report.dataset.display()
        );
        let curves = crate::io::plots::curves_png(&title, &points, self.fit.best_epoch)
            .map_err(|e| plot_err("curves.png", e))?;
        let (which, eval) = match &self.report.validation {
            Some(v) => ("validation", v),
            None => ("training", &self.report.train),
        };
        let confusion = crate::io::plots::confusion_png(
            &format!(
                "{which} confusion matrix: accuracy {:.2}% of {}",
                eval.metrics.accuracy * 100.0,
                eval.images
            ),
            &eval.metrics.classes,
            &eval.metrics.confusion,
        )
        .map_err(|e| plot_err("confusion.png", e))?;
        self.model.save(
            dir,
            &[
                ("report.json", report),
                ("curves.png", curves),
                ("confusion.png", confusion),
            ],
            overwrite,
        )
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
    let (features, ex) = extract_features(base, &samples, opts)?;
    if features.is_empty() {
        return Err(Error::Invalid("no readable images to evaluate".into()));
    }
    Ok((
        evaluation(&model.head, &features, classes, 0.0)?,
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
    let ex = base.extract(paths, opts)?;
    let probs = model.predict_proba(&ex.data)?;
    let k = model.card.classes.len();
    let rows = ex
        .kept
        .iter()
        .zip(probs.chunks(k))
        .map(|(&i, p)| Prediction {
            path: paths[i].clone(),
            probabilities: p.to_vec(),
        })
        .collect();
    Ok((rows, ex.skipped))
}
