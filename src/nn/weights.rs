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

/// Every weighted layer of a file, in the model's layer order, checked once when it is made
/// ([`WeightSet::new`]): a VGG16/VGG19 whose every tensor has the shape the architecture
/// needs, with finite values. Whatever holds a `WeightSet` can rely on that without checking
/// again.
#[derive(Clone, Debug)]
pub struct WeightSet {
    /// The file the weights came from.
    pub source: PathBuf,
    /// What kind of file it was ("Keras 2 save_weights .h5", "safetensors", ...).
    pub format: String,
    layers: Vec<LayerWeights>,
    identity: Identity,
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

    /// The conv base of these weights (no top) for `input`-sized images: what feature
    /// extraction and transfer learning build.
    pub fn base_config(&self, input: [usize; 2]) -> VggConfig {
        VggConfig {
            include_top: false,
            input,
            widths: self.widths,
            ..VggConfig::notop(self.arch)
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

/// The weighted layers a VGG top adds (after `flatten`).
pub const TOP_LAYERS: [&str; 3] = ["fc1", "fc2", "predictions"];

/// `block3_conv2` -> `(3, 2)`.
fn parse_conv_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("block")?;
    let (b, i) = rest.split_once("_conv")?;
    Some((b.parse().ok()?, i.parse().ok()?))
}

impl WeightSet {
    /// The layers read from `source`, identified as VGG16 or VGG19 and checked (shapes, NaN
    /// and infinities); the error names the file and the first problem.
    pub fn new(
        source: &Path,
        format: impl Into<String>,
        layers: Vec<LayerWeights>,
    ) -> Result<WeightSet> {
        let mut set = WeightSet {
            source: source.to_path_buf(),
            format: format.into(),
            layers,
            identity: Identity {
                arch: Arch::Vgg16,
                include_top: false,
                widths: [0; 5],
                fc_units: 0,
                classes: 0,
            },
        };
        set.identity = set.identify()?;
        set.check_finite()?;
        Ok(set)
    }

    /// The architecture the weights hold.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The layers, in model order.
    pub fn layers(&self) -> &[LayerWeights] {
        &self.layers
    }

    /// The layers, giving up the set.
    pub fn into_layers(self) -> Vec<LayerWeights> {
        self.layers
    }

    pub fn get(&self, layer: &str) -> Option<&LayerWeights> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    fn err(&self, problem: impl Into<String>) -> Error {
        Error::file(&self.source, problem)
    }

    /// Infer the architecture from layer names and check every tensor's shape against it, so
    /// that a broken file is named as such before any model is built. The input size is not
    /// known here; [`crate::nn::Vgg::new`] checks fc1 against it.
    fn identify(&self) -> Result<Identity> {
        let names: Vec<&str> = self.layers.iter().map(|l| l.layer.as_str()).collect();
        let is_vgg_layer =
            |n: &str| TOP_LAYERS.contains(&n) || matches!(parse_conv_name(n), Some((1..=5, 1..=4)));
        let unknown: Vec<&str> = names.iter().copied().filter(|n| !is_vgg_layer(n)).collect();
        if !unknown.is_empty() || !names.iter().any(|n| parse_conv_name(n).is_some()) {
            let shown: Vec<&str> = names.iter().take(8).copied().collect();
            let more = if names.len() > 8 { ", ..." } else { "" };
            return Err(self.err(format!(
                "not a VGG16/VGG19 weights file: its weighted layers are {}{more} \
                 (VGG's are block1_conv1, block1_conv2, ..., block5_conv3, [fc1, fc2, predictions])",
                if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
            )));
        }
        // VGG19 is the one with a fourth convolution in blocks 3-5.
        let arch = if names
            .iter()
            .any(|n| matches!(parse_conv_name(n), Some((_, 4))))
        {
            Arch::Vgg19
        } else {
            Arch::Vgg16
        };
        let mut cin = 3;
        let mut widths = [0; 5];
        for (b, &convs) in arch.convs_per_block().iter().enumerate() {
            for i in 1..=convs {
                let name = format!("block{}_conv{i}", b + 1);
                let [kernel, bias] = self.pair(&name, "Conv2D", arch)?;
                let cout = match kernel.tensor.dims() {
                    &[3, 3, c, o] if c == cin => o,
                    _ => return Err(self.err(format!(
                        "layer {name}: kernel {} has shape {}, but {arch} expects (3, 3, {cin}, Cout): \
                         a 3x3 convolution over the {cin} channels of the layer before",
                        kernel.name,
                        kernel.tensor.shape()
                    ))),
                };
                self.check_bias(&name, bias, cout)?;
                cin = cout;
            }
            widths[b] = cin;
        }
        let present: Vec<&str> = TOP_LAYERS
            .iter()
            .copied()
            .filter(|n| names.contains(n))
            .collect();
        let include_top = !present.is_empty();
        let (mut fc_units, mut classes) = (0, 0);
        if include_top {
            let [k1, b1] = self.pair("fc1", "Dense", arch)?;
            let [k2, b2] = self.pair("fc2", "Dense", arch)?;
            let [k3, b3] = self.pair("predictions", "Dense", arch)?;
            match k1.tensor.dims() {
                &[fin, units] if fin % cin == 0 && fin > 0 => fc_units = units,
                _ => return Err(self.err(format!(
                    "layer fc1: kernel {} has shape {}, but {arch} expects (H * W * {cin}, units): \
                     the flattened block5_pool",
                    k1.name,
                    k1.tensor.shape()
                ))),
            }
            self.check_bias("fc1", b1, fc_units)?;
            self.check_dense("fc2", k2, fc_units, fc_units)?;
            self.check_bias("fc2", b2, fc_units)?;
            classes = match k3.tensor.dims() {
                &[u, c] if u == fc_units => c,
                _ => return Err(self.err(format!(
                    "layer predictions: kernel {} has shape {}, but {arch} expects ({fc_units}, classes)",
                    k3.name,
                    k3.tensor.shape()
                ))),
            };
            self.check_bias("predictions", b3, classes)?;
        }
        Ok(Identity {
            arch,
            include_top,
            widths,
            fc_units,
            classes,
        })
    }

    /// The kernel and bias of layer `name`, with a clear error when the layer or one of the two
    /// is missing.
    fn pair(&self, name: &str, keras_type: &str, arch: Arch) -> Result<[&NamedTensor; 2]> {
        let layer = self.get(name).ok_or_else(|| {
            let top = if TOP_LAYERS.contains(&name) {
                " (the top has fc1, fc2 and predictions)"
            } else {
                ""
            };
            self.err(format!(
                "layer {name} is missing: the file looks like {arch}, which has it{top}"
            ))
        })?;
        match layer.tensors.as_slice() {
            [k, b] => Ok([k, b]),
            ts => {
                let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
                let what = if ts.len() < 2 {
                    "the bias is missing"
                } else {
                    "expected only kernel and bias"
                };
                Err(self.err(format!(
                    "layer {name} has {} weight(s) [{}] but a {keras_type} has 2 (kernel, bias): {what}",
                    ts.len(),
                    names.join(", ")
                )))
            }
        }
    }

    fn check_bias(&self, layer: &str, bias: &NamedTensor, n: usize) -> Result<()> {
        if bias.tensor.dims() != [n] {
            return Err(self.err(format!(
                "layer {layer}: bias {} has shape {}, expected ({n},)",
                bias.name,
                bias.tensor.shape()
            )));
        }
        Ok(())
    }

    fn check_dense(
        &self,
        layer: &str,
        kernel: &NamedTensor,
        fin: usize,
        fout: usize,
    ) -> Result<()> {
        if kernel.tensor.dims() != [fin, fout] {
            return Err(self.err(format!(
                "layer {layer}: kernel {} has shape {}, expected ({fin}, {fout})",
                kernel.name,
                kernel.tensor.shape()
            )));
        }
        Ok(())
    }

    /// Keep only the convolutional base: an explicit choice to use a file with the top for
    /// features (Keras itself refuses to load such a file into a model without the top).
    pub fn conv_base(mut self) -> WeightSet {
        self.layers
            .retain(|l| !TOP_LAYERS.contains(&l.layer.as_str()));
        self.identity = Identity {
            include_top: false,
            fc_units: 0,
            classes: 0,
            ..self.identity
        };
        self
    }

    /// Refuse NaN and infinite weights, naming the first one found.
    fn check_finite(&self) -> Result<()> {
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
    /// A checksum of the weights' values: SHA-256 over each layer's name and each tensor's
    /// shape and little-endian f32 values, in layer order. It names the weights, not the file:
    /// the Keras .h5 and its f32 safetensors conversion agree, so a model trained on one is
    /// usable with the other, while any changed value is caught.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(1 << 16);
        for layer in &self.layers {
            h.update((layer.layer.len() as u64).to_le_bytes());
            h.update(layer.layer.as_bytes());
            for t in &layer.tensors {
                h.update((t.tensor.shape().rank() as u64).to_le_bytes());
                for &d in t.tensor.dims() {
                    h.update((d as u64).to_le_bytes());
                }
                for chunk in t.tensor.data().chunks(1 << 14) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                    h.update(&buf);
                }
            }
        }
        format!("sha256:{}", crate::digest::hex(&h.finalize()))
    }

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
