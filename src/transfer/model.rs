//! A trained model folder: the head's weights, and everything needed to use them again.
//!
//! ```text
//! ants_vs_bees/
//!   head.safetensors   the head's parameters (Keras layout, f32)
//!   tuned.safetensors  with --fine-tune only: the fine-tuned conv layers (block5_conv1.kernel,
//!                      ...; Keras layout, f32), which replace the base's own
//!   model.json         classes, base (model, weights checksum, layer, input, preprocessing),
//!                      head spec, fine-tuning, training settings, metrics per epoch
//!   report.json        validation metrics, per-class precision/recall/F1, confusion matrix
//!   curves.png         loss and accuracy per epoch
//!   confusion.png      the validation confusion matrix
//! ```
//! The folder is written under a temporary name and renamed into place, so it either exists
//! whole or not at all. Version 1 folders (before fine-tuning existed) still load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::base::{BaseInfo, FrozenBase};
use crate::error::{Error, Result};
use crate::nn::fit::EpochMetrics;
use crate::nn::head::{Head, HeadSpec};
use crate::tensor::Tensor;

/// `model.json`'s format name and version, checked on load.
pub const MODEL_FORMAT: &str = "keel.transfer-model";
pub const MODEL_VERSION: u32 = 2;
/// The oldest version this keel reads.
const OLDEST_VERSION: u32 = 1;

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

/// The second phase, as `model.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTuneInfo {
    /// `block5`: the lowest block trained.
    pub block: String,
    /// The trained layers with weights, in order; their tensors are in `tuned.safetensors`.
    pub layers: Vec<String>,
    pub params: usize,
    /// SHA-256 of the fine-tuned tensors (names, shapes, values), checked on load.
    pub checksum: String,
    pub epochs: usize,
    pub epochs_run: usize,
    pub batch_size: usize,
    pub optimizer: String,
    pub lr: f64,
    pub schedule: String,
    pub l2: f64,
    /// Counted across both phases, as the history is.
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    /// Whether the fine-tuned layers were kept: no epoch beat the head's validation loss
    /// otherwise, and the folder holds the head-only model (no `tuned.safetensors`).
    pub kept: bool,
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
    /// The second phase, if the model was fine-tuned (absent in version 1 folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTuneInfo>,
    /// Both phases, epochs numbered across them.
    pub history: Vec<EpochMetrics>,
}

/// A trained head with its card, and the fine-tuned layers if any.
#[derive(Clone, Debug)]
pub struct TrainedModel {
    pub card: ModelCard,
    pub head: Head,
    /// The fine-tuned layers' tensors (`block5_conv1.kernel`, ...), host f32.
    pub tuned: Option<Vec<(String, Tensor)>>,
}

impl TrainedModel {
    /// `base` as this model sees it: with the fine-tuned layers in place of the base's own.
    /// `base` must be the one the model was trained on ([`TrainedModel::check_base`]).
    pub fn tuned_base(&self, base: &FrozenBase) -> Result<FrozenBase> {
        let (Some(ft), Some(tuned)) = (&self.card.fine_tune, &self.tuned) else {
            return Ok(base.clone());
        };
        if !ft.kept {
            return Ok(base.clone());
        }
        let first = ft
            .layers
            .first()
            .ok_or_else(|| Error::Invalid("the model's fine-tuning lists no layers".into()))?;
        let tail = base.tail(first)?.with_params(tuned.clone())?;
        base.with_tuned(&tail, ft.checksum.clone())
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
        let named: Vec<(String, &Tensor)> = self
            .head
            .params()
            .into_iter()
            .map(|p| (p.name, p.tensor))
            .collect();
        let about = serde_json::json!({
            "format": MODEL_FORMAT,
            "head": self.card.head.spec,
            "classes": self.card.classes,
        });
        encode_tensors(&named, about)
    }

    /// `tuned.safetensors`: the fine-tuned layers by name, with the base they replace layers of.
    fn tuned_safetensors(&self) -> Result<Option<Vec<u8>>> {
        let (Some(tuned), Some(ft)) = (&self.tuned, &self.card.fine_tune) else {
            return Ok(None);
        };
        let named: Vec<(String, &Tensor)> = tuned.iter().map(|(n, t)| (n.clone(), t)).collect();
        let about = serde_json::json!({
            "format": MODEL_FORMAT,
            "block": ft.block,
            "base_weights_checksum": self.card.base.weights_checksum,
            "checksum": ft.checksum,
        });
        encode_tensors(&named, about).map(Some)
    }

