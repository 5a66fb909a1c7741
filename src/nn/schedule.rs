//! Learning-rate schedules, evaluated once per epoch.

use std::fmt;

/// How the learning rate changes over the epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `min_lr` at the last epoch.
    Cosine {
        min_lr: f64,
    },
}

impl Schedule {
    /// The rate for `epoch` (0-based) of `epochs`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { min_lr } => {
                let span = epochs.saturating_sub(1).max(1) as f64;
                let progress = (epoch as f64 / span).min(1.0);
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step { every, gamma } => write!(f, "step(every={every}, gamma={gamma})"),
            Schedule::Cosine { min_lr } => write!(f, "cosine(min_lr={min_lr})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(0.1, 7, 10), 0.1);
        let s = Schedule::Step {
            every: 3,
            gamma: 0.5,
        };
        assert_eq!(
            [0, 2, 3, 5, 6].map(|e| s.lr(1.0, e, 10)),
            [1.0, 1.0, 0.5, 0.5, 0.25]
        );
        let c = Schedule::Cosine { min_lr: 0.0 };
        assert_eq!(c.lr(1.0, 0, 11), 1.0);
        assert!((c.lr(1.0, 5, 11) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 10, 11).abs() < 1e-12);
        assert_eq!(c.lr(1.0, 0, 1), 1.0);
    }
}
