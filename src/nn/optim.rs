//! Optimizers with Keras's update rules, so hyper-parameters mean what they mean in Keras, and
//! Keras's L2 penalty. The updates themselves are backend ops (`sgd_step`, `adam_step`), so
//! parameters and optimizer state stay on the device the model trains on.

use std::fmt;

use super::param::{Param, ParamMut};
use crate::error::{Error, Result};
use crate::tensor::{AdamStep, Backend, Tensor};

/// Which update rule, with the settings that only it has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `v = momentum * v - lr * g; w += v` (Keras's `SGD`), or its Nesterov form.
    Sgd { momentum: f64, nesterov: bool },
    /// Keras's `Adam`: bias-corrected step size, epsilon outside the square root.
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
    },
    /// Keras's `AdamW`: Adam plus decoupled weight decay `w -= lr * weight_decay * w` on
    /// kernels.
    AdamW {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
    },
}

impl OptimizerKind {
    /// Keras's defaults for each name.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            }),
            "adam" => Ok(OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
            }),
            "adamw" => Ok(OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
                weight_decay: 0.004,
            }),
            _ => Err(format!(
                "unknown optimizer '{name}': expected sgd, adam or adamw"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { .. } => "adam",
            OptimizerKind::AdamW { .. } => "adamw",
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerKind::Sgd { momentum, nesterov } => {
                write!(f, "sgd(momentum={momentum}, nesterov={nesterov})")
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
            } => write!(f, "adam(beta1={beta1}, beta2={beta2}, epsilon={epsilon})"),
            OptimizerKind::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => write!(
                f,
                "adamw(beta1={beta1}, beta2={beta2}, epsilon={epsilon}, weight_decay={weight_decay})"
            ),
        }
    }
}

/// An optimizer and its per-parameter state (velocity, or Adam's two moments), kept on the
/// backend's device.
pub struct Optimizer {
    kind: OptimizerKind,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: u64,
}

impl Optimizer {
    /// Zero state for `params` (in the order [`Optimizer::step`] will get them).
    pub fn new(backend: &dyn Backend, kind: OptimizerKind, params: &[Param]) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor>> {
            params
                .iter()
                .map(|p| {
                    backend.upload(Tensor::zeros_of(
                        p.tensor.shape().clone(),
                        p.tensor.dtype(),
                    )?)
                })
                .collect()
        };
        let second = match kind {
            OptimizerKind::Sgd { .. } => Vec::new(),
            _ => zeros()?,
        };
        Ok(Optimizer {
            kind,
            first: zeros()?,
            second,
            steps: 0,
        })
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn step(
        &mut self,
        backend: &dyn Backend,
        params: Vec<ParamMut>,
        grads: &[Tensor],
        lr: f64,
    ) -> Result<()> {
        if params.len() != self.first.len() || grads.len() != params.len() {
            return Err(Error::Invalid(format!(
                "the optimizer holds state for {} parameters, got {} parameters and {} gradients",
                self.first.len(),
                params.len(),
                grads.len()
            )));
        }
        self.steps += 1;
        let t = self.steps as i32;
        for (i, (p, g)) in params.into_iter().zip(grads).enumerate() {
            match self.kind {
                OptimizerKind::Sgd { momentum, nesterov } => {
                    backend.sgd_step(p.tensor, g, &mut self.first[i], lr, momentum, nesterov)?
                }
                OptimizerKind::Adam {
                    beta1,
                    beta2,
                    epsilon,
                }
                | OptimizerKind::AdamW {
                    beta1,
                    beta2,
                    epsilon,
                    ..
                } => {
                    let decay = match self.kind {
                        OptimizerKind::AdamW { weight_decay, .. } if p.decay => lr * weight_decay,
                        _ => 0.0,
                    };
                    let step = AdamStep {
                        alpha: lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t)),
                        beta1,
                        beta2,
                        epsilon,
                        decay,
                    };
                    backend.adam_step(
                        p.tensor,
                        g,
                        &mut self.first[i],
                        &mut self.second[i],
                        &step,
                    )?
                }
            }
        }
        Ok(())
    }
}

