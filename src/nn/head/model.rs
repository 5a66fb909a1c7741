//! A head: the layers of a [`HeadSpec`] with their parameters, run forward and backward.

use super::ops;
use super::real::Real;
use super::spec::{HeadLayer, HeadSpec};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A trainable tensor. Kernels are in Keras's `(in, out)` layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Param<T> {
    /// `dense1.kernel`, `dense1.bias`, ...
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<T>,
    /// Whether weight decay and L2 apply (kernels yes, biases no, as Keras's regularizers).
    pub decay: bool,
}

/// Training draws dropout masks from the generator; evaluation runs every unit.
pub enum Mode<'a> {
    Train(&'a mut Rng),
    Eval,
}

/// What the backward pass needs from the forward pass: each layer's input, and the dropout
/// mask or max-pool winners.
pub struct Tape<T> {
    inputs: Vec<Vec<T>>,
    aux: Vec<Aux<T>>,
}

enum Aux<T> {
    None,
    Mask(Vec<T>),
    Winners(Vec<usize>),
}

/// A classifier head on top of the frozen base's features.
#[derive(Clone, Debug, PartialEq)]
pub struct Head<T> {
    spec: HeadSpec,
    input: Vec<usize>,
    /// Per-sample output shape of each layer.
    shapes: Vec<Vec<usize>>,
    params: Vec<Param<T>>,
    /// For each layer, the index of its kernel in `params` (its bias follows).
    param_of: Vec<Option<usize>>,
}

impl<T: Real> Head<T> {
    /// A head with Keras's initialisation: Glorot-uniform kernels and zero biases, seeded.
    pub fn new(spec: HeadSpec, input: &[usize], seed: u64) -> Result<Self> {
        let shapes = spec.shapes(input)?;
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        let mut n_in = 0;
        for (layer, shape) in spec.layers.iter().zip(&shapes) {
            if let HeadLayer::Dense(n_out) = *layer {
                let name = format!("dense{}", params.len() / 2 + 1);
                let limit = (6.0 / (n_in + n_out) as f64).sqrt();
                let kernel = (0..n_in * n_out)
                    .map(|_| T::from_f64((rng.next_f32() as f64 * 2.0 - 1.0) * limit))
                    .collect();
                params.push(Param {
                    name: format!("{name}.kernel"),
                    shape: vec![n_in, n_out],
                    data: kernel,
                    decay: true,
                });
                params.push(Param {
                    name: format!("{name}.bias"),
                    shape: vec![n_out],
                    data: vec![T::ZERO; n_out],
                    decay: false,
                });
            }
            n_in = shape.iter().product();
        }
        Self::from_params(spec, input, params)
    }

