//! The VGG model: the layer table of [`VggConfig`] with weights attached, run through a backend.

use std::time::Instant;

use super::arch::{DenseActivation, LayerKind, LayerSpec, VggConfig};
use super::tail::ConvTail;
use super::weights::{NamedTensor, WeightSet};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, Conv2dSpec, LayerParams, Pool2dSpec, Tensor};

/// A layer and, for convolutions and dense layers, its kernel and bias (with the backend's
/// cache of what it derives from them).
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub(crate) spec: LayerSpec,
    pub(crate) params: Option<LayerParams>,
}

/// VGG16 or VGG19 with weights, ready to run.
#[derive(Clone, Debug)]
pub struct Vgg {
    config: VggConfig,
    layers: Vec<Layer>,
}

impl Vgg {
    /// Build the model of `config` from `weights`, checking that the file holds exactly this
    /// architecture: same VGG, top or not as requested, and the input size fc1 was made for.
    /// The weights are moved into the model, not copied (VGG16's top alone is 495 MB); their
    /// shapes and values were checked when the set was made.
    pub fn new(config: VggConfig, weights: WeightSet) -> Result<Vgg> {
        config.validate()?;
        let id = weights.identity().clone();
        let source = weights.source.clone();
        let bad = |problem: String| Error::file(&source, problem);
        if id.arch != config.arch {
            return Err(bad(format!(
                "holds {} weights, but the model is {}",
                id.arch, config.arch
            )));
        }
        if id.include_top && !config.include_top {
            return Err(bad(format!(
                "holds {} with its top (fc1, fc2, predictions), but the model was built without \
                 the top; use the conv base of the file explicitly or the file without the top",
                id.arch
            )));
        }
        if !id.include_top && config.include_top {
            return Err(bad(format!(
                "holds only the {} conv base (no fc1, fc2, predictions), but the model needs \
                 the top: use the Keras file with the top (keel fetch {} --top)",
                id.arch,
                id.arch.name()
            )));
        }
        let mut by_name: std::collections::HashMap<String, Vec<NamedTensor>> = weights
            .into_layers()
            .into_iter()
            .map(|l| (l.layer, l.tensors))
            .collect();
        let mut layers = Vec::new();
        for spec in config.layers() {
            let expected = spec.weight_shapes();
            if expected.is_empty() {
                layers.push(Layer { spec, params: None });
                continue;
            }
            let tensors = by_name
                .remove(&spec.name)
                .ok_or_else(|| bad(format!("layer {} is missing", spec.name)))?;
            for (t, want) in tensors.iter().zip(&expected) {
                if t.tensor.shape() != want {
                    let mut problem = format!(
                        "layer {}: weight {} has shape {} but {} expects {want}",
                        spec.name,
                        t.name,
                        t.tensor.shape(),
                        config.arch
                    );
                    if spec.name == "fc1" {
                        let [h, w] = config.input;
                        problem += &format!(
                            " (input {h}x{w} flattens to {} values; fc1 is tied to one input size)",
                            want.dims()[0]
                        );
                    }
                    return Err(bad(problem));
                }
            }
            // The set has checked that every weighted layer has exactly a kernel and a bias.
            let mut it = tensors.into_iter().map(|t| t.tensor);
            let (Some(kernel), Some(bias)) = (it.next(), it.next()) else {
                return Err(bad(format!("layer {} lacks its kernel or bias", spec.name)));
            };
            layers.push(Layer {
                spec,
                params: Some(LayerParams::new(kernel, Some(bias))),
            });
        }
        Ok(Vgg { config, layers })
    }

