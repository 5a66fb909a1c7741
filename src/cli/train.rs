//! `keel train`: photos in class folders to a trained model folder.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use super::backend::BackendArgs;
use super::common::{CacheArgs, ModelArgs, load_weights, parse_hw, print_skipped};
use crate::io::dataset::scan_training_folder;
use crate::io::image::Interpolation;
use crate::nn::fit::{EarlyStopping, FitConfig};
use crate::nn::head::DEFAULT_HEAD;
use crate::nn::optim::OptimizerKind;
use crate::nn::schedule::Schedule;
use crate::transfer::{Augment, FineTune, FrozenBase, TrainOptions, train};

#[derive(Parser, Debug)]
pub struct Args {
    /// Photos: DIR/<class>/... (split by --validation-split), or DIR/{train,val}/<class>/...
    /// (the split is kept). Classes are the sorted subfolder names.
    data: PathBuf,
    /// The model folder to write (head.safetensors, model.json, report.json, curves.png,
    /// confusion.png).
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output folder if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    /// The base layer the head reads.
    #[arg(long, default_value = "block5_pool")]
    layer: String,
    /// Input size HxW every photo is resized to. 320x320 rather than Keras's 224x224: on the
    /// ants-vs-bees photos it gains 2-3 points of validation accuracy for twice the base's time
    /// (docs/transfer.md); 224x224 is the fast choice.
    #[arg(long, value_parser = parse_hw, default_value = "320x320")]
    input: [usize; 2],
    /// Head layers before the classifier (gap, gmp, flatten, dense<N>, relu, dropout<rate>);
    /// dense<classes> and softmax are added.
    #[arg(long, default_value = DEFAULT_HEAD)]
    head: String,
    /// Fraction of each class held out for validation, for DIR/<class>/ folders
    /// [default: 0.2; 0 trains on everything].
    #[arg(long)]
    validation_split: Option<f64>,
    /// Seed for the split, the initial weights, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of training the head (the first phase when fine-tuning).
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// After training the head, unfreeze the base from this block up (block5: block5_conv1,
    /// conv2, conv3; block4: also block4's) and train it with the head at a small learning
    /// rate, as Keras's transfer-learning guide does (docs/fine-tune.md).
    #[arg(long, value_name = "BLOCK")]
    fine_tune: Option<String>,
    /// Epochs of fine-tuning (the second phase).
    #[arg(long, default_value_t = 10)]
    fine_tune_epochs: usize,
    /// Learning rate of fine-tuning: small, so the pretrained filters adapt rather than
    /// restart.
    #[arg(long, default_value_t = 1e-5)]
    fine_tune_lr: f64,
    /// Optimizer of fine-tuning: sgd, adam or adamw [default: --optimizer's].
    #[arg(long)]
    fine_tune_optimizer: Option<String>,
    /// Images per fine-tuning step [default: --batch-size].
    #[arg(long)]
    fine_tune_batch_size: Option<usize>,
    /// MiB of stored features and activations to keep in memory; what does not fit streams
    /// from a temporary file (fine-tuning keeps 800 KB per photo for block5 at 320x320).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    memory_budget: usize,
    /// sgd, adam or adamw (Keras's update rules and defaults).
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Nesterov momentum for SGD.
    #[arg(long)]
    nesterov: bool,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.004)]
    weight_decay: f64,
    /// L2 penalty on kernels, l2 * sum(w^2) added to the loss (Keras's l2 regularizer).
    #[arg(long, default_value_t = 0.0)]
    l2: f64,
    /// Learning-rate schedule per epoch: constant, step or cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// step: multiply the rate by --gamma every this many epochs.
    #[arg(long, default_value_t = 10)]
    step_every: usize,
    /// step: the factor the rate is multiplied by.
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    /// cosine: the rate at the last epoch.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    /// Stop after this many epochs without a better validation loss (0: never stop early).
    /// The weights of the best epoch are kept either way.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// The smallest drop in validation loss that counts as better.
    #[arg(long, default_value_t = 0.0)]
    min_delta: f64,
    /// Augment training images: flip (mirror; both versions computed once and cached), crop
    /// (random 8/7 crops; runs the base over every image every epoch, slow), or flip,crop.
    #[arg(long, default_value = "none")]
    augment: Augment,
    /// Leave unreadable images out (each is reported) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    cache: CacheArgs,
    /// Images per forward pass of the base.
    #[arg(long, default_value_t = 4)]
    base_batch: usize,
    /// Print only errors and the final summary.
    #[arg(short, long)]
    quiet: bool,
}

