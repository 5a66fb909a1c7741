//! Reference dense layer: `out[n, j] = act(bias[j] + sum_i x[n, i] * kernel[i, j])`, with the
//! kernel in Keras's `(in, out)` layout.
//!
//! The kernel is read row by row (contiguous) and each row is applied to every batch item, so
//! VGG's 411 MB `fc1` kernel streams through memory once per batch, not once per image. Rayon
//! splits the output columns; each worker owns a block of columns for the whole batch.

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{Activation, Tensor, dense_geometry};

/// Output columns per rayon task: large enough to amortize scheduling, small enough to spread
/// VGG's 4096-wide layers over the cores.
const COLUMNS_PER_TASK: usize = 256;

pub fn dense_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    let [n, fin, fout] = dense_geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    let mut out = Tensor::zeros([n, fout])?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (xd, kd) = (x.data(), kernel.data());
    let bias = bias.map(Tensor::data);

    let starts: Vec<usize> = (0..fout).step_by(COLUMNS_PER_TASK).collect();
    let blocks: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&j0| {
            let width = COLUMNS_PER_TASK.min(fout - j0);
            let mut acc = vec![0f32; n * width];
            for row in acc.chunks_exact_mut(width) {
                match bias {
                    Some(b) => row.copy_from_slice(&b[j0..j0 + width]),
                    None => row.fill(0.0),
                }
            }
            for i in 0..fin {
                let k_row = &kd[i * fout + j0..][..width];
                for (b, row) in acc.chunks_exact_mut(width).enumerate() {
                    let a = xd[b * fin + i];
                    for (o, &k) in row.iter_mut().zip(k_row) {
                        *o += a * k;
                    }
                }
            }
            acc
        })
        .collect();

    let od = out.data_mut();
    for (&j0, block) in starts.iter().zip(&blocks) {
        let width = block.len() / n;
        for (b, row) in block.chunks_exact(width).enumerate() {
            for (o, &v) in od[b * fout + j0..][..width].iter_mut().zip(row) {
                *o = activation.apply(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// f32 sums of at most 1000 terms in [-1, 1]: 1e-5 of the largest output is ample (the
    /// measured worst is a few 1e-7).
    const TOL: f64 = 1e-5;

    #[test]
    fn matches_the_definition_on_odd_shapes() {
        let mut rng = Rng::new(3);
        for (n, fin, fout) in [
            (1, 1, 1),
            (3, 17, 5),
            (2, 63, 257),
            (5, 1000, 300),
            (1, 3, 513),
        ] {
            let x = Tensor::from_vec([n, fin], &rng.uniform_vec(n * fin, -1.0, 1.0)).unwrap();
            let k = Tensor::from_vec([fin, fout], &rng.uniform_vec(fin * fout, -1.0, 1.0)).unwrap();
            let b = Tensor::from_vec([fout], &rng.uniform_vec(fout, -1.0, 1.0)).unwrap();
            for act in [Activation::Linear, Activation::Relu] {
                let got = dense_reference(&x, &k, Some(&b), act).unwrap();
                let mut want = vec![0f64; n * fout];
                for bi in 0..n {
                    for j in 0..fout {
                        let mut s = b.data()[j] as f64;
                        for i in 0..fin {
                            s += x.data()[bi * fin + i] as f64 * k.data()[i * fout + j] as f64;
                        }
                        want[bi * fout + j] = if act == Activation::Relu {
                            s.max(0.0)
                        } else {
                            s
                        };
                    }
                }
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (g, w) in got.data().iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= TOL * scale,
                        "({n},{fin},{fout}) {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let x = Tensor::zeros([2, 4]).unwrap();
        let k = Tensor::zeros([5, 3]).unwrap();
        assert!(dense_reference(&x, &k, None, Activation::Linear).is_err());
    }
}
