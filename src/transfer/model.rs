//! A trained model folder: the head's weights, and everything needed to use them again.
//!
//! ```text
//! ants_vs_bees/
//!   head.safetensors   the head's parameters (Keras layout, f32)
//!   model.json         classes, base (model, weights checksum, layer, input, preprocessing),
//!                      head spec, training settings, metrics per epoch
//!   report.json        validation metrics, per-class precision/recall/F1, confusion matrix
//!   curves.png         loss and accuracy per epoch
//!   confusion.png      the validation confusion matrix
//! ```
//! The folder is written under a temporary name and renamed into place, so it either exists
//! whole or not at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::base::{BaseInfo, FrozenBase};
use crate::error::{Error, Result};
use crate::nn::fit::EpochMetrics;
use crate::nn::head::{Head, HeadSpec, Param};

/// `model.json`'s format name and version, checked on load.
pub const MODEL_FORMAT: &str = "keel.transfer-model";
pub const MODEL_VERSION: u32 = 1;

/// The head as `model.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// The full layer list, classifier included, e.g. `gap,dense256,relu,dropout0.5,dense2`.
    pub spec: String,
    pub input_shape: Vec<usize>,
    pub params: usize,
}

/// The settings a run was trained with (for the record; nothing reads them back to train).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub dataset: PathBuf,
    pub split: String,
    pub train_images: usize,
    pub val_images: usize,
    pub epochs: usize,
    pub epochs_run: usize,
    pub batch_size: usize,
    pub optimizer: String,
    pub lr: f64,
    pub schedule: String,
    pub l2: f64,
    pub seed: u64,
    pub early_stopping: Option<crate::nn::fit::EarlyStopping>,
    pub augment: Vec<String>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
}

/// Everything in `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub version: u32,
    pub keel_version: String,
    pub classes: Vec<String>,
    pub base: BaseInfo,
    pub head: HeadInfo,
    pub training: TrainingInfo,
    pub history: Vec<EpochMetrics>,
}

/// A trained head with its card.
#[derive(Clone, Debug)]
pub struct TrainedModel {
    pub card: ModelCard,
    pub head: Head<f32>,
}

impl TrainedModel {
    /// Class probabilities for flat features, `classes` per row.
    pub fn predict_proba(&self, features: &[f32]) -> Result<Vec<f32>> {
        self.head.predict_proba(features)
    }

    /// Refuse a base that is not the one the head was trained on: other weights (by
    /// checksum), model, layer, input size, preprocessing or resize filter.
    pub fn check_base(&self, base: &FrozenBase, model_dir: &Path) -> Result<()> {
        let want = &self.card.base;
        let got = base.info();
        if got.weights_checksum != want.weights_checksum {
            return Err(Error::file(
                &got.weights_file,
                format!(
                    "these base weights ({}) are not the ones the model in {} was trained on \
                     ({}, from {}); pass the same weights with --weights",
                    got.weights_checksum,
                    model_dir.display(),
                    want.weights_checksum,
                    want.weights_file.display()
                ),
            ));
        }
        let mismatch = [
            ("model", &got.model, &want.model),
            ("layer", &got.layer, &want.layer),
            ("preprocessing", &got.preprocessing, &want.preprocessing),
            ("interpolation", &got.interpolation, &want.interpolation),
        ]
        .into_iter()
        .find(|(_, g, w)| g != w);
        if let Some((what, g, w)) = mismatch {
            return Err(Error::Invalid(format!(
                "the model in {} was trained with {what} {w}, not {g}",
                model_dir.display()
            )));
        }
        if got.input != want.input {
            return Err(Error::Invalid(format!(
                "the model in {} was trained on {}x{} inputs, not {}x{}",
                model_dir.display(),
                want.input[0],
                want.input[1],
                got.input[0],
                got.input[1]
            )));
        }
        Ok(())
    }