fn optimizer(a: &Args, name: &str) -> anyhow::Result<OptimizerKind> {
    Ok(
        match OptimizerKind::from_name(name).map_err(anyhow::Error::msg)? {
            OptimizerKind::Sgd { .. } => OptimizerKind::Sgd {
                momentum: a.momentum,
                nesterov: a.nesterov,
            },
            OptimizerKind::AdamW {
                beta1,
                beta2,
                epsilon,
                ..
            } => OptimizerKind::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay: a.weight_decay,
            },
            adam => adam,
        },
    )
}

fn fit_config(a: &Args) -> anyhow::Result<FitConfig> {
    let optimizer = optimizer(a, &a.optimizer)?;
    let schedule = match a.schedule.to_ascii_lowercase().as_str() {
        "constant" => Schedule::Constant,
        "step" => Schedule::Step {
            every: a.step_every,
            gamma: a.gamma,
        },
        "cosine" => Schedule::Cosine { min_lr: a.min_lr },
        s => bail!("unknown schedule '{s}': expected constant, step or cosine"),
    };
    if a.base_batch == 0 {
        bail!("--base-batch must be at least 1");
    }
    for (name, v) in [("--weight-decay", a.weight_decay), ("--min-lr", a.min_lr)] {
        if !(v >= 0.0 && v.is_finite()) {
            bail!("{name} must be a finite number >= 0, got {v}");
        }
    }
    if !(0.0..1.0).contains(&a.momentum) {
        bail!("--momentum must be in [0, 1), got {}", a.momentum);
    }
    Ok(FitConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer,
        lr: a.lr,
        schedule,
        l2: a.l2,
        seed: a.seed,
        early_stopping: (a.patience > 0).then_some(EarlyStopping {
            patience: a.patience,
            min_delta: a.min_delta,
        }),
    })
}

/// The second phase's settings: its own epochs, learning rate, optimizer and batch size; the
/// rest (schedule, L2, seed, early stopping) as the first phase's.
fn fine_tune(a: &Args, fit: &FitConfig) -> anyhow::Result<Option<FineTune>> {
    let Some(block) = &a.fine_tune else {
        return Ok(None);
    };
    let block = FineTune::parse_block(block)?;
    let name = a.fine_tune_optimizer.as_deref().unwrap_or(&a.optimizer);
    let ft = FitConfig {
        epochs: a.fine_tune_epochs,
        batch_size: a.fine_tune_batch_size.unwrap_or(a.batch_size),
        optimizer: optimizer(a, name)?,
        lr: a.fine_tune_lr,
        ..fit.clone()
    };
    ft.validate()
        .map_err(|e| anyhow::anyhow!("fine-tuning: {e} (--fine-tune-epochs, --fine-tune-lr)"))?;
    Ok(Some(FineTune { block, fit: ft }))
}