    /// The model with seeded random weights (He-normal kernels, small biases): for benchmarks
    /// and checks that need no weight file.
    pub fn random(config: VggConfig, seed: u64) -> Result<Vgg> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let layers = config
            .layers()
            .into_iter()
            .map(|spec| {
                let shapes = spec.weight_shapes();
                let params = if shapes.is_empty() {
                    None
                } else {
                    let fan_in = shapes[0].dims()[..shapes[0].rank() - 1]
                        .iter()
                        .product::<usize>();
                    let std = (2.0 / fan_in as f32).sqrt();
                    let k: Vec<f32> = (0..shapes[0].numel()).map(|_| rng.normal() * std).collect();
                    let b = rng.uniform_vec(shapes[1].numel(), -0.1, 0.1);
                    Some(LayerParams::new(
                        Tensor::from_vec(shapes[0].clone(), &k)?,
                        Some(Tensor::from_vec(shapes[1].clone(), &b)?),
                    ))
                };
                Ok(Layer { spec, params })
            })
            .collect::<Result<_>>()?;
        Ok(Vgg { config, layers })
    }

    pub fn config(&self) -> &VggConfig {
        &self.config
    }

    /// Layer names in order, as Keras names them.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.spec.name.as_str()).collect()
    }

    /// Each layer with its weights (convolutions and dense layers), in model order.
    pub fn layers_with_weights(&self) -> impl Iterator<Item = (&LayerSpec, Option<&LayerParams>)> {
        self.layers.iter().map(|l| (&l.spec, l.params.as_ref()))
    }

    pub fn layer_specs(&self) -> impl Iterator<Item = &LayerSpec> {
        self.layers.iter().map(|l| &l.spec)
    }

    /// The index of the layer named `name`, or an error listing the layers there are.
    pub fn layer_index(&self, name: &str) -> Result<usize> {
        self.layers
            .iter()
            .position(|l| l.spec.name == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{} has no layer named '{name}'; its layers are: {}",
                    self.config.arch,
                    self.layer_names().join(", ")
                ))
            })
    }

    /// A copy of the convolutions and pools from layer `from` to the end of the conv base,
    /// to train (fine-tuning) or to run on stored activations of the layer before.
    pub fn tail(&self, from: &str) -> Result<ConvTail> {
        let i = self.layer_index(from)?;
        if i == 0 {
            return Err(Error::Invalid(format!(
                "{from} is the input layer; the trainable part starts at a convolution"
            )));
        }
        let end = self
            .layers
            .iter()
            .position(|l| {
                !matches!(
                    l.spec.kind,
                    LayerKind::Input | LayerKind::Conv2d { .. } | LayerKind::MaxPool
                )
            })
            .unwrap_or(self.layers.len());
        if i >= end {
            return Err(Error::Invalid(format!(
                "{from} is not in the conv base; only convolutions and pools can be fine-tuned"
            )));
        }
        ConvTail::new(
            self.layers[i..end].to_vec(),
            self.layers[i - 1].spec.output.clone(),
        )
    }

    /// This model with `tail`'s weights in place of its own layers of the same names.
    pub fn with_tail(mut self, tail: &ConvTail) -> Result<Vgg> {
        for t in tail.layers() {
            let i = self.layer_index(&t.spec.name)?;
            if self.layers[i].spec != t.spec {
                return Err(Error::Invalid(format!(
                    "layer {} of the fine-tuned weights does not match the model's ({:?} vs {:?})",
                    t.spec.name, t.spec.kind, self.layers[i].spec.kind
                )));
            }
            self.layers[i].params = t.params.clone();
        }
        Ok(self)
    }

    /// The same model (weights shared by value) for `input`-sized images; only without the top,
    /// whose fc1 is tied to one size.
    pub fn with_input(&self, input: [usize; 2]) -> Result<Vgg> {
        if self.config.include_top && input != self.config.input {
            return Err(Error::Invalid(format!(
                "with the top, {} takes {}x{} inputs only",
                self.config.arch, self.config.input[0], self.config.input[1]
            )));
        }
        let config = VggConfig {
            input,
            ..self.config.clone()
        };
        config.validate()?;
        let layers = config
            .layers()
            .into_iter()
            .zip(&self.layers)
            .map(|(spec, l)| Layer {
                spec,
                params: l.params.clone(),
            })
            .collect();
        Ok(Vgg { config, layers })
    }

    /// The model's output for an NHWC batch `(N, H, W, 3)` of preprocessed images.
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let last = self
            .layers
            .last()
            .map(|l| l.spec.name.clone())
            .unwrap_or_default();
        let mut out = self.forward_outputs(backend, x, &[last.as_str()])?;
        Ok(out.remove(0))
    }

    /// The outputs of the named layers, in the order asked, from one pass that stops after the
    /// last of them.
    pub fn forward_outputs(
        &self,
        backend: &dyn Backend,
        x: &Tensor,
        names: &[&str],
    ) -> Result<Vec<Tensor>> {
        let wanted = names
            .iter()
            .map(|n| self.layer_index(n))
            .collect::<Result<Vec<_>>>()?;
        self.check_input(x)?;
        let x = backend.upload(x.clone())?;
        run_layers(&self.layers, backend, x, &wanted)
    }

    /// The whole model's output, calling `after(op)` as each op has been issued (a fused
    /// convolution and pool is one op, `block1_conv2+pool`): on a GPU, where ops run
    /// asynchronously, that is where a timing event goes.
    pub fn forward_observed(
        &self,
        backend: &dyn Backend,
        x: &Tensor,
        after: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let x = backend.upload(x.clone())?;
        let last = self.layers.len().saturating_sub(1);
        Ok(run_layers_observed(&self.layers, backend, x, &[last], after)?.remove(0))
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let [_, h, w, c] = x.shape().nhwc("VGG input")?;
        if c != 3 {
            return Err(Error::Shape(format!(
                "VGG input must have 3 channels (BGR), got {}",
                x.shape()
            )));
        }
        if self.config.include_top && [h, w] != self.config.input {
            let [eh, ew] = self.config.input;
            return Err(Error::Shape(format!(
                "with the top, {} takes {eh}x{ew} inputs only, got {h}x{w}",
                self.config.arch
            )));
        }
        let min = super::arch::MIN_INPUT;
        if h < min || w < min {
            return Err(Error::Shape(format!(
                "input {h}x{w} is too small: {} needs at least {min}x{min}",
                self.config.arch
            )));
        }
        Ok(())
    }
}

