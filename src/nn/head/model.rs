//! A head: the layers of a [`HeadSpec`] with their parameters, run forward and backward
//! through a [`Backend`], so it trains on whichever device the base runs on. Kernels are in
//! Keras's `(in, out)` layout.

use super::spec::{HeadLayer, HeadSpec};
use crate::error::{Error, Result};
use crate::nn::param::{Param, ParamMut, map_params, push_params, push_params_mut};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, DType, GlobalPool, LayerParams, Shape, Tensor, Wanted};

/// Training draws dropout masks from the generator; evaluation runs every unit.
pub enum Mode<'a> {
    Train(&'a mut Rng),
    Eval,
}

/// What one layer's backward pass needs from its forward pass.
enum Saved {
    /// The layer's input (global pooling).
    Input(Tensor),
    /// Dense: its input and output.
    InOut(Tensor, Tensor),
    /// The layer's output (ReLU's mask).
    Output(Tensor),
    /// Dropout's mask.
    Mask(Tensor),
    /// Only the input's shape (flatten, dropout in evaluation).
    Shape(Shape),
}

/// The forward pass's record for [`Head::backward`].
pub struct HeadTape {
    saved: Vec<Saved>,
}

/// A classifier head on top of the base's features.
#[derive(Clone, Debug)]
pub struct Head {
    spec: HeadSpec,
    input: Vec<usize>,
    /// Per-sample output shape of each layer.
    shapes: Vec<Vec<usize>>,
    /// Each layer's weights (dense layers only), named `dense1`, `dense2`, ...
    weights: Vec<Option<(String, LayerParams)>>,
}

impl Head {
    /// A head with Keras's initialisation: Glorot-uniform kernels and zero biases, seeded.
    pub fn new(spec: HeadSpec, input: &[usize], seed: u64) -> Result<Self> {
        let shapes = spec.shapes(input)?;
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        let mut n_in: usize = input.iter().product();
        for (layer, shape) in spec.layers.iter().zip(&shapes) {
            if let HeadLayer::Dense(n_out) = *layer {
                let name = format!("dense{}", params.len() / 2 + 1);
                let limit = (6.0 / (n_in + n_out) as f64).sqrt();
                let kernel: Vec<f32> = (0..n_in * n_out)
                    .map(|_| ((rng.next_f32() as f64 * 2.0 - 1.0) * limit) as f32)
                    .collect();
                params.push((
                    format!("{name}.kernel"),
                    Tensor::from_vec([n_in, n_out], &kernel)?,
                ));
                params.push((format!("{name}.bias"), Tensor::zeros([n_out])?));
            }
            n_in = shape.iter().product();
        }
        Self::from_params(spec, input, params)
    }

    /// A head from named parameters (`dense1.kernel`, `dense1.bias`, ... in order), checking
    /// their names, shapes and dtypes against the spec.
    pub fn from_params(
        spec: HeadSpec,
        input: &[usize],
        params: Vec<(String, Tensor)>,
    ) -> Result<Self> {
        let shapes = spec.shapes(input)?;
        let count = params.len();
        let mut it = params.into_iter();
        let mut weights = Vec::with_capacity(spec.layers.len());
        let mut dense = 0;
        let mut n_in: usize = input.iter().product();
        let mut dtype = None;
        for (layer, shape) in spec.layers.iter().zip(&shapes) {
            if let HeadLayer::Dense(n_out) = *layer {
                dense += 1;
                let name = format!("dense{dense}");
                let mut take = |suffix: &str, want: Vec<usize>| -> Result<Tensor> {
                    let (got, t) = it.next().ok_or_else(|| {
                        Error::Invalid(format!("head {spec}: parameter {name}.{suffix} is missing"))
                    })?;
                    if got != format!("{name}.{suffix}") || t.dims() != want.as_slice() {
                        return Err(Error::Invalid(format!(
                            "head {spec}: expected {name}.{suffix} of shape {}, found {got} of \
                             shape {}",
                            Shape::new(want),
                            t.shape()
                        )));
                    }
                    if *dtype.get_or_insert(t.dtype()) != t.dtype() {
                        return Err(Error::Invalid(format!(
                            "head {spec}: {got} is {}, the other parameters {}",
                            t.dtype(),
                            dtype.unwrap_or_default()
                        )));
                    }
                    Ok(t)
                };
                let kernel = take("kernel", vec![n_in, n_out])?;
                let bias = take("bias", vec![n_out])?;
                weights.push(Some((name, LayerParams::new(kernel, Some(bias)))));
            } else {
                weights.push(None);
            }
            n_in = shape.iter().product();
        }
        if it.next().is_some() {
            return Err(Error::Invalid(format!(
                "head {spec}: {count} parameters given, the spec has {}",
                2 * dense
            )));
        }
        Ok(Head {
            spec,
            input: input.to_vec(),
            shapes,
            weights,
        })
    }

