//! The training loop: mini-batches, the model's forward and backward passes through the
//! backend, the optimizer, the learning-rate schedule, and early stopping with the best
//! weights restored. The same loop trains a head on stored features and fine-tunes conv
//! layers with a head on top: both are a [`Classifier`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::classifier::Classifier;
use super::head::Mode;
use super::optim::{Optimizer, OptimizerKind, add_l2_gradient, l2_penalty};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Backend, Tensor};

/// Labeled inputs of a model, read a batch at a time: features or activations held in memory,
/// or streamed from disk when they do not fit (`transfer::RowStore`).
pub trait Samples: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Per-sample shape, e.g. `[7, 7, 512]`.
    fn shape(&self) -> &[usize];
    fn labels(&self) -> &[usize];
    /// The samples `idx`, in that order, as one host batch `(idx.len(), ...shape)`.
    fn gather(&self, idx: &[usize]) -> Result<Tensor>;
}

/// One row of features per sample (the frozen base's output) and its class, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Per-sample shape, e.g. `[7, 7, 512]`.
    pub shape: Vec<usize>,
    /// `len() * shape.product()` values, row by row.
    pub data: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Features {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row_len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.row_len();
        &self.data[i * n..(i + 1) * n]
    }
}

impl Samples for Features {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn gather(&self, idx: &[usize]) -> Result<Tensor> {
        let mut x = Vec::with_capacity(idx.len() * self.row_len());
        for &i in idx {
            if i >= self.len() {
                return Err(Error::Invalid(format!("sample {i} of {}", self.len())));
            }
            x.extend_from_slice(self.row(i));
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.shape);
        Tensor::from_vec(shape, &x)
    }
}

/// Where each epoch's training samples come from: the same stored features every epoch, or
/// freshly augmented images run through the base.
pub trait TrainSource {
    fn epoch_samples(&mut self, epoch: usize) -> Result<&dyn Samples>;
}

impl TrainSource for Features {
    fn epoch_samples(&mut self, _epoch: usize) -> Result<&dyn Samples> {
        Ok(self)
    }
}

/// The same samples every epoch.
pub struct Fixed<'a>(pub &'a dyn Samples);

impl TrainSource for Fixed<'_> {
    fn epoch_samples(&mut self, _epoch: usize) -> Result<&dyn Samples> {
        Ok(self.0)
    }
}

/// Stop when the validation loss has not improved by `min_delta` for `patience` epochs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// Everything that decides a training run; with the same data, the same config gives the same
/// weights bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub schedule: Schedule,
    /// Keras-style L2 on kernels: `l2 * sum(w^2)` added to the loss.
    pub l2: f64,
    pub seed: u64,
    /// Needs validation data; ignored without it.
    pub early_stopping: Option<EarlyStopping>,
}

impl FitConfig {
    /// Refuse settings no run can use; [`fit`] checks this first, and a command can call it
    /// before spending minutes on features.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Invalid(format!(
                "--epochs and --batch-size must be at least 1, got {} and {}",
                self.epochs, self.batch_size
            )));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Invalid(format!(
                "the learning rate (--lr) must be a positive number, got {}",
                self.lr
            )));
        }
        if !(self.l2 >= 0.0 && self.l2.is_finite()) {
            return Err(Error::Invalid(format!(
                "--l2 must be a finite number >= 0, got {}",
                self.l2
            )));
        }
        Ok(())
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 30,
            batch_size: 32,
            optimizer: OptimizerKind::from_name("adam").expect("adam is known"),
            lr: 1e-3,
            schedule: Schedule::Constant,
            l2: 0.0,
            seed: 0,
            early_stopping: Some(EarlyStopping {
                patience: 10,
                min_delta: 0.0,
            }),
        }
    }
}

/// What one epoch measured. Training loss and accuracy are averaged over the epoch's batches
/// with dropout on, as Keras reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based, counted across phases in a model's history.
    pub epoch: usize,
    /// Whether this epoch trained conv layers too (the second phase of fine-tuning).
    #[serde(default)]
    pub fine_tune: bool,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
}

/// The run's history and which epoch's weights the model holds at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    pub history: Vec<EpochMetrics>,
    /// The epoch (1-based) with the lowest validation loss, whose weights were restored;
    /// `None` without validation data (the model holds the last epoch's weights).
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
}

/// Rows per evaluation batch.
const EVAL_BATCH: usize = 64;