    /// Write the model folder `dir` atomically, with `extras` (file name, bytes) beside the
    /// head and card. An existing `dir` is an error unless `overwrite`.
    pub fn save(&self, dir: &Path, extras: &[(&str, Vec<u8>)], overwrite: bool) -> Result<()> {
        let head = self.head_safetensors()?;
        let tuned = self.tuned_safetensors()?;
        let card = serde_json::to_vec_pretty(&self.card)
            .map_err(|e| Error::Invalid(format!("cannot encode model.json: {e}")))?;
        crate::io::atomic::create_dir_atomic(dir, overwrite, |tmp| {
            let write = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
            };
            write("head.safetensors", &head)?;
            if let Some(t) = &tuned {
                write("tuned.safetensors", t)?;
            }
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
        if card.format != MODEL_FORMAT || !(OLDEST_VERSION..=MODEL_VERSION).contains(&card.version)
        {
            return Err(Error::file(
                &card_path,
                format!(
                    "has format {} version {}; this keel reads {MODEL_FORMAT} versions \
                     {OLDEST_VERSION} to {MODEL_VERSION}",
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
        let template = Head::new(spec.clone(), &card.head.input_shape, 0)
            .map_err(|e| bad_card(e.to_string()))?;
        let want: Vec<(String, Vec<usize>)> = template
            .params()
            .into_iter()
            .map(|p| (p.name, p.tensor.dims().to_vec()))
            .collect();
        let head_path = dir.join("head.safetensors");
        let params = read_tensors(&head_path, &want)?;
        let head = Head::from_params(spec, &card.head.input_shape, params)
            .map_err(|e| Error::file(&head_path, e.to_string()))?;
        let tuned = match &card.fine_tune {
            Some(ft) if ft.kept => {
                let path = dir.join("tuned.safetensors");
                let names = tensor_names(&path)?;
                // The names and shapes are checked against the base when the model is used
                // (they depend on its widths); here, that the file is whole and unchanged.
                let want: Vec<(String, Vec<usize>)> = ft
                    .layers
                    .iter()
                    .flat_map(|l| [format!("{l}.kernel"), format!("{l}.bias")])
                    .map(|n| {
                        let shape = names.iter().find(|(m, _)| *m == n).map(|(_, s)| s.clone());
                        shape
                            .map(|s| (n.clone(), s))
                            .ok_or_else(|| Error::file(&path, format!("has no tensor {n}")))
                    })
                    .collect::<Result<_>>()?;
                let tensors = read_tensors(&path, &want)?;
                let sum = crate::digest::named_tensors_sha256(
                    tensors.iter().map(|(n, t)| (n.as_str(), t)),
                );
                if sum != ft.checksum {
                    return Err(Error::file(
                        &path,
                        format!(
                            "holds fine-tuned weights with checksum {sum}, but model.json \
                             records {}: the file is damaged or from another model",
                            ft.checksum
                        ),
                    ));
                }
                Some(tensors)
            }
            _ => None,
        };
        Ok(TrainedModel { card, head, tuned })
    }
}

/// A safetensors file of named f32 tensors with one metadata entry. (One entry: safetensors
/// keeps metadata in a HashMap, whose order, and so the file's bytes, would change from run to
/// run with several.)
fn encode_tensors(named: &[(String, &Tensor)], about: serde_json::Value) -> Result<Vec<u8>> {
    let bytes: Vec<&[u8]> = named
        .iter()
        .map(|(_, t)| Ok(bytemuck::cast_slice::<f32, u8>(t.values::<f32>()?)))
        .collect::<Result<_>>()?;
    let views = named
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.dims().to_vec(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("cannot encode {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = [("keel".to_string(), about.to_string())].into();
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Invalid(format!("cannot encode tensors: {e}")))
}

/// The names and shapes of the tensors in a safetensors file.
fn tensor_names(path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("is not a safetensors file: {e}")))?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect())
}

/// Exactly the tensors `want` (name, shape), f32 and finite, from a safetensors file.
fn read_tensors(path: &Path, want: &[(String, Vec<usize>)]) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("is not a safetensors file: {e}")))?;
    let bad = |problem: String| Error::file(path, problem);
    let mut out = Vec::with_capacity(want.len());
    for (name, shape) in want {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("has no tensor {name}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
            return Err(bad(format!(
                "{name} is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(v) = data.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("{name} holds a non-finite value ({v})")));
        }
        out.push((name.clone(), Tensor::from_vec(shape.clone(), &data)?));
    }
    if st.len() != want.len() {
        return Err(bad(format!(
            "holds {} tensors, {} were expected",
            st.len(),
            want.len()
        )));
    }
    Ok(out)
}
