//! Optimizers with Keras's update rules, so hyper-parameters mean what they mean in Keras.

use std::fmt;

use super::head::{Param, Real};

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

/// An optimizer and its per-parameter state (velocity, or Adam's two moments).
pub struct Optimizer<T> {
    kind: OptimizerKind,
    first: Vec<Vec<T>>,
    second: Vec<Vec<T>>,
    steps: u64,
}

impl<T: Real> Optimizer<T> {
    pub fn new(kind: OptimizerKind, params: &[Param<T>]) -> Self {
        let zeros = || params.iter().map(|p| vec![T::ZERO; p.data.len()]).collect();
        let second = match kind {
            OptimizerKind::Sgd { .. } => Vec::new(),
            _ => zeros(),
        };
        Optimizer {
            kind,
            first: zeros(),
            second,
            steps: 0,
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn step(&mut self, params: &mut [Param<T>], grads: &[Vec<T>], lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            match self.kind {
                OptimizerKind::Sgd { momentum, nesterov } => {
                    let (m, lr) = (T::from_f64(momentum), T::from_f64(lr));
                    for ((w, v), &g) in p.data.iter_mut().zip(&mut self.first[i]).zip(g) {
                        *v = m * *v - lr * g;
                        *w += if nesterov { m * *v - lr * g } else { *v };
                    }
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
                    if let OptimizerKind::AdamW { weight_decay, .. } = self.kind
                        && p.decay
                    {
                        let keep = T::from_f64(1.0 - lr * weight_decay);
                        for w in &mut p.data {
                            *w *= keep;
                        }
                    }
                    let alpha =
                        T::from_f64(lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t)));
                    let (b1, b2, eps) = (
                        T::from_f64(1.0 - beta1),
                        T::from_f64(1.0 - beta2),
                        T::from_f64(epsilon),
                    );
                    let moments = self.first[i].iter_mut().zip(&mut self.second[i]);
                    for ((w, (m, v)), &g) in p.data.iter_mut().zip(moments).zip(g) {
                        *m += (g - *m) * b1;
                        *v += (g * g - *v) * b2;
                        *w -= alpha * *m / (v.sqrt() + eps);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(v: f64) -> Vec<Param<f64>> {
        vec![Param {
            name: "w".into(),
            shape: vec![1],
            data: vec![v],
            decay: true,
        }]
    }

    #[test]
    fn sgd_momentum_matches_keras() {
        // Keras: v1 = -0.1*2 = -0.2, w1 = 0.8; v2 = 0.9*-0.2 - 0.1*2 = -0.38, w2 = 0.42.
        let mut p = param(1.0);
        let mut o = Optimizer::new(OptimizerKind::from_name("sgd").unwrap(), &p);
        o.step(&mut p, &[vec![2.0]], 0.1);
        assert!((p[0].data[0] - 0.8).abs() < 1e-12);
        o.step(&mut p, &[vec![2.0]], 0.1);
        assert!((p[0].data[0] - 0.42).abs() < 1e-12);
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // With bias correction, the first Adam step is lr * g / (|g| + eps') ~ lr * sign(g).
        let mut p = param(1.0);
        let mut o = Optimizer::new(OptimizerKind::from_name("adam").unwrap(), &p);
        o.step(&mut p, &[vec![-3.0]], 0.01);
        // m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1: the step is
        // lr |g| sqrt(0.001) / (|g| sqrt(0.001) + eps).
        let s = 3.0 * 0.001f64.sqrt();
        let want = 1.0 + 0.01 * s / (s + 1e-7);
        assert!((p[0].data[0] - want).abs() < 1e-15, "{}", p[0].data[0]);
    }

    #[test]
    fn adamw_decays_kernels_only() {
        let mut p = param(2.0);
        p.push(Param {
            name: "b".into(),
            shape: vec![1],
            data: vec![2.0],
            decay: false,
        });
        let kind = OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.5,
        };
        let mut o = Optimizer::new(kind, &p);
        o.step(&mut p, &[vec![0.0], vec![0.0]], 0.1);
        assert!((p[0].data[0] - 2.0 * 0.95).abs() < 1e-12);
        assert_eq!(p[1].data[0], 2.0);
    }

    #[test]
    fn every_optimizer_descends_a_quadratic() {
        for name in ["sgd", "adam", "adamw"] {
            let mut p = param(5.0);
            let mut o = Optimizer::new(OptimizerKind::from_name(name).unwrap(), &p);
            for _ in 0..500 {
                let g = vec![2.0 * p[0].data[0]];
                o.step(&mut p, &[g], 0.05);
            }
            assert!(p[0].data[0].abs() < 0.05, "{name}: {}", p[0].data[0]);
        }
    }
}