/// Loss (cross-entropy plus the L2 term, as Keras's `val_loss`), accuracy and the predicted
/// class of every sample.
pub fn evaluate(
    be: &dyn Backend,
    model: &Classifier,
    data: &dyn Samples,
    l2: f64,
) -> Result<(f64, f64, Vec<usize>)> {
    check_samples(model, data, "evaluation")?;
    let labels = data.labels();
    let (mut loss, mut predicted) = (0f64, Vec::with_capacity(data.len()));
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(EVAL_BATCH) {
        let logits = model.logits(be, &data.gather(chunk)?)?;
        let part: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        let ce = be.softmax_cross_entropy(&be.upload(logits)?, &part)?;
        loss += ce.loss * chunk.len() as f64;
        let probs = be.to_host(ce.probs)?;
        predicted.extend(argmax_rows(probs.data(), model.classes()));
    }
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    let n = data.len().max(1) as f64;
    Ok((
        loss / n + l2_penalty(be, &model.params(), l2)?,
        correct as f64 / n,
        predicted,
    ))
}

/// The index of the largest value of each row (the first on ties).
pub fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    values
        .chunks(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
        })
        .collect()
}

fn check_samples(model: &Classifier, data: &dyn Samples, what: &str) -> Result<()> {
    if data.shape() != model.input_shape() {
        return Err(Error::Shape(format!(
            "{what} samples have shape {:?}, the model takes {:?}",
            data.shape(),
            model.input_shape()
        )));
    }
    if data.labels().len() != data.len() {
        return Err(Error::Shape(format!(
            "{what}: {} labels for {} samples",
            data.labels().len(),
            data.len()
        )));
    }
    if let Some(&bad) = data.labels().iter().find(|&&l| l >= model.classes()) {
        return Err(Error::Invalid(format!(
            "{what} label {bad} is out of range for {} classes",
            model.classes()
        )));
    }
    Ok(())
}

