//! Reference element-wise ops, over f32 or f64: ReLU and its gradient, masks, and the
//! optimizers' updates with Keras's rules.
//!
//! Chunks are fixed in size and every element is written by the task that owns its chunk,
//! so results do not depend on the thread count.

use rayon::prelude::*;

use super::by_dtype;
use crate::error::Result;
use crate::tensor::real::relu as relu1;
use crate::tensor::{AdamStep, Real, Tensor, check_grad_shape};

const CHUNK: usize = 1 << 14;

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    crate::tensor::check_same_shape(op, a.shape(), b.shape())
}

/// `out[i] = f(a[i], b[i])` in fixed chunks.
fn zip_map<T: Real>(a: &Tensor, b: &Tensor, f: impl Fn(T, T) -> T + Sync) -> Result<Tensor> {
    let mut out = a.clone();
    let bv = b.values::<T>()?;
    out.values_mut::<T>()?
        .par_chunks_mut(CHUNK)
        .zip(bv.par_chunks(CHUNK))
        .for_each(|(o, b)| {
            for (o, &b) in o.iter_mut().zip(b) {
                *o = f(*o, b);
            }
        });
    Ok(out)
}

pub fn relu_reference(x: &Tensor) -> Result<Tensor> {
    by_dtype!(x, relu::<T>(x))
}

fn relu<T: Real>(x: &Tensor) -> Result<Tensor> {
    zip_map::<T>(x, x, |v, _| relu1(v))
}

/// `dy` where `y > 0`, else 0.
pub fn relu_backward_reference(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_grad_shape("relu", dy.shape(), y.shape())?;
    by_dtype!(y, relu_backward::<T>(y, dy))
}

fn relu_backward<T: Real>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    zip_map::<T>(dy, y, |g, y| if y > T::ZERO { g } else { T::ZERO })
}

pub fn mul_reference(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    same_shape("mul", x, mask)?;
    by_dtype!(x, mul::<T>(x, mask))
}

fn mul<T: Real>(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    zip_map::<T>(x, mask, |a, b| a * b)
}

pub fn sum_squares_reference(x: &Tensor) -> Result<f64> {
    by_dtype!(x, sum_squares::<T>(x))
}

fn sum_squares<T: Real>(x: &Tensor) -> Result<f64> {
    // Per-chunk sums, then the chunks in order: the same total on any thread count.
    let parts: Vec<f64> = x
        .values::<T>()?
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum())
        .collect();
    Ok(parts.iter().sum())
}

pub fn axpy_reference(alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
    same_shape("axpy", x, y)?;
    by_dtype!(x, axpy::<T>(alpha, x, y))
}

fn axpy<T: Real>(alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
    let a = T::from_f64(alpha);
    let xv = x.values::<T>()?;
    y.values_mut::<T>()?
        .par_chunks_mut(CHUNK)
        .zip(xv.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        });
    Ok(())
}

pub fn sgd_step_reference(
    w: &mut Tensor,
    g: &Tensor,
    velocity: &mut Tensor,
    lr: f64,
    momentum: f64,
    nesterov: bool,
) -> Result<()> {
    same_shape("sgd", w, g)?;
    same_shape("sgd", w, velocity)?;
    by_dtype!(g, sgd_step::<T>(w, g, velocity, lr, momentum, nesterov))
}

fn sgd_step<T: Real>(
    w: &mut Tensor,
    g: &Tensor,
    velocity: &mut Tensor,
    lr: f64,
    momentum: f64,
    nesterov: bool,
) -> Result<()> {
    let (m, lr) = (T::from_f64(momentum), T::from_f64(lr));
    let gv = g.values::<T>()?;
    w.values_mut::<T>()?
        .par_chunks_mut(CHUNK)
        .zip(velocity.values_mut::<T>()?.par_chunks_mut(CHUNK))
        .zip(gv.par_chunks(CHUNK))
        .for_each(|((w, v), g)| {
            for ((w, v), &g) in w.iter_mut().zip(v).zip(g) {
                *v = m * *v - lr * g;
                *w += if nesterov { m * *v - lr * g } else { *v };
            }
        });
    Ok(())
}

pub fn adam_step_reference(
    w: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    step: &AdamStep,
) -> Result<()> {
    for t in [&*m, &*v, g] {
        same_shape("adam", w, t)?;
    }
    by_dtype!(g, adam_step::<T>(w, g, m, v, step))
}

