//! Reference softmax over the last axis, computed as Keras does: exp(x - max) / sum.
//! Subtracting the row maximum keeps exp from overflowing without changing the result.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn softmax_reference(x: &Tensor) -> Result<Tensor> {
    let last = *x
        .dims()
        .last()
        .ok_or_else(|| Error::Shape("softmax needs at least one axis".into()))?;
    let mut out = x.clone();
    if last == 0 {
        return Ok(out);
    }
    for row in out.data_mut().chunks_exact_mut(last) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        // A NaN logit makes `sum` NaN, so the whole row turns NaN: visibly broken, never hidden.
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    Ok(out)
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
}