    /// Each layer of the spec with its weights and their name (`dense1`, ...; dense layers
    /// only), in order.
    pub fn layers_with_weights(
        &self,
    ) -> impl Iterator<Item = (HeadLayer, Option<(&str, &LayerParams)>)> {
        self.spec
            .layers
            .iter()
            .zip(&self.weights)
            .map(|(l, w)| (*l, w.as_ref().map(|(n, p)| (n.as_str(), p))))
    }

    pub fn spec(&self) -> &HeadSpec {
        &self.spec
    }

    /// The per-sample input shape (the base's output).
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    pub fn classes(&self) -> usize {
        self.shapes.last().map_or(0, |s| s[0])
    }

    /// The parameters in order: `dense1.kernel`, `dense1.bias`, `dense2.kernel`, ...
    pub fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        for (name, p) in self.weights.iter().flatten() {
            push_params(name, p, &mut out);
        }
        out
    }

    /// The parameters in [`Head::params`]'s order, to update.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for (_, p) in self.weights.iter_mut().flatten() {
            push_params_mut(p, &mut out);
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.tensor.numel()).sum()
    }

    /// The same head with its parameters as `dtype` (the gradient checks run in f64).
    pub fn cast(&self, dtype: DType) -> Result<Head> {
        self.map(|t| t.cast(dtype))
    }

    /// The head with its parameters on `backend`'s device.
    pub fn upload(&self, backend: &dyn Backend) -> Result<Head> {
        self.map(|t| backend.upload(t.clone()))
    }

    /// The head with its parameters in host memory (to save it).
    pub fn to_host(&self, backend: &dyn Backend) -> Result<Head> {
        self.map(|t| backend.to_host(t.clone()))
    }

    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Head> {
        Head::from_params(
            self.spec.clone(),
            &self.input,
            map_params(self.params(), f)?,
        )
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.dims().is_empty() || x.dims()[1..] != self.input[..] {
            return Err(Error::Shape(format!(
                "the head takes a batch of {} features, got {}",
                Shape::new(self.input.clone()),
                x.shape()
            )));
        }
        Ok(())
    }

    /// Logits `(N, classes)` for a batch `(N, ...input shape)`, and the tape the backward pass
    /// needs (empty in evaluation).
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        mut mode: Mode,
    ) -> Result<(Tensor, HeadTape)> {
        self.check_input(x)?;
        let train = matches!(mode, Mode::Train(_));
        let mut saved = Vec::new();
        let mut cur = x.clone();
        for (layer, w) in self.spec.layers.iter().zip(&self.weights) {
            let shape = cur.shape().clone();
            let (next, keep) = match *layer {
                HeadLayer::GlobalAvgPool => {
                    let y = be.global_pool(&cur, GlobalPool::Avg)?;
                    (y, Saved::Input(cur))
                }
                HeadLayer::GlobalMaxPool => {
                    let y = be.global_pool(&cur, GlobalPool::Max)?;
                    (y, Saved::Input(cur))
                }
                HeadLayer::Flatten => {
                    let n = shape.dims()[0];
                    let per = cur.numel() / n.max(1);
                    (cur.reshape([n, per])?, Saved::Shape(shape))
                }
                HeadLayer::Dense(_) => {
                    let (_, p) = w.as_ref().expect("dense layers have weights");
                    let y = be.dense(&cur, p, Activation::Linear)?;
                    let keep = if train {
                        Saved::InOut(cur, y.clone())
                    } else {
                        Saved::Shape(shape)
                    };
                    (y, keep)
                }
                HeadLayer::Relu => {
                    let y = be.relu(&cur)?;
                    if train {
                        (y.clone(), Saved::Output(y))
                    } else {
                        (y, Saved::Shape(shape))
                    }
                }
                HeadLayer::Dropout(rate) => match &mut mode {
                    Mode::Train(rng) if rate > 0.0 => {
                        let mask = be.upload(dropout_mask(&shape, cur.dtype(), rate, rng)?)?;
                        (be.mul(&cur, &mask)?, Saved::Mask(mask))
                    }
                    _ => (cur, Saved::Shape(shape)),
                },
            };
            cur = next;
            if train {
                saved.push(keep);
            }
        }
        Ok((cur, HeadTape { saved }))
    }

    /// Logits without dropout for host features, in host memory, 256 rows at a time so
    /// memory stays bounded on large sets.
    pub fn logits(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let n = x.dims()[0];
        let mut parts = Vec::new();
        for start in (0..n).step_by(256) {
            let rows = be.upload(x.rows(start, 256.min(n - start))?)?;
            parts.push(be.to_host(self.forward(be, &rows, Mode::Eval)?.0)?);
        }
        concat_rows(&parts, self.classes(), x.dtype())
    }

    /// The gradient of every parameter (in [`Head::params`] order) given the gradient of the
    /// loss with respect to the logits, and with `want_input` the gradient with respect to the
    /// head's input (what a trainable base below it, or Grad-CAM, needs).
    pub fn backward(
        &self,
        be: &dyn Backend,
        tape: &HeadTape,
        dlogits: &Tensor,
        want_input: bool,
    ) -> Result<(Vec<Tensor>, Option<Tensor>)> {
        if tape.saved.len() != self.spec.layers.len() {
            return Err(Error::Invalid(
                "the head's backward pass needs the tape of a training forward pass".into(),
            ));
        }
        let mut grads: Vec<Vec<Tensor>> = vec![Vec::new(); self.spec.layers.len()];
        let mut dy = dlogits.clone();
        for i in (0..self.spec.layers.len()).rev() {
            let need_dx = want_input || i > 0;
            let next = match (&self.spec.layers[i], &tape.saved[i]) {
                (HeadLayer::Dense(_), Saved::InOut(x, y)) => {
                    let (_, p) = self.weights[i].as_ref().expect("dense layers have weights");
                    let wanted = Wanted {
                        input: need_dx,
                        params: true,
                    };
                    let g = be.dense_backward(x, y, &dy, p, Activation::Linear, wanted)?;
                    grads[i] = g.kernel.into_iter().chain(g.bias).collect();
                    g.input
                }
                _ if !need_dx => None,
                (HeadLayer::GlobalAvgPool, Saved::Input(x)) => {
                    Some(be.global_pool_backward(x, &dy, GlobalPool::Avg)?)
                }
                (HeadLayer::GlobalMaxPool, Saved::Input(x)) => {
                    Some(be.global_pool_backward(x, &dy, GlobalPool::Max)?)
                }
                (HeadLayer::Flatten, Saved::Shape(s)) => Some(dy.clone().reshape(s.clone())?),
                (HeadLayer::Relu, Saved::Output(y)) => Some(be.relu_backward(y, &dy)?),
                (HeadLayer::Dropout(_), Saved::Mask(m)) => Some(be.mul(&dy, m)?),
                (HeadLayer::Dropout(_), Saved::Shape(_)) => Some(dy.clone()),
                (layer, _) => {
                    return Err(Error::Invalid(format!(
                        "the head's tape does not match its layer {layer}"
                    )));
                }
            };
            match next {
                Some(d) => dy = d,
                None => break,
            }
        }
        let dx = want_input.then_some(dy);
        Ok((grads.into_iter().flatten().collect(), dx))
    }
}