/// Run `layers` on `x` (already on the backend's device) up to the last of `wanted`
/// (indices into `layers`), and return the outputs of `wanted` in order.
pub(crate) fn run_layers(
    layers: &[Layer],
    backend: &dyn Backend,
    x: Tensor,
    wanted: &[usize],
) -> Result<Vec<Tensor>> {
    run_layers_observed(layers, backend, x, wanted, &mut |_| Ok(()))
}

/// [`run_layers`], calling `after` with each op's name once it is issued.
fn run_layers_observed(
    layers: &[Layer],
    backend: &dyn Backend,
    x: Tensor,
    wanted: &[usize],
    after: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Vec<Tensor>> {
    let stop = wanted.iter().copied().max().unwrap_or(0);
    let trace = std::env::var_os("KEEL_TRACE").is_some();
    let batch = x.dims().first().copied().unwrap_or(1);
    let mut outputs: Vec<Option<Tensor>> = vec![None; wanted.len()];
    let mut cur = x;
    let mut i = 0;
    while i <= stop {
        let layer = &layers[i];
        let started = Instant::now();
        // A convolution followed by its block's max pool runs as one op when nobody asked
        // for the convolution's own output: the backend may then pool as it writes
        // (Winograd does) instead of writing the full-size output and reading it back.
        let fuse = i < stop
            && matches!(layer.spec.kind, LayerKind::Conv2d { .. })
            && matches!(layers[i + 1].spec.kind, LayerKind::MaxPool)
            && !wanted.contains(&i);
        let (name, kind) = if fuse {
            cur = backend.conv2d_pool(
                &cur,
                layer.weights()?,
                &Conv2dSpec::same_relu(),
                &Pool2dSpec::vgg(),
            )?;
            i += 1;
            (
                format!("{}+pool", layer.spec.name),
                format!("{}+MaxPool", layer.spec.keras_type()),
            )
        } else {
            cur = layer.forward(backend, cur)?;
            (layer.spec.name.clone(), layer.spec.keras_type().to_string())
        };
        after(&name)?;
        if trace {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let gflop = layer.spec.flops() as f64 * batch as f64 / 1e9;
            eprintln!(
                "[trace] {name:<19} {kind:<22} {:<10} {:<20} {gflop:>7.3} GFLOP {ms:>9.2} ms {:>7.1} GFLOP/s",
                backend.name(),
                cur.shape().to_string(),
                gflop / (ms / 1e3).max(1e-12)
            );
        }
        for (slot, _) in wanted.iter().enumerate().filter(|&(_, &w)| w == i) {
            outputs[slot] = Some(cur.clone());
        }
        i += 1;
    }
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every wanted layer is at or before `stop`"))
        .collect())
}

impl Layer {
    pub(crate) fn weights(&self) -> Result<&LayerParams> {
        self.params
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("layer {} has no weights", self.spec.name)))
    }

    pub(crate) fn forward(&self, be: &dyn Backend, x: Tensor) -> Result<Tensor> {
        match self.spec.kind {
            LayerKind::Input => Ok(x),
            LayerKind::Conv2d { .. } => be.conv2d(&x, self.weights()?, &Conv2dSpec::same_relu()),
            LayerKind::MaxPool => be.max_pool2d(&x, &Pool2dSpec::vgg()),
            LayerKind::Flatten => {
                // NHWC data is already in Keras's flatten order (H, then W, then C).
                let n = x.dims()[0];
                let per = x.numel() / n.max(1);
                x.reshape([n, per])
            }
            LayerKind::Dense { activation, .. } => {
                let act = match activation {
                    DenseActivation::Relu => Activation::Relu,
                    DenseActivation::Linear | DenseActivation::Softmax => Activation::Linear,
                };
                let y = be.dense(&x, self.weights()?, act)?;
                if activation == DenseActivation::Softmax {
                    be.softmax(&y)
                } else {
                    Ok(y)
                }
            }
            LayerKind::GlobalPool(kind) => be.global_pool(&x, kind),
        }
    }
}
