//! Reference softmax and softmax cross-entropy, over f32 or f64.
//!
//! Softmax is computed as Keras does, `exp(x - max) / sum`: subtracting the row maximum keeps
//! `exp` from overflowing without changing the result. The loss uses log-sum-exp rather than
//! `ln(p)`, so a confident wrong answer gives a large finite loss, not infinity; its gradient
//! with respect to the logits is `(p - onehot) / batch`.

use super::by_dtype;
use crate::error::{Error, Result};
use crate::tensor::{CrossEntropy, Real, Tensor};

pub fn softmax_reference(x: &Tensor) -> Result<Tensor> {
    by_dtype!(x, softmax::<T>(x))
}

fn softmax<T: Real>(x: &Tensor) -> Result<Tensor> {
    let last = *x
        .dims()
        .last()
        .ok_or_else(|| Error::Shape("softmax needs at least one axis".into()))?;
    let mut out = x.clone();
    if last == 0 {
        return Ok(out);
    }
    for row in out.values_mut::<T>()?.chunks_exact_mut(last) {
        let max =
            row.iter().copied().fold(
                T::from_f64(f64::NEG_INFINITY),
                |m, v| if v > m { v } else { m },
            );
        let mut sum = T::ZERO;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        // A NaN logit makes `sum` NaN, so the whole row turns NaN: visibly broken, never hidden.
        for v in row.iter_mut() {
            *v = *v / sum;
        }
    }
    Ok(out)
}

/// Mean softmax cross-entropy of `(N, classes)` logits against `labels`, with its gradient and
/// the probabilities.
pub fn softmax_cross_entropy_reference(logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
    by_dtype!(logits, softmax_cross_entropy::<T>(logits, labels))
}

fn softmax_cross_entropy<T: Real>(logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
    let [batch, classes] = crate::tensor::cross_entropy_geometry(logits.shape(), labels)?;
    let probs = softmax::<T>(logits)?;
    let mut dlogits = probs.clone();
    let inv_b = T::from_f64(1.0 / batch.max(1) as f64);
    let mut loss = 0f64;
    let z = logits.values::<T>()?;
    let g = dlogits.values_mut::<T>()?;
    for (b, &label) in labels.iter().enumerate() {
        let row = &z[b * classes..(b + 1) * classes];
        let max = row
            .iter()
            .copied()
            .fold(row[0], |m, v| if v > m { v } else { m });
        let sum = row.iter().fold(T::ZERO, |s, &v| s + (v - max).exp());
        loss += (max + sum.ln() - row[label]).to_f64();
        g[b * classes + label] -= T::ONE;
    }
    for v in g.iter_mut() {
        *v *= inv_b;
    }
    Ok(CrossEntropy {
        loss: loss / batch.max(1) as f64,
        dlogits,
        probs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_are_shift_invariant() {
        let x = Tensor::from_vec([2, 3], &[1., 2., 3., 1001., 1002., 1003.]).unwrap();
        let y = softmax_reference(&x).unwrap();
        let (a, b) = y.data().split_at(3);
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-7);
        }
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let s: f64 = e.iter().sum();
        for (p, v) in a.iter().zip(e) {
            assert!((*p as f64 - v / s).abs() < 1e-7);
        }
    }

    #[test]
    fn nan_logit_poisons_the_row() {
        let x = Tensor::from_vec([1, 3], &[1., f32::NAN, 3.]).unwrap();
        assert!(
            softmax_reference(&x)
                .unwrap()
                .data()
                .iter()
                .all(|v| v.is_nan())
        );
    }

    #[test]
    fn cross_entropy_stays_finite_on_huge_logits_and_checks_labels() {
        let z = Tensor::from_vec([1, 2], &[1000.0, -1000.0]).unwrap();
        let ce = softmax_cross_entropy_reference(&z, &[1]).unwrap();
        assert!((ce.loss - 2000.0).abs() < 1e-3, "{}", ce.loss);
        assert!(
            ce.dlogits
                .data()
                .iter()
                .chain(ce.probs.data())
                .all(|v| v.is_finite())
        );
        assert!(softmax_cross_entropy_reference(&z, &[2]).is_err());
        assert!(softmax_cross_entropy_reference(&z, &[0, 1]).is_err());
    }
}
