//! The top of VGG's conv base as a trainable stack: the layers fine-tuning unfreezes.
//!
//! The forward pass for training keeps every layer's input (the tape); the backward pass walks
//! it back. A convolution's output is both the next layer's input and what its ReLU's mask is
//! read from, so one list of activations serves both: `acts[0]` is the tail's input and
//! `acts[i + 1]` layer `i`'s output. Inference fuses each block's last convolution with its
//! pool, as the frozen base does; training cannot (the pool's backward pass needs the
//! convolution's output).

use super::arch::LayerKind;
use super::param::{Param, ParamMut, map_params, push_params, push_params_mut};
use super::vgg::{Layer, run_layers};
use crate::error::{Error, Result};
use crate::tensor::{Backend, Conv2dSpec, DType, LayerParams, Pool2dSpec, Shape, Tensor, Wanted};

/// VGG's convolutions and pools from one layer to the end of the conv base, with weights.
#[derive(Clone, Debug)]
pub struct ConvTail {
    layers: Vec<Layer>,
    /// Per-sample input shape `(H, W, C)`: the output of the layer before the first.
    input: Shape,
}

/// What [`ConvTail::backward`] needs from [`ConvTail::forward_train`].
pub struct TailTape {
    acts: Vec<Tensor>,
}

impl ConvTail {
    pub(crate) fn new(layers: Vec<Layer>, input: Shape) -> Result<ConvTail> {
        if layers.is_empty() {
            return Err(Error::Invalid(
                "a trainable tail needs at least one layer".into(),
            ));
        }
        Ok(ConvTail { layers, input })
    }

    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The first trainable layer (`block5_conv1`).
    pub fn first_layer(&self) -> &str {
        &self.layers[0].spec.name
    }

    /// The last layer (`block5_pool`).
    pub fn last_layer(&self) -> &str {
        &self.layers[self.layers.len() - 1].spec.name
    }

    /// The names of the layers with weights, in order.
    pub fn weighted_layers(&self) -> Vec<&str> {
        self.layers
            .iter()
            .filter(|l| l.params.is_some())
            .map(|l| l.spec.name.as_str())
            .collect()
    }

    /// Per-sample input shape `(H, W, C)`.
    pub fn input_shape(&self) -> &[usize] {
        self.input.dims()
    }

    /// Per-sample output shape `(H, W, C)`.
    pub fn output_shape(&self) -> &[usize] {
        self.layers
            .last()
            .map_or(self.input.dims(), |l| l.spec.output.dims())
    }

    /// FLOPs of one image's forward pass.
    pub fn flops(&self) -> u64 {
        self.layers.iter().map(|l| l.spec.flops()).sum()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.dims().is_empty() || x.dims()[1..] != *self.input.dims() {
            return Err(Error::Shape(format!(
                "the layers from {} take a batch of {} activations, got {}",
                self.first_layer(),
                self.input,
                x.shape()
            )));
        }
        Ok(())
    }