fn adam_step<T: Real>(
    w: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: &AdamStep,
) -> Result<()> {
    let keep = T::from_f64(1.0 - s.decay);
    let decay = s.decay != 0.0;
    let (alpha, eps) = (T::from_f64(s.alpha), T::from_f64(s.epsilon));
    let (b1, b2) = (T::from_f64(1.0 - s.beta1), T::from_f64(1.0 - s.beta2));
    let gv = g.values::<T>()?;
    w.values_mut::<T>()?
        .par_chunks_mut(CHUNK)
        .zip(m.values_mut::<T>()?.par_chunks_mut(CHUNK))
        .zip(v.values_mut::<T>()?.par_chunks_mut(CHUNK))
        .zip(gv.par_chunks(CHUNK))
        .for_each(|(((w, m), v), g)| {
            for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                if decay {
                    *w *= keep;
                }
                *m += (g - *m) * b1;
                *v += (g * g - *v) * b2;
                *w -= alpha * *m / (v.sqrt() + eps);
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_values([v.len()], v).unwrap()
    }

    #[test]
    fn sgd_momentum_matches_keras() {
        // Keras: v1 = -0.1*2 = -0.2, w1 = 0.8; v2 = 0.9*-0.2 - 0.1*2 = -0.38, w2 = 0.42.
        let (mut w, g, mut v) = (t(&[1.0]), t(&[2.0]), t(&[0.0]));
        sgd_step_reference(&mut w, &g, &mut v, 0.1, 0.9, false).unwrap();
        assert!((w.values::<f64>().unwrap()[0] - 0.8).abs() < 1e-12);
        sgd_step_reference(&mut w, &g, &mut v, 0.1, 0.9, false).unwrap();
        assert!((w.values::<f64>().unwrap()[0] - 0.42).abs() < 1e-12);
    }

    #[test]
    fn adam_first_step_is_lr_times_sign_and_decay_scales() {
        // With bias correction the first step is lr |g| sqrt(0.001) / (|g| sqrt(0.001) + eps).
        let (mut w, g, mut m, mut v) = (t(&[1.0]), t(&[-3.0]), t(&[0.0]), t(&[0.0]));
        let (b1, b2) = (0.9f64, 0.999f64);
        let step = AdamStep {
            alpha: 0.01 * (1.0 - b2).sqrt() / (1.0 - b1),
            beta1: b1,
            beta2: b2,
            epsilon: 1e-7,
            decay: 0.0,
        };
        adam_step_reference(&mut w, &g, &mut m, &mut v, &step).unwrap();
        let s = 3.0 * 0.001f64.sqrt();
        let want = 1.0 + 0.01 * s / (s + 1e-7);
        assert!((w.values::<f64>().unwrap()[0] - want).abs() < 1e-15);
        let (mut w, z) = (t(&[2.0]), t(&[0.0]));
        let (mut m, mut v) = (z.clone(), z.clone());
        let decay = AdamStep {
            decay: 0.05,
            ..step
        };
        adam_step_reference(&mut w, &z, &mut m, &mut v, &decay).unwrap();
        assert!((w.values::<f64>().unwrap()[0] - 1.9).abs() < 1e-12);
    }

    #[test]
    fn relu_mul_axpy_and_sum_squares() {
        let x = Tensor::from_vec([4], &[-1.0, 2.0, f32::NAN, 0.0]).unwrap();
        let y = relu_reference(&x).unwrap();
        assert_eq!(&y.data()[..2], &[0.0, 2.0]);
        assert!(y.data()[2].is_nan(), "ReLU keeps NaN");
        let dy = Tensor::from_vec([4], &[5.0, 6.0, 7.0, 8.0]).unwrap();
        assert_eq!(
            relu_backward_reference(&y, &dy).unwrap().data(),
            &[0., 6., 0., 0.]
        );
        let mask = Tensor::from_vec([4], &[0.0, 2.0, 2.0, 0.0]).unwrap();
        assert_eq!(
            mul_reference(&dy, &mask).unwrap().data(),
            &[0., 12., 14., 0.]
        );
        let mut acc = dy.clone();
        axpy_reference(0.5, &dy, &mut acc).unwrap();
        assert_eq!(acc.data(), &[7.5, 9.0, 10.5, 12.0]);
        assert_eq!(sum_squares_reference(&dy).unwrap(), 25. + 36. + 49. + 64.);
        assert!(mul_reference(&dy, &Tensor::zeros([3]).unwrap()).is_err());
    }
}