/// The line that says a phase ended before its last epoch, right after its epoch lines (which
/// count towards the planned number).
fn stopped_early(phase: &str, ran: usize, planned: usize, patience: usize) -> String {
    format!(
        "{phase} stopped early after epoch {ran} of {planned}: the validation loss had not \
         improved for {patience} epochs (--patience); the best epoch's weights are kept"
    )
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let fit = fit_config(&a)?;
    fit.validate()?;
    let fine_tune = fine_tune(&a, &fit)?;
    let backend = a.backend.build()?;
    crate::io::atomic::check_dir_target(&a.output, a.overwrite)?;
    let dataset = scan_training_folder(&a.data, a.validation_split, a.seed)?;
    eprintln!(
        "{}: {} classes ({}); {} train, {} validation images ({})",
        a.data.display(),
        dataset.classes.len(),
        dataset.classes.join(", "),
        dataset.train.len(),
        dataset.val.len(),
        dataset.split
    );
    print_skipped("skipped while scanning", &dataset.skipped);
    let (set, _) = load_weights(a.model.weights.as_deref(), a.model.model, false)?;
    let base = FrozenBase::new(
        set,
        &a.layer,
        a.input,
        a.model.interpolation.unwrap_or(Interpolation::Bilinear),
        backend,
    )?;
    let opts = TrainOptions {
        head: a.head.clone(),
        fit,
        fine_tune,
        memory_budget: a.memory_budget.saturating_mul(1 << 20),
        augment: a.augment,
        cache: a.cache.cache(),
        skip_bad: a.skip_bad,
        batch: a.base_batch,
        progress: !a.quiet,
    };
    let quiet = a.quiet;
    let patience = a.patience;
    let head_epochs = opts.fit.epochs;
    let mut first_fine_tune = None;
    let outcome = train(&dataset, &base, &opts, &mut |m| {
        if quiet {
            return;
        }
        let val = match (m.val_loss, m.val_accuracy) {
            (Some(l), Some(acc)) => format!("  val_loss {l:.4}  val_acc {acc:.4}"),
            _ => String::new(),
        };
        let (phase, of) = match (&opts.fine_tune, m.fine_tune) {
            (Some(ft), true) => {
                let first = *first_fine_tune.get_or_insert(m.epoch);
                if first == m.epoch && first <= head_epochs {
                    eprintln!(
                        "{}",
                        stopped_early("head training", first - 1, head_epochs, patience)
                    );
                }
                if first == m.epoch {
                    eprintln!(
                        "fine-tuning from {} (lr {:.1e})",
                        ft.first_layer(),
                        ft.fit.lr
                    );
                }
                (
                    "fine-tune ",
                    format!("{}/{}", m.epoch + 1 - first, ft.fit.epochs),
                )
            }
            _ => ("", format!("{}/{head_epochs}", m.epoch)),
        };
        eprintln!(
            "{phase}epoch {of:>5}  loss {:.4}  acc {:.4}{val}  lr {:.2e}  {:.2} s",
            m.train_loss, m.train_accuracy, m.lr, m.seconds
        );
    })?;
    let card = &outcome.model.card;
    let last_phase = match &card.fine_tune {
        Some(f) => ("fine-tuning", f.epochs_run, f.epochs, f.stopped_early),
        None => (
            "head training",
            card.training.epochs_run,
            card.training.epochs,
            card.training.stopped_early,
        ),
    };
    if !quiet && last_phase.3 {
        eprintln!(
            "{}",
            stopped_early(last_phase.0, last_phase.1, last_phase.2, patience)
        );
    }
    let r = &outcome.report;
    print_skipped(
        "unreadable images left out (--skip-bad)",
        &outcome.unreadable,
    );
    outcome
        .save(&a.output, a.overwrite)
        .with_context(|| format!("{}: cannot write the model folder", a.output.display()))?;
    let t = &r.timings;
    let ft = match &outcome.model.card.fine_tune {
        Some(f) => format!(
            "; fine-tuning: {:.1} s, {} epochs{}",
            t.fine_tune_seconds,
            f.epochs_run,
            if f.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    let head_run = outcome.model.card.training.epochs_run;
    eprintln!(
        "features: {:.1} s ({} computed, {} from cache{}{}); training: {:.2} s, {head_run} epochs{}{ft}{}",
        t.features_seconds,
        t.images_computed,
        t.images_cached,
        if t.streamed_from_disk {
            ", streamed from disk"
        } else {
            ""
        },
        if t.images_computed > 0 {
            format!(
                "; base busy {}",
                super::features::busy_text(t.base_busy_seconds, t.features_seconds)
            )
        } else {
            String::new()
        },
        t.training_seconds,
        if outcome.model.card.training.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        match outcome.fit.best_epoch {
            Some(b) => format!("; best epoch {b} kept"),
            None => String::new(),
        }
    );
    if let (Some(before), Some(after)) = (&r.validation_before_fine_tune, &r.validation) {
        match &outcome.model.card.fine_tune {
            Some(f) if !f.kept => eprintln!(
                "fine-tuning did not beat the head's best validation loss ({:.4}): the folder \
                 keeps the head-only model ({:.2}% validation accuracy)",
                before.loss,
                before.metrics.accuracy * 100.0
            ),
            _ => eprintln!(
                "validation accuracy: {:.2}% with the head alone, {:.2}% fine-tuned",
                before.metrics.accuracy * 100.0,
                after.metrics.accuracy * 100.0
            ),
        }
    }
    let (which, eval) = match &r.validation {
        Some(v) => ("validation", v),
        None => ("training", &r.train),
    };
    println!("{which} ({} images, loss {:.4}):", eval.images, eval.loss);
    print!("{}", eval.metrics.to_text());
    println!("wrote {}", a.output.display());
    Ok(())
}