    /// `head.safetensors`: the parameters by name, with the spec and classes as metadata.
    pub fn head_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<Vec<u8>> = self
            .head
            .params()
            .iter()
            .map(|p| p.data.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = self
            .head
            .params()
            .iter()
            .zip(&bytes)
            .map(|(p, b)| {
                TensorView::new(Dtype::F32, p.shape.clone(), b)
                    .map(|v| (p.name.clone(), v))
                    .map_err(|e| Error::Invalid(format!("cannot encode {}: {e}", p.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        // One metadata entry: safetensors keeps metadata in a HashMap, whose order (and so
        // the file's bytes) would change from run to run with several.
        let about = serde_json::json!({
            "format": MODEL_FORMAT,
            "head": self.card.head.spec,
            "classes": self.card.classes,
        });
        let meta: HashMap<String, String> = [("keel".to_string(), about.to_string())].into();
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Invalid(format!("cannot encode the head: {e}")))
    }

    /// Write the model folder `dir` atomically, with `extras` (file name, bytes) beside the
    /// head and card. An existing `dir` is an error unless `overwrite`.
    pub fn save(&self, dir: &Path, extras: &[(&str, Vec<u8>)], overwrite: bool) -> Result<()> {
        let head = self.head_safetensors()?;
        let card = serde_json::to_vec_pretty(&self.card)
            .map_err(|e| Error::Invalid(format!("cannot encode model.json: {e}")))?;
        crate::io::atomic::create_dir_atomic(dir, overwrite, |tmp| {
            let write = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
            };
            write("head.safetensors", &head)?;
            write("model.json", &card)?;
            for (name, bytes) in extras {
                write(name, bytes)?;
            }
            Ok(())
        })
    }

    /// Read a model folder, checking the card against the head's file.
    pub fn load(dir: &Path) -> Result<TrainedModel> {
        if !dir.is_dir() {
            return Err(Error::file(
                dir,
                "is not a model folder (expected a folder written by keel train)",
            ));
        }
        let card_path = dir.join("model.json");
        let text = std::fs::read(&card_path).map_err(|e| Error::io(&card_path, e))?;
        let card: ModelCard = serde_json::from_slice(&text)
            .map_err(|e| Error::file(&card_path, format!("is not a keel model card: {e}")))?;
        if card.format != MODEL_FORMAT || card.version != MODEL_VERSION {
            return Err(Error::file(
                &card_path,
                format!(
                    "has format {} version {}; this keel reads {MODEL_FORMAT} version \
                     {MODEL_VERSION}",
                    card.format, card.version
                ),
            ));
        }
        let bad_card = |problem: String| Error::file(&card_path, problem);
        let spec = HeadSpec::parse(&card.head.spec, card.classes.len())
            .map_err(|e| bad_card(e.to_string()))?;
        if spec.to_string() != card.head.spec {
            return Err(bad_card(format!(
                "head {} does not end with a classifier for its {} classes",
                card.head.spec,
                card.classes.len()
            )));
        }
        let head_path = dir.join("head.safetensors");
        let bytes = std::fs::read(&head_path).map_err(|e| Error::io(&head_path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(&head_path, format!("is not a safetensors file: {e}")))?;
        let bad_head = |problem: String| Error::file(&head_path, problem);
        let template = Head::<f32>::new(spec.clone(), &card.head.input_shape, 0)
            .map_err(|e| bad_card(e.to_string()))?;
        let mut params = Vec::new();
        for want in template.params() {
            let t = st
                .tensor(&want.name)
                .map_err(|_| bad_head(format!("has no tensor {}", want.name)))?;
            if t.dtype() != Dtype::F32 || t.shape() != want.shape.as_slice() {
                return Err(bad_head(format!(
                    "{} is {:?} {:?}, expected F32 {:?}",
                    want.name,
                    t.dtype(),
                    t.shape(),
                    want.shape
                )));
            }
            let data: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(v) = data.iter().find(|v| !v.is_finite()) {
                return Err(bad_head(format!(
                    "{} holds a non-finite value ({v})",
                    want.name
                )));
            }
            params.push(Param {
                name: want.name.clone(),
                shape: want.shape.clone(),
                data,
                decay: want.decay,
            });
        }
        if st.len() != params.len() {
            return Err(bad_head(format!(
                "holds {} tensors, the head {} has {}",
                st.len(),
                card.head.spec,
                params.len()
            )));
        }
        let head = Head::from_params(spec, &card.head.input_shape, params)
            .map_err(|e| bad_head(e.to_string()))?;
        Ok(TrainedModel { card, head })
    }
}