/// Train `model` on `train`, validating on `val` after every epoch. `on_epoch` sees each
/// epoch's metrics as soon as they exist (for progress output).
pub fn fit(
    be: &dyn Backend,
    model: &mut Classifier,
    train: &mut dyn TrainSource,
    val: Option<&dyn Samples>,
    cfg: &FitConfig,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<FitReport> {
    fit_from(be, model, train, val, cfg, None, on_epoch)
}

/// [`fit`] continuing a run whose weights reached validation loss `baseline` (fine-tuning
/// after the head's phase): an epoch must beat it to count as best, and if none does, the
/// model keeps the weights it started with (`best_epoch` is then `None`), as early stopping
/// across both phases would.
pub fn fit_from(
    be: &dyn Backend,
    model: &mut Classifier,
    train: &mut dyn TrainSource,
    val: Option<&dyn Samples>,
    cfg: &FitConfig,
    baseline: Option<f64>,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<FitReport> {
    cfg.validate()?;
    let start = baseline.map(|b| (b, model.snapshot()));
    if let Some(v) = val {
        check_samples(model, v, "validation")?;
    }
    let classes = model.classes();
    let fine_tune = model.tail.is_some();
    let mut optimizer = Optimizer::new(be, cfg.optimizer, &model.params())?;
    // One stream for shuffling and dropout, seeded apart from the head's initialisation.
    let mut rng = Rng::new(cfg.seed ^ 0xD1B5_4A32_D192_ED03);
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut stopped_early = false;
    for epoch in 0..cfg.epochs {
        let started = Instant::now();
        let lr = cfg.schedule.lr(cfg.lr, epoch, cfg.epochs);
        let data = train.epoch_samples(epoch)?;
        check_samples(model, data, "training")?;
        if data.is_empty() {
            return Err(Error::Invalid("no training samples".into()));
        }
        let mut order: Vec<usize> = (0..data.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for idx in order.chunks(cfg.batch_size) {
            let x = data.gather(idx)?;
            let labels: Vec<usize> = idx.iter().map(|&i| data.labels()[i]).collect();
            let (logits, tape) = model.forward_train(be, x, Mode::Train(&mut rng))?;
            let ce = be.softmax_cross_entropy(&logits, &labels)?;
            let loss = ce.loss + l2_penalty(be, &model.params(), cfg.l2)?;
            if !loss.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged in epoch {} (loss {loss}); try a lower learning rate \
                     than {lr}",
                    epoch + 1
                )));
            }
            loss_sum += loss * idx.len() as f64;
            let probs = be.to_host(ce.probs)?;
            correct += argmax_rows(probs.data(), classes)
                .iter()
                .zip(&labels)
                .filter(|(p, l)| p == l)
                .count();
            let mut grads = model.backward(be, &tape, &ce.dlogits)?;
            drop(tape);
            add_l2_gradient(be, &model.params(), cfg.l2, &mut grads)?;
            optimizer.step(be, model.params_mut(), &grads, lr)?;
        }
        let n = data.len() as f64;
        let (val_loss, val_accuracy) = match val {
            Some(v) if !v.is_empty() => {
                let (l, a, _) = evaluate(be, model, v, cfg.l2)?;
                if !l.is_finite() {
                    return Err(Error::Invalid(format!(
                        "training diverged in epoch {} (validation loss {l}); try a lower \
                         learning rate than {lr}",
                        epoch + 1
                    )));
                }
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            fine_tune,
            lr,
            train_loss: loss_sum / n,
            train_accuracy: correct as f64 / n,
            val_loss,
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        on_epoch(&metrics);
        history.push(metrics);
        if let Some(vl) = val_loss {
            let min_delta = cfg.early_stopping.map_or(0.0, |e| e.min_delta);
            let to_beat = best.as_ref().map(|(b, _, _)| *b).or(baseline);
            let improved = to_beat.is_none_or(|b| vl < b - min_delta);
            // Epochs since the last improvement (or since the start, against a baseline).
            let since = epoch + 1 - best.as_ref().map_or(0, |(_, e, _)| *e);
            if improved {
                best = Some((vl, epoch + 1, model.snapshot()));
            } else if let Some(es) = cfg.early_stopping
                && (best.is_some() || baseline.is_some())
                && since >= es.patience
                && epoch + 1 < cfg.epochs
            {
                stopped_early = true;
                break;
            }
        }
    }
    let best_epoch = match (best, start) {
        (Some((_, epoch, weights)), _) => {
            model.restore(weights);
            Some(epoch)
        }
        (None, Some((_, initial))) if val.is_some_and(|v| !v.is_empty()) => {
            model.restore(initial);
            None
        }
        _ => None,
    };
    Ok(FitReport {
        history,
        best_epoch,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Cpu, CpuReference};
    use crate::nn::head::{Head, HeadSpec};

    /// Two Gaussian blobs per class in a (3, 3, 5) feature map, separable after pooling.
    fn blobs(n: usize, seed: u64) -> Features {
        let mut rng = Rng::new(seed);
        let shape = vec![3, 3, 5];
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = i % 3;
            for p in 0..45 {
                let centre = if p % 5 == label { 2.0 } else { 0.0 };
                data.push(centre + rng.normal());
            }
            labels.push(label);
        }
        Features {
            shape,
            data,
            labels,
        }
    }

    fn run_on(be: &dyn Backend, cfg: &FitConfig) -> (Classifier, FitReport) {
        let mut train = blobs(61, 1);
        let val = blobs(31, 2);
        let spec = HeadSpec::parse("gap,dense8,relu,dropout0.5", 3).unwrap();
        let head = Head::new(spec, &train.shape, cfg.seed).unwrap();
        let mut model = Classifier::head_only(head);
        let report = fit(be, &mut model, &mut train, Some(&val), cfg, &mut |_| {}).unwrap();
        (model, report)
    }

    fn run(cfg: &FitConfig) -> (Classifier, FitReport) {
        run_on(&Cpu::new(), cfg)
    }

    fn weights(m: &Classifier) -> Vec<Vec<f32>> {
        m.params()
            .iter()
            .map(|p| p.tensor.data().to_vec())
            .collect()
    }

    #[test]
    fn learns_separable_classes() {
        let cfg = FitConfig {
            epochs: 40,
            batch_size: 7,
            early_stopping: None,
            ..FitConfig::default()
        };
        let (model, report) = run(&cfg);
        let last = report.history.last().unwrap();
        assert!(last.val_accuracy.unwrap() > 0.9, "{last:?}");
        assert!(last.train_loss < report.history[0].train_loss);
        let (_, acc, _) = evaluate(&Cpu::new(), &model, &blobs(31, 2), 0.0).unwrap();
        let best = report.best_epoch.unwrap();
        assert_eq!(
            Some(acc),
            report.history[best - 1].val_accuracy,
            "best weights restored"
        );
    }

    #[test]
    fn seeded_runs_are_identical_bit_for_bit() {
        for name in ["sgd", "adam", "adamw"] {
            let cfg = FitConfig {
                epochs: 5,
                batch_size: 8,
                optimizer: OptimizerKind::from_name(name).unwrap(),
                schedule: Schedule::Cosine { min_lr: 0.0 },
                l2: 1e-3,
                seed: 42,
                ..FitConfig::default()
            };
            let (a, ra) = run(&cfg);
            let (b, rb) = run(&cfg);
            assert_eq!(weights(&a), weights(&b), "{name}");
            let strip = |r: &FitReport| {
                r.history
                    .iter()
                    .map(|m| (m.train_loss, m.val_loss))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&ra), strip(&rb), "{name}");
            let (c, _) = run(&FitConfig { seed: 43, ..cfg });
            assert_ne!(weights(&a), weights(&c), "{name}: the seed must matter");
        }
    }

    #[test]
    fn fast_and_reference_backends_train_alike() {
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 8,
            ..FitConfig::default()
        };
        let (a, _) = run_on(&Cpu::new(), &cfg);
        let (b, _) = run_on(&CpuReference, &cfg);
        for (x, y) in weights(&a)
            .iter()
            .flatten()
            .zip(weights(&b).iter().flatten())
        {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn early_stopping_stops_and_restores() {
        // A learning rate this high overshoots, so the validation loss stops improving soon.
        let cfg = FitConfig {
            epochs: 200,
            batch_size: 61,
            lr: 0.05,
            early_stopping: Some(EarlyStopping {
                patience: 3,
                min_delta: 0.0,
            }),
            ..FitConfig::default()
        };
        let (_, report) = run(&cfg);
        assert!(report.stopped_early, "{} epochs", report.history.len());
        let best = report.best_epoch.unwrap();
        assert_eq!(report.history.len(), best + 3);
        let min = report
            .history
            .iter()
            .map(|m| m.val_loss.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(report.history[best - 1].val_loss, Some(min));
    }

    #[test]
    fn a_baseline_no_epoch_beats_keeps_the_starting_weights() {
        let be = Cpu::new();
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 8,
            ..FitConfig::default()
        };
        let spec = HeadSpec::parse("gap,dense8,relu,dropout0.5", 3).unwrap();
        let mut model = Classifier::head_only(Head::new(spec, &[3, 3, 5], 1).unwrap());
        let before = weights(&model);
        let (mut train, val) = (blobs(61, 1), blobs(31, 2));
        // A baseline of zero loss cannot be beaten.
        let r = fit_from(
            &be,
            &mut model,
            &mut train,
            Some(&val),
            &cfg,
            Some(0.0),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r.best_epoch, None);
        assert_eq!(weights(&model), before, "the starting weights are kept");
        // An easy baseline is beaten, as without one.
        let r = fit_from(
            &be,
            &mut model,
            &mut train,
            Some(&val),
            &cfg,
            Some(1e9),
            &mut |_| {},
        )
        .unwrap();
        assert!(r.best_epoch.is_some());
        assert_ne!(weights(&model), before);
    }

    #[test]
    fn refuses_bad_settings_and_mismatched_features() {
        let be = Cpu::new();
        let spec = HeadSpec::parse("gap", 3).unwrap();
        let mut train = blobs(6, 1);
        let mut model = Classifier::head_only(Head::new(spec, &[3, 3, 5], 0).unwrap());
        let bad_lr = FitConfig {
            lr: f64::NAN,
            ..FitConfig::default()
        };
        assert!(fit(&be, &mut model, &mut train, None, &bad_lr, &mut |_| {}).is_err());
        let mut other = Features {
            shape: vec![3, 3, 4],
            data: vec![1.0; 36],
            labels: vec![0],
        };
        let e = fit(
            &be,
            &mut model,
            &mut other,
            None,
            &FitConfig::default(),
            &mut |_| {},
        );
        assert!(e.unwrap_err().to_string().contains("shape"));
        let mut diverge = blobs(6, 1);
        diverge.data[0] = f32::NAN;
        let e = fit(
            &be,
            &mut model,
            &mut diverge,
            None,
            &FitConfig::default(),
            &mut |_| {},
        );
        assert!(e.unwrap_err().to_string().contains("diverged"));
    }
}