/// An inverted-dropout mask, as Keras's `Dropout`: each value is kept with probability
/// `1 - rate` and scaled by `1 / (1 - rate)`, so inference needs no rescaling. Drawn on the
/// host from keel's generator, so a seeded run is the same on every device.
pub fn dropout_mask(shape: &Shape, dtype: DType, rate: f64, rng: &mut Rng) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - rate);
    let values: Vec<f64> = (0..shape.numel())
        .map(|_| {
            if (rng.next_f32() as f64) < rate {
                0.0
            } else {
                keep
            }
        })
        .collect();
    Tensor::from_values(shape.clone(), &values)?.cast(dtype)
}

/// Stack `(n_i, width)` host tensors into one `(sum n_i, width)` tensor.
pub fn concat_rows(parts: &[Tensor], width: usize, dtype: DType) -> Result<Tensor> {
    let n: usize = parts.iter().map(|p| p.dims()[0]).sum();
    let mut out = Tensor::zeros_of([n, width], dtype)?;
    let mut at = 0;
    for p in parts {
        let len = p.numel();
        match dtype {
            DType::F64 => out.values_mut::<f64>()?[at..at + len].copy_from_slice(p.values()?),
            _ => out.values_mut::<f32>()?[at..at + len].copy_from_slice(p.values()?),
        }
        at += len;
    }
    Ok(out)
}
