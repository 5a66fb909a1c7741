//! Reference dense layer and its gradients, over f32 or f64:
//! `y[n, j] = act(z)`, `z = bias[j] + sum_i x[n, i] * kernel[i, j]`, the kernel in Keras's
//! `(in, out)` layout. With `dz = dy * act'(z)`:
//! `dx = dz kernel^T`, `dkernel = x^T dz`, `dbias = sum_n dz`.
//!
//! The forward pass reads the kernel row by row (contiguous) and applies each row to every
//! batch item, so VGG's 411 MB `fc1` kernel streams through memory once per batch, not once per
//! image. Rayon splits the output columns; each worker owns a block of columns for the whole
//! batch. Every gradient element is likewise summed by one task in a fixed order.

use rayon::prelude::*;

use super::by_dtype;
use super::conv::activation_backward;
use crate::error::Result;
use crate::tensor::{
    Activation, LayerGrads, Real, Tensor, Wanted, check_grad_shape, dense_geometry,
};

/// Output columns per rayon task: large enough to amortize scheduling, small enough to spread
/// VGG's 4096-wide layers over the cores.
const COLUMNS_PER_TASK: usize = 256;

pub fn dense_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    by_dtype!(x, dense::<T>(x, kernel, bias, activation))
}

fn dense<T: Real>(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    activation: Activation,
) -> Result<Tensor> {
    let [n, fin, fout] = dense_geometry(x.shape(), kernel.shape(), bias.map(Tensor::shape))?;
    let mut out = Tensor::zeros_of([n, fout], T::DTYPE)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let (xd, kd) = (x.values::<T>()?, kernel.values::<T>()?);
    let bias = bias.map(Tensor::values::<T>).transpose()?;

    let starts: Vec<usize> = (0..fout).step_by(COLUMNS_PER_TASK).collect();
    let blocks: Vec<Vec<T>> = starts
        .par_iter()
        .map(|&j0| {
            let width = COLUMNS_PER_TASK.min(fout - j0);
            let mut acc = vec![T::ZERO; n * width];
            for row in acc.chunks_exact_mut(width) {
                match bias {
                    Some(b) => row.copy_from_slice(&b[j0..j0 + width]),
                    None => row.fill(T::ZERO),
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

    let od = out.values_mut::<T>()?;
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

/// The reference gradients of [`dense_reference`], given the output `y` and `dy`.
pub fn dense_backward_reference(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    kernel: &Tensor,
    activation: Activation,
    wanted: Wanted,
) -> Result<LayerGrads> {
    by_dtype!(x, dense_backward::<T>(x, y, dy, kernel, activation, wanted))
}

fn dense_backward<T: Real>(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    kernel: &Tensor,
    activation: Activation,
    wanted: Wanted,
) -> Result<LayerGrads> {
    let [n, fin, fout] = dense_geometry(x.shape(), kernel.shape(), None)?;
    check_grad_shape("dense", dy.shape(), &[n, fout].into())?;
    let dz = activation_backward::<T>(y, dy, activation)?;
    let (xd, kd, dzv) = (x.values::<T>()?, kernel.values::<T>()?, dz.values::<T>()?);
    let dot = |a: &[T], b: &[T]| a.iter().zip(b).fold(T::ZERO, |s, (&p, &q)| s + p * q);
    let input = if wanted.input {
        let mut dx = Tensor::zeros_of([n, fin], T::DTYPE)?;
        if fout > 0 {
            dx.values_mut::<T>()?
                .par_chunks_mut(fin.max(1))
                .zip(dzv.par_chunks(fout))
                .for_each(|(dxr, dzr)| {
                    for (d, kr) in dxr.iter_mut().zip(kd.chunks_exact(fout)) {
                        *d = dot(dzr, kr);
                    }
                });
        }
        Some(dx)
    } else {
        None
    };
    let (kernel, bias) = if wanted.params {
        let mut dk = Tensor::zeros_of([fin, fout], T::DTYPE)?;
        if fout > 0 {
            // Row i of dkernel sums over the batch in batch order.
            dk.values_mut::<T>()?
                .par_chunks_mut(fout)
                .enumerate()
                .for_each(|(i, row)| {
                    for b in 0..n {
                        let xi = xd[b * fin + i];
                        for (o, &g) in row.iter_mut().zip(&dzv[b * fout..(b + 1) * fout]) {
                            *o += xi * g;
                        }
                    }
                });
        }
        let mut db = Tensor::zeros_of([fout], T::DTYPE)?;
        let dbv = db.values_mut::<T>()?;
        for dzr in dzv.chunks_exact(fout.max(1)) {
            for (o, &g) in dbv.iter_mut().zip(dzr) {
                *o += g;
            }
        }
        (Some(dk), Some(db))
    } else {
        (None, None)
    };
    Ok(LayerGrads {
        input,
        kernel,
        bias,
    })
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
        let k = Tensor::zeros([4, 3]).unwrap();
        let bad_dy = Tensor::zeros([2, 2]).unwrap();
        let y = Tensor::zeros([2, 3]).unwrap();
        let e = dense_backward_reference(&x, &y, &bad_dy, &k, Activation::Linear, Wanted::ALL);
        assert!(e.unwrap_err().to_string().contains("gradient has shape"));
    }
}
