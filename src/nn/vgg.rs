//! The VGG model: the layer table of [`VggConfig`] with weights attached, run through a backend.

use std::time::Instant;

use super::arch::{DenseActivation, LayerKind, LayerSpec, VggConfig};
use super::weights::{NamedTensor, WeightSet};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, Conv2dSpec, LayerCache, Pool2dSpec, Tensor};

/// A layer and, for convolutions and dense layers, its kernel and bias.
#[derive(Clone, Debug)]
struct Layer {
    spec: LayerSpec,
    params: Option<(Tensor, Tensor)>,
    /// What the backend derived from the weights (e.g. Winograd-transformed filters).
    cache: LayerCache,
}

/// VGG16 or VGG19 with weights, ready to run.
#[derive(Clone, Debug)]
pub struct Vgg {
    config: VggConfig,
    layers: Vec<Layer>,
}

impl Vgg {
    /// Build the model of `config` from `weights`, checking that the file holds exactly this
    /// architecture: same VGG, top or not as requested, and every tensor's shape. The weights
    /// are moved into the model, not copied (VGG16's top alone is 495 MB).
    pub fn new(config: VggConfig, weights: WeightSet) -> Result<Vgg> {
        config.validate()?;
        let id = weights.identify()?;
        weights.check_finite()?;
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
            .layers
            .into_iter()
            .map(|l| (l.layer, l.tensors))
            .collect();
        let mut layers = Vec::new();
        for spec in config.layers() {
            let expected = spec.weight_shapes();
            if expected.is_empty() {
                layers.push(Layer {
                    spec,
                    params: None,
                    cache: LayerCache::default(),
                });
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
            // identify() has checked that every weighted layer has exactly a kernel and a bias.
            let mut it = tensors.into_iter().map(|t| t.tensor);
            let (Some(kernel), Some(bias)) = (it.next(), it.next()) else {
                return Err(bad(format!("layer {} lacks its kernel or bias", spec.name)));
            };
            let params = (kernel, bias);
            layers.push(Layer {
                spec,
                params: Some(params),
                cache: LayerCache::default(),
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
                    Some((
                        Tensor::from_vec(shapes[0].clone(), &k)?,
                        Tensor::from_vec(shapes[1].clone(), &b)?,
                    ))
                };
                Ok(Layer {
                    spec,
                    params,
                    cache: LayerCache::default(),
                })
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

    pub fn layer_specs(&self) -> impl Iterator<Item = &LayerSpec> {
        self.layers.iter().map(|l| &l.spec)
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
        let mut wanted = Vec::with_capacity(names.len());
        for name in names {
            let i = self
                .layers
                .iter()
                .position(|l| l.spec.name == *name)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} has no layer named '{name}'; its layers are: {}",
                        self.config.arch,
                        self.layer_names().join(", ")
                    ))
                })?;
            wanted.push(i);
        }
        self.check_input(x)?;
        let stop = wanted.iter().copied().max().unwrap_or(0);
        let trace = std::env::var_os("KEEL_TRACE").is_some();
        let mut outputs: Vec<Option<Tensor>> = vec![None; names.len()];
        let mut cur = x.clone();
        let mut i = 0;
        while i <= stop {
            let layer = &self.layers[i];
            let started = Instant::now();
            // A convolution followed by its block's max pool runs as one op when nobody asked
            // for the convolution's own output: the backend may then pool as it writes
            // (Winograd does) instead of writing the full-size output and reading it back.
            let fuse = i < stop
                && matches!(layer.spec.kind, LayerKind::Conv2d { .. })
                && matches!(self.layers[i + 1].spec.kind, LayerKind::MaxPool)
                && !wanted.contains(&i);
            let (name, kind) = if fuse {
                cur = layer.forward_with_pool(backend, cur)?;
                i += 1;
                (
                    format!("{}+pool", layer.spec.name),
                    format!("{}+MaxPool", layer.spec.keras_type()),
                )
            } else {
                cur = layer.forward(backend, cur)?;
                (layer.spec.name.clone(), layer.spec.keras_type().to_string())
            };
            if trace {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                let gflop = layer.spec.flops() as f64 * x.dims()[0] as f64 / 1e9;
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

impl Layer {
    /// This convolution, then VGG's 2x2 max pool, as one backend op.
    fn forward_with_pool(&self, be: &dyn Backend, x: Tensor) -> Result<Tensor> {
        let (k, b) = self
            .params
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("layer {} has no weights", self.spec.name)))?;
        let spec = Conv2dSpec::same_relu();
        be.conv2d_pool_cached(&x, k, Some(b), &spec, &Pool2dSpec::vgg(), &self.cache)
    }

    fn forward(&self, be: &dyn Backend, x: Tensor) -> Result<Tensor> {
        let params = || {
            self.params
                .as_ref()
                .ok_or_else(|| Error::Invalid(format!("layer {} has no weights", self.spec.name)))
        };
        match self.spec.kind {
            LayerKind::Input => Ok(x),
            LayerKind::Conv2d { .. } => {
                let (k, b) = params()?;
                be.conv2d_cached(&x, k, Some(b), &Conv2dSpec::same_relu(), &self.cache)
            }
            LayerKind::MaxPool => be.max_pool2d(&x, &Pool2dSpec::vgg()),
            LayerKind::Flatten => {
                // NHWC data is already in Keras's flatten order (H, then W, then C).
                let n = x.dims()[0];
                let per = x.numel() / n.max(1);
                x.reshape([n, per])
            }
            LayerKind::Dense { activation, .. } => {
                let (k, b) = params()?;
                let act = match activation {
                    DenseActivation::Relu => Activation::Relu,
                    DenseActivation::Linear | DenseActivation::Softmax => Activation::Linear,
                };
                let y = be.dense(&x, k, Some(b), act)?;
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