/// Keras's `l2(l2)` kernel regularizer: `l2 * sum(w^2)` over every kernel.
pub fn l2_penalty(backend: &dyn Backend, params: &[Param], l2: f64) -> Result<f64> {
    if l2 == 0.0 {
        return Ok(0.0);
    }
    let mut s = 0.0;
    for p in params.iter().filter(|p| p.decay) {
        s += backend.sum_squares(p.tensor)?;
    }
    Ok(l2 * s)
}

/// Add the gradient of [`l2_penalty`], `2 * l2 * w`, to `grads` (in `params` order).
pub fn add_l2_gradient(
    backend: &dyn Backend,
    params: &[Param],
    l2: f64,
    grads: &mut [Tensor],
) -> Result<()> {
    if l2 == 0.0 {
        return Ok(());
    }
    for (p, g) in params.iter().zip(grads).filter(|(p, _)| p.decay) {
        backend.axpy(2.0 * l2, p.tensor, g)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuReference;

    fn one(v: f64) -> Tensor {
        Tensor::from_values([1], &[v]).unwrap()
    }

    fn read(t: &Tensor) -> f64 {
        t.values::<f64>().unwrap()[0]
    }

    fn params(w: &[Tensor]) -> Vec<Param<'_>> {
        w.iter()
            .enumerate()
            .map(|(i, t)| Param {
                name: format!("p{i}"),
                tensor: t,
                decay: i == 0,
            })
            .collect()
    }

    fn params_mut(w: &mut [Tensor]) -> Vec<ParamMut<'_>> {
        w.iter_mut()
            .enumerate()
            .map(|(i, t)| ParamMut {
                tensor: t,
                decay: i == 0,
            })
            .collect()
    }

    #[test]
    fn sgd_momentum_matches_keras() {
        // Keras: v1 = -0.1*2 = -0.2, w1 = 0.8; v2 = 0.9*-0.2 - 0.1*2 = -0.38, w2 = 0.42.
        let be = CpuReference;
        let mut w = vec![one(1.0)];
        let kind = OptimizerKind::from_name("sgd").unwrap();
        let mut o = Optimizer::new(&be, kind, &params(&w)).unwrap();
        o.step(&be, params_mut(&mut w), &[one(2.0)], 0.1).unwrap();
        assert!((read(&w[0]) - 0.8).abs() < 1e-12);
        o.step(&be, params_mut(&mut w), &[one(2.0)], 0.1).unwrap();
        assert!((read(&w[0]) - 0.42).abs() < 1e-12);
        assert!(o.step(&be, params_mut(&mut w), &[], 0.1).is_err());
    }

    #[test]
    fn adamw_decays_kernels_only() {
        let be = CpuReference;
        let mut w = vec![one(2.0), one(2.0)];
        let kind = OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.5,
        };
        let mut o = Optimizer::new(&be, kind, &params(&w)).unwrap();
        o.step(&be, params_mut(&mut w), &[one(0.0), one(0.0)], 0.1)
            .unwrap();
        assert!((read(&w[0]) - 2.0 * 0.95).abs() < 1e-12);
        assert_eq!(read(&w[1]), 2.0);
    }

    #[test]
    fn every_optimizer_descends_a_quadratic() {
        let be = CpuReference;
        for name in ["sgd", "adam", "adamw"] {
            let mut w = vec![one(5.0)];
            let kind = OptimizerKind::from_name(name).unwrap();
            let mut o = Optimizer::new(&be, kind, &params(&w)).unwrap();
            for _ in 0..500 {
                let g = one(2.0 * read(&w[0]));
                o.step(&be, params_mut(&mut w), &[g], 0.05).unwrap();
            }
            assert!(read(&w[0]).abs() < 0.05, "{name}: {}", read(&w[0]));
        }
    }

    #[test]
    fn l2_penalty_and_gradient_cover_kernels_only() {
        let be = CpuReference;
        let w = vec![one(3.0), one(4.0)];
        assert_eq!(l2_penalty(&be, &params(&w), 0.5).unwrap(), 4.5);
        let mut g = vec![one(1.0), one(1.0)];
        add_l2_gradient(&be, &params(&w), 0.5, &mut g).unwrap();
        assert_eq!((read(&g[0]), read(&g[1])), (4.0, 1.0));
    }
}