    /// The tail's output for a batch of its input (on the backend's device).
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let last = self.layers.len() - 1;
        Ok(run_layers(&self.layers, be, be.upload(x.clone())?, &[last])?.remove(0))
    }

    /// The output, and the tape for [`ConvTail::backward`]. Takes the batch by value: the tape
    /// keeps it (the first layer's kernel gradient reads it).
    pub fn forward_train(&self, be: &dyn Backend, x: Tensor) -> Result<(Tensor, TailTape)> {
        self.check_input(&x)?;
        let mut acts = vec![be.upload(x)?];
        for layer in &self.layers {
            let x = acts.last().expect("starts with the input");
            let y = match layer.spec.kind {
                LayerKind::Conv2d { .. } => {
                    be.conv2d(x, layer.weights()?, &Conv2dSpec::same_relu())?
                }
                LayerKind::MaxPool => be.max_pool2d(x, &Pool2dSpec::vgg())?,
                _ => {
                    return Err(Error::Invalid(format!(
                        "layer {} cannot be trained",
                        layer.spec.name
                    )));
                }
            };
            acts.push(y);
        }
        let out = acts.last().expect("one output per layer").clone();
        Ok((out, TailTape { acts }))
    }

    /// The gradients of every parameter (in [`ConvTail::params`] order) given `dy`, the
    /// gradient with respect to the output, and with `want_input` the gradient with respect to
    /// the input (for saliency maps; fine-tuning does not need it).
    pub fn backward(
        &self,
        be: &dyn Backend,
        tape: &TailTape,
        dy: &Tensor,
        want_input: bool,
    ) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        if tape.acts.len() != self.layers.len() + 1 {
            return Err(Error::Invalid(
                "the tail's backward pass needs the tape of its training forward pass".into(),
            ));
        }
        let mut grads: Vec<Vec<Tensor>> = vec![Vec::new(); self.layers.len()];
        let mut dy = dy.clone();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let (x, y) = (&tape.acts[i], &tape.acts[i + 1]);
            let need_dx = want_input || i > 0;
            let dx = match layer.spec.kind {
                LayerKind::Conv2d { .. } => {
                    let wanted = Wanted {
                        input: need_dx,
                        params: true,
                    };
                    let spec = Conv2dSpec::same_relu();
                    let g = be.conv2d_backward(x, y, &dy, layer.weights()?, &spec, wanted)?;
                    grads[i] = g.kernel.into_iter().chain(g.bias).collect();
                    g.input
                }
                LayerKind::MaxPool if need_dx => {
                    Some(be.max_pool2d_backward(x, &dy, &Pool2dSpec::vgg())?)
                }
                LayerKind::MaxPool => None,
                _ => {
                    return Err(Error::Invalid(format!(
                        "layer {} cannot be trained",
                        layer.spec.name
                    )));
                }
            };
            match dx {
                Some(d) => dy = d,
                None => break,
            }
        }
        Ok((
            grads.into_iter().flatten().collect(),
            want_input.then_some(dy),
        ))
    }

    /// The parameters in order: `block5_conv1.kernel`, `block5_conv1.bias`, ...
    pub fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        for l in &self.layers {
            if let Some(p) = &l.params {
                push_params(&l.spec.name, p, &mut out);
            }
        }
        out
    }

    /// The parameters in [`ConvTail::params`]'s order, to update (their caches emptied).
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            if let Some(p) = &mut l.params {
                push_params_mut(p, &mut out);
            }
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.tensor.numel()).sum()
    }

    /// The same tail with `params` (named and ordered as [`ConvTail::params`]) as its weights,
    /// checked for names and shapes.
    pub fn with_params(&self, params: Vec<(String, Tensor)>) -> Result<ConvTail> {
        let want = self.params();
        if params.len() != want.len() {
            return Err(Error::Invalid(format!(
                "the layers from {} have {} parameters, {} were given",
                self.first_layer(),
                want.len(),
                params.len()
            )));
        }
        for ((name, t), w) in params.iter().zip(&want) {
            if *name != w.name || t.shape() != w.tensor.shape() {
                return Err(Error::Invalid(format!(
                    "expected {} of shape {}, found {name} of shape {}",
                    w.name,
                    w.tensor.shape(),
                    t.shape()
                )));
            }
        }
        let mut it = params.into_iter().map(|(_, t)| t);
        let mut out = self.clone();
        for l in &mut out.layers {
            if l.params.is_some() {
                let (Some(k), Some(b)) = (it.next(), it.next()) else {
                    unreachable!("counted above")
                };
                l.params = Some(LayerParams::new(k, Some(b)));
            }
        }
        Ok(out)
    }

    /// The same tail with its weights as `dtype` (the gradient checks run in f64).
    pub fn cast(&self, dtype: DType) -> Result<ConvTail> {
        self.with_params(map_params(self.params(), |t| t.cast(dtype))?)
    }

    /// The tail with its weights on `backend`'s device.
    pub fn upload(&self, backend: &dyn Backend) -> Result<ConvTail> {
        self.with_params(map_params(self.params(), |t| backend.upload(t.clone()))?)
    }
}
