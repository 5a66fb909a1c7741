//! A set of named weights read from a file (Keras .h5 or safetensors), and the architecture it
//! holds.
//!
//! Files do not say "this is VGG16"; their layer names and shapes do. [`WeightSet::identify`]
//! reads them so that keel can infer the model, check it against what the user asked for, and
//! name a wrong file as what it is (VGG19 instead of VGG16, a file with the top, another network).

use std::path::{Path, PathBuf};

use super::arch::{Arch, VggConfig};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A weight tensor with the name the file gave it (for messages).
#[derive(Clone, Debug)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// One layer's weights, in Keras's order (kernel, then bias).
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub layer: String,
    pub tensors: Vec<NamedTensor>,
}

/// Every weighted layer of a file, in the model's layer order.
#[derive(Clone, Debug)]
pub struct WeightSet {
    /// The file the weights came from.
    pub source: PathBuf,
    /// What kind of file it was ("Keras 2 save_weights .h5", "safetensors", ...).
    pub format: String,
    pub layers: Vec<LayerWeights>,
}

/// The architecture a weight set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub arch: Arch,
    pub include_top: bool,
    pub widths: [usize; 5],
    /// Units of fc1/fc2 (0 without the top).
    pub fc_units: usize,
    /// Classes of `predictions` (0 without the top).
    pub classes: usize,
}

impl Identity {
    /// A Keras-default configuration for this identity (224x224 with the top).
    pub fn config(&self) -> VggConfig {
        VggConfig {
            include_top: self.include_top,
            widths: self.widths,
            fc_units: if self.include_top {
                self.fc_units
            } else {
                VggConfig::new(self.arch).fc_units
            },
            classes: if self.include_top {
                self.classes
            } else {
                VggConfig::new(self.arch).classes
            },
            ..VggConfig::new(self.arch)
        }
    }

    /// "VGG16 (conv base)" / "VGG19 with top (10 classes)", for messages.
    pub fn describe(&self) -> String {
        if self.include_top {
            format!("{} with its top ({} classes)", self.arch, self.classes)
        } else {
            format!("{} conv base without the top", self.arch)
        }
    }
}

/// The layers a VGG top adds.
pub(crate) const TOP_LAYERS: [&str; 3] = ["fc1", "fc2", "predictions"];

/// `block3_conv2` -> `(3, 2)`.
fn parse_conv_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("block")?;
    let (b, i) = rest.split_once("_conv")?;
    Some((b.parse().ok()?, i.parse().ok()?))
}

impl WeightSet {
    pub fn get(&self, layer: &str) -> Option<&LayerWeights> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    fn err(&self, problem: impl Into<String>) -> Error {
        Error::file(&self.source, problem)
    }

    /// Infer the architecture from layer names and kernel shapes.
    pub fn identify(&self) -> Result<Identity> {
        let names: Vec<&str> = self.layers.iter().map(|l| l.layer.as_str()).collect();
        let mut counts = [0usize; 5];
        let mut unknown = Vec::new();
        for &name in &names {
            match parse_conv_name(name) {
                Some((b @ 1..=5, _)) => counts[b - 1] += 1,
                _ if TOP_LAYERS.contains(&name) => {}
                _ => unknown.push(name),
            }
        }
        if counts == [0; 5] || !unknown.is_empty() {
            let shown: Vec<&str> = names.iter().take(8).copied().collect();
            let more = if names.len() > 8 { ", ..." } else { "" };
            return Err(self.err(format!(
                "not a VGG16/VGG19 weights file: its weighted layers are {}{more} \
                 (VGG's are block1_conv1, block1_conv2, ..., block5_pool)",
                if shown.is_empty() {
                    "none".to_string()
                } else {
                    shown.join(", ")
                }
            )));
        }
        let arch = Arch::from_convs_per_block(counts).ok_or_else(|| {
            self.err(format!(
                "not a VGG16/VGG19 weights file: it has {counts:?} convolutions in blocks 1-5 \
                 (VGG16 has [2, 2, 3, 3, 3], VGG19 [2, 2, 4, 4, 4])"
            ))
        })?;
        let mut widths = [0; 5];
        for (b, &n) in arch.convs_per_block().iter().enumerate() {
            let name = format!("block{}_conv{n}", b + 1);
            widths[b] = self.kernel_dim(&name, 3)?;
        }
        let present: Vec<&str> = TOP_LAYERS
            .iter()
            .copied()
            .filter(|n| names.contains(n))
            .collect();
        let include_top = !present.is_empty();
        if include_top && present.len() != TOP_LAYERS.len() {
            let missing: Vec<&str> = TOP_LAYERS
                .iter()
                .copied()
                .filter(|n| !names.contains(n))
                .collect();
            return Err(self.err(format!(
                "{arch} top is incomplete: layer {} is missing",
                missing.join(", ")
            )));
        }
        let (fc_units, classes) = if include_top {
            (
                self.kernel_dim("fc1", 1)?,
                self.kernel_dim("predictions", 1)?,
            )
        } else {
            (0, 0)
        };
        Ok(Identity {
            arch,
            include_top,
            widths,
            fc_units,
            classes,
        })
    }

    /// Dimension `axis` of layer `name`'s kernel (its first tensor).
    fn kernel_dim(&self, name: &str, axis: usize) -> Result<usize> {
        let layer = self
            .get(name)
            .ok_or_else(|| self.err(format!("layer {name} is missing")))?;
        let kernel = layer
            .tensors
            .first()
            .ok_or_else(|| self.err(format!("layer {name} has no weights")))?;
        kernel.tensor.dims().get(axis).copied().ok_or_else(|| {
            self.err(format!(
                "layer {name}: kernel {} has shape {}, which is not a {} kernel",
                kernel.name,
                kernel.tensor.shape(),
                if axis == 3 {
                    "3x3 convolution"
                } else {
                    "dense"
                }
            ))
        })
    }

    /// Keep only the convolutional base: an explicit choice to use a file with the top for
    /// features (Keras itself refuses to load such a file into a model without the top).
    pub fn conv_base(mut self) -> WeightSet {
        self.layers
            .retain(|l| !TOP_LAYERS.contains(&l.layer.as_str()));
        self
    }

    /// Refuse NaN and infinite weights, naming the first one found.
    pub fn check_finite(&self) -> Result<()> {
        for l in &self.layers {
            for t in &l.tensors {
                if let Some(i) = t.tensor.first_non_finite() {
                    let v = t.tensor.data()[i];
                    return Err(self.err(format!(
                        "layer {}: weight {} holds {v} at flat index {i}; weights must be finite",
                        l.layer, t.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| &l.tensors)
            .map(|t| t.tensor.numel())
            .sum()
    }

    /// The file name for messages.
    pub fn source(&self) -> &Path {
        &self.source
    }
}
