//! Transfer learning: VGG's pretrained conv base, frozen, turns photos into features once; a
//! small head is trained on them; optionally the top of the base is then fine-tuned with the
//! head; the result is a model folder that evaluates and predicts.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use keel::cpu::Cpu;
//! use keel::io::dataset::scan_training_folder;
//! use keel::io::image::Interpolation;
//! use keel::transfer::{FrozenBase, TrainOptions, train};
//!
//! let data = scan_training_folder("photos".as_ref(), None, 7)?;
//! let base = FrozenBase::load("vgg16_notop.h5".as_ref(), "block5_pool", [224, 224],
//!                             Interpolation::Nearest, Arc::new(Cpu::new()))?;
//! let outcome = train(&data, &base, &TrainOptions::default(), &mut |m| println!("{m:?}"))?;
//! outcome.save("ants_vs_bees".as_ref(), false)?;
//! # Ok::<(), keel::Error>(())
//! ```

mod augment;
mod base;
mod export;
mod model;
pub(crate) mod progress;
mod store;
mod train;

pub use augment::{Augment, CropSource, FlipSource};
pub use base::{BaseInfo, ExtractOptions, Extraction, FrozenBase, flip_horizontal};
pub use export::{ExportGraph, ExportLayer, FlowShape};
pub use model::{
    FineTuneInfo, HeadInfo, MODEL_FORMAT, MODEL_VERSION, ModelCard, TrainedModel, TrainingInfo,
};
pub use store::{MemoryBudget, RowStore};
pub use train::{
    DEFAULT_MEMORY_BUDGET, Evaluation, FineTune, Prediction, Report, SkippedFile, Timings,
    TrainOptions, TrainOutcome, evaluate_folder, extract_features, predict_paths, train,
};