    /// A head from saved parameters, checking their names and shapes against the spec.
    pub fn from_params(spec: HeadSpec, input: &[usize], params: Vec<Param<T>>) -> Result<Self> {
        let shapes = spec.shapes(input)?;
        let mut param_of = Vec::with_capacity(spec.layers.len());
        let mut next = 0;
        let mut n_in: usize = input.iter().product();
        for (layer, shape) in spec.layers.iter().zip(&shapes) {
            if let HeadLayer::Dense(n_out) = *layer {
                let name = format!("dense{}", next / 2 + 1);
                for (k, (suffix, want)) in [("kernel", vec![n_in, n_out]), ("bias", vec![n_out])]
                    .into_iter()
                    .enumerate()
                {
                    let p = params.get(next + k).ok_or_else(|| {
                        Error::Invalid(format!("head {spec}: parameter {name}.{suffix} is missing"))
                    })?;
                    if p.name != format!("{name}.{suffix}") || p.shape != want {
                        return Err(Error::Invalid(format!(
                            "head {spec}: expected {name}.{suffix} of shape {want:?}, found {} \
                             of shape {:?}",
                            p.name, p.shape
                        )));
                    }
                    if p.data.len() != want.iter().product::<usize>() {
                        return Err(Error::Invalid(format!(
                            "head {spec}: {} holds {} values for shape {want:?}",
                            p.name,
                            p.data.len()
                        )));
                    }
                }
                param_of.push(Some(next));
                next += 2;
            } else {
                param_of.push(None);
            }
            n_in = shape.iter().product();
        }
        if next != params.len() {
            return Err(Error::Invalid(format!(
                "head {spec}: {} parameters given, the spec has {next}",
                params.len()
            )));
        }
        Ok(Head {
            spec,
            input: input.to_vec(),
            shapes,
            params,
            param_of,
        })
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

    pub fn params(&self) -> &[Param<T>] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Param<T>] {
        &mut self.params
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    /// The same head in another precision (the gradient checks run an f32 head in f64).
    pub fn cast<U: Real>(&self) -> Head<U> {
        Head {
            spec: self.spec.clone(),
            input: self.input.clone(),
            shapes: self.shapes.clone(),
            params: self
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    data: p.data.iter().map(|v| U::from_f64(v.to_f64())).collect(),
                    decay: p.decay,
                })
                .collect(),
            param_of: self.param_of.clone(),
        }
    }

    /// Logits for a batch of flat features (`batch * input_len` values), and the tape the
    /// backward pass needs.
    pub fn forward(&self, x: &[T], mut mode: Mode) -> Result<(Vec<T>, Tape<T>)> {
        let n = self.input_len();
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(Error::Shape(format!(
                "head input has {} values, not a multiple of the feature size {n} ({:?})",
                x.len(),
                self.input
            )));
        }
        let train = matches!(mode, Mode::Train(_));
        let mut tape = Tape {
            inputs: Vec::new(),
            aux: Vec::new(),
        };
        let mut cur = x.to_vec();
        let mut shape = self.input.clone();
        for (i, layer) in self.spec.layers.iter().enumerate() {
            let (next, aux) = match *layer {
                HeadLayer::GlobalAvgPool => (
                    ops::global_avg_pool_forward(&cur, shape[0] * shape[1], shape[2]),
                    Aux::None,
                ),
                HeadLayer::GlobalMaxPool => {
                    let (y, arg) =
                        ops::global_max_pool_forward(&cur, shape[0] * shape[1], shape[2]);
                    (y, Aux::Winners(arg))
                }
                // Flatten is a no-op on NHWC rows; its backward needs no input.
                HeadLayer::Flatten => (std::mem::take(&mut cur), Aux::None),
                HeadLayer::Relu => (ops::relu_forward(&cur), Aux::None),
                HeadLayer::Dropout(rate) => match &mut mode {
                    Mode::Train(rng) if rate > 0.0 => {
                        let mask = ops::dropout_mask(cur.len(), rate, rng);
                        (ops::mul_mask(&cur, &mask), Aux::Mask(mask))
                    }
                    _ => (std::mem::take(&mut cur), Aux::None),
                },
                HeadLayer::Dense(n_out) => {
                    let k = self.param_of[i].expect("dense layers have parameters");
                    let n_in = shape[0];
                    (
                        ops::dense_forward(
                            &cur,
                            &self.params[k].data,
                            &self.params[k + 1].data,
                            n_in,
                            n_out,
                        ),
                        Aux::None,
                    )
                }
            };
            if train {
                tape.inputs.push(std::mem::replace(&mut cur, next));
                tape.aux.push(aux);
            } else {
                cur = next;
            }
            shape = self.shapes[i].clone();
        }
        Ok((cur, tape))
    }

    /// Logits without dropout, in chunks so memory stays bounded on large sets.
    pub fn logits(&self, x: &[T]) -> Result<Vec<T>> {
        let n = self.input_len();
        let mut out = Vec::with_capacity(x.len() / n.max(1) * self.classes());
        for chunk in x.chunks(n.max(1) * 256) {
            out.extend(self.forward(chunk, Mode::Eval)?.0);
        }
        Ok(out)
    }

    /// Class probabilities (softmax of the logits), `classes` per row.
    pub fn predict_proba(&self, x: &[T]) -> Result<Vec<T>> {
        Ok(ops::softmax(&self.logits(x)?, self.classes()))
    }

    /// The gradient of every parameter (in `params` order) given the gradient of the loss with
    /// respect to the logits.
    pub fn backward(&self, tape: &Tape<T>, dlogits: &[T]) -> Vec<Vec<T>> {
        let mut grads: Vec<Vec<T>> = self.params.iter().map(|_| Vec::new()).collect();
        let mut dy = dlogits.to_vec();
        for i in (0..self.spec.layers.len()).rev() {
            let x = &tape.inputs[i];
            let in_shape = if i == 0 {
                &self.input
            } else {
                &self.shapes[i - 1]
            };
            let need_dx = i > 0;
            dy = match (self.spec.layers[i], &tape.aux[i]) {
                (HeadLayer::Dense(n_out), _) => {
                    let k = self.param_of[i].expect("dense layers have parameters");
                    let (dx, dw, db) =
                        ops::dense_backward(x, &self.params[k].data, &dy, in_shape[0], n_out);
                    grads[k] = dw;
                    grads[k + 1] = db;
                    dx
                }
                _ if !need_dx => Vec::new(),
                (HeadLayer::GlobalAvgPool, _) => {
                    ops::global_avg_pool_backward(&dy, in_shape[0] * in_shape[1], in_shape[2])
                }
                (HeadLayer::GlobalMaxPool, Aux::Winners(arg)) => {
                    ops::global_max_pool_backward(&dy, arg, x.len())
                }
                (HeadLayer::Relu, _) => ops::relu_backward(x, &dy),
                (HeadLayer::Dropout(_), Aux::Mask(mask)) => ops::mul_mask(&dy, mask),
                (HeadLayer::Flatten | HeadLayer::Dropout(_), _) => dy,
                (HeadLayer::GlobalMaxPool, _) => unreachable!("max pooling records its winners"),
            };
        }
        grads
    }
}

impl<T: Real> Head<T> {
    /// Keras's `l2(l2)` kernel regularizer: `l2 * sum(w^2)` over every kernel.
    pub fn l2_penalty(&self, l2: f64) -> T {
        let mut s = T::ZERO;
        for p in self.params.iter().filter(|p| p.decay) {
            for &w in &p.data {
                s += w * w;
            }
        }
        s * T::from_f64(l2)
    }

    /// Add the gradient of [`Head::l2_penalty`], `2 * l2 * w`, to `grads`.
    pub fn add_l2_gradient(&self, l2: f64, grads: &mut [Vec<T>]) {
        let k = T::from_f64(2.0 * l2);
        for (p, g) in self.params.iter().zip(grads).filter(|(p, _)| p.decay) {
            for (gi, &w) in g.iter_mut().zip(&p.data) {
                *gi += k * w;
            }
        }
    }
}
