//! Every backward op of the reference kernels against central finite differences, in f64, on
//! random inputs of odd sizes.
//!
//! Each check builds a scalar `L = sum(r * f(x))` with a random `r`, so the backward pass is
//! tested with a non-trivial upstream gradient, and compares the analytic gradient with
//! `(L(x + h) - L(x - h)) / 2h` for every input element. With h = 1e-6 in f64 the finite
//! difference is good to about 1e-9 relative on these smooth (or piecewise linear, kept away
//! from their kinks) functions; the tolerance is 1e-6 of the largest gradient.

use super::*;
use crate::rng::Rng;
use crate::tensor::{DType, Padding};

const H: f64 = 1e-6;
pub(crate) const TOL: f64 = 1e-6;

/// An f64 tensor of standard normal draws.
pub(crate) fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() as f64).collect();
    Tensor::from_values(shape, &v).unwrap()
}

fn vals(t: &Tensor) -> &[f64] {
    t.values::<f64>().unwrap()
}

fn weighted_sum(y: &Tensor, r: &Tensor) -> f64 {
    vals(y).iter().zip(vals(r)).map(|(a, b)| a * b).sum()
}

/// The central finite-difference gradient of `f` at `x` (an f64 tensor).
pub(crate) fn numeric(x: &Tensor, f: &dyn Fn(&Tensor) -> f64) -> Vec<f64> {
    let mut x = x.clone();
    (0..x.numel())
        .map(|i| {
            let keep = vals(&x)[i];
            x.values_mut::<f64>().unwrap()[i] = keep + H;
            let up = f(&x);
            x.values_mut::<f64>().unwrap()[i] = keep - H;
            let down = f(&x);
            x.values_mut::<f64>().unwrap()[i] = keep;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// `analytic` within `TOL` of the largest `numeric` gradient, element by element; an all-zero
/// gradient fails (the check would prove nothing).
pub(crate) fn assert_grad(what: &str, analytic: &Tensor, numeric: &[f64]) {
    let analytic = vals(analytic);
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0,
        "{what}: the gradient is all zeros, the check proves nothing"
    );
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (a - n).abs();
        assert!(
            err <= TOL * scale,
            "{what}[{i}]: analytic {a}, numeric {n} (|diff| {err:e} > {TOL:e} * {scale:e})"
        );
    }
}

/// The smallest |pre-activation| of a linear convolution: ReLU checks need every output at
/// least this far from the kink for the finite difference not to cross it.
fn min_abs(t: &Tensor) -> f64 {
    vals(t).iter().fold(f64::INFINITY, |m, v| m.min(v.abs()))
}

/// Pre-activations a ReLU check can use: clear of the kink, and some positive (else every
/// gradient is zero and the check proves nothing).
fn relu_ready(z: &Tensor) -> bool {
    min_abs(z) > 1e-3 && vals(z).iter().any(|&v| v > 0.0)
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    let mut rng = Rng::new(21);
    type Case = ([usize; 4], [usize; 4], [usize; 2], Padding);
    let cases: &[Case] = &[
        ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1], Padding::Valid),
        ([2, 5, 3, 3], [3, 3, 3, 4], [1, 1], Padding::Same),
        ([1, 7, 6, 2], [3, 3, 2, 3], [2, 2], Padding::Same),
        (
            [1, 6, 5, 3],
            [2, 3, 3, 2],
            [1, 2],
            Padding::Explicit([1, 0, 2, 1]),
        ),
        ([3, 4, 5, 1], [3, 3, 1, 5], [2, 1], Padding::Valid),
    ];
    for &(xs, ks, stride, padding) in cases {
        for activation in [Activation::Linear, Activation::Relu] {
            let spec = Conv2dSpec {
                stride,
                padding,
                activation,
            };
            let linear = Conv2dSpec {
                activation: Activation::Linear,
                ..spec
            };
            // Draw until every pre-activation is clear of ReLU's kink.
            let (x, k, b) = loop {
                let (x, k, b) = (
                    random(&xs, &mut rng),
                    random(&ks, &mut rng),
                    random(&ks[3..], &mut rng),
                );
                let z = conv2d_reference(&x, &k, Some(&b), &linear).unwrap();
                if activation == Activation::Linear || relu_ready(&z) {
                    break (x, k, b);
                }
            };
            let y = conv2d_reference(&x, &k, Some(&b), &spec).unwrap();
            let r = random(y.dims(), &mut rng);
            let grads = conv2d_backward_reference(&x, &y, &r, &k, &spec, Wanted::ALL).unwrap();
            let loss = |x: &Tensor, k: &Tensor, b: &Tensor| {
                weighted_sum(&conv2d_reference(x, k, Some(b), &spec).unwrap(), &r)
            };
            let what = format!("conv {xs:?} {ks:?} {stride:?} {padding:?} {activation:?}");
            assert_grad(
                &format!("{what} dx"),
                grads.input.as_ref().unwrap(),
                &numeric(&x, &|x| loss(x, &k, &b)),
            );
            assert_grad(
                &format!("{what} dk"),
                grads.kernel.as_ref().unwrap(),
                &numeric(&k, &|k| loss(&x, k, &b)),
            );
            assert_grad(
                &format!("{what} db"),
                grads.bias.as_ref().unwrap(),
                &numeric(&b, &|b| loss(&x, &k, b)),
            );
        }
    }
}

#[test]
fn conv2d_backward_computes_only_what_is_wanted() {
    let mut rng = Rng::new(22);
    let (x, k) = (
        random(&[1, 3, 3, 2], &mut rng),
        random(&[3, 3, 2, 2], &mut rng),
    );
    let spec = Conv2dSpec::same_relu();
    let y = conv2d_reference(&x, &k, None, &spec).unwrap();
    let g = conv2d_backward_reference(&x, &y, &y, &k, &spec, Wanted::PARAMS).unwrap();
    assert!(g.input.is_none() && g.kernel.is_some() && g.bias.is_some());
    let g = conv2d_backward_reference(&x, &y, &y, &k, &spec, Wanted::INPUT).unwrap();
    assert!(g.input.is_some() && g.kernel.is_none());
    let bad = random(&[1, 3, 2, 2], &mut rng);
    assert!(conv2d_backward_reference(&x, &bad, &bad, &k, &spec, Wanted::ALL).is_err());
}

#[test]
fn dense_backward_matches_finite_differences() {
    let mut rng = Rng::new(23);
    for (batch, n_in, n_out) in [(1, 1, 1), (3, 17, 5), (4, 9, 63)] {
        for activation in [Activation::Linear, Activation::Relu] {
            let (x, w, b) = loop {
                let x = random(&[batch, n_in], &mut rng);
                let w = random(&[n_in, n_out], &mut rng);
                let b = random(&[n_out], &mut rng);
                let z = dense_reference(&x, &w, Some(&b), Activation::Linear).unwrap();
                if activation == Activation::Linear || relu_ready(&z) {
                    break (x, w, b);
                }
            };
            let y = dense_reference(&x, &w, Some(&b), activation).unwrap();
            let r = random(y.dims(), &mut rng);
            let g = dense_backward_reference(&x, &y, &r, &w, activation, Wanted::ALL).unwrap();
            let loss = |x: &Tensor, w: &Tensor, b: &Tensor| {
                weighted_sum(&dense_reference(x, w, Some(b), activation).unwrap(), &r)
            };
            let what = format!("dense {batch}x{n_in}->{n_out} {activation:?}");
            assert_grad(
                &format!("{what} dx"),
                g.input.as_ref().unwrap(),
                &numeric(&x, &|x| loss(x, &w, &b)),
            );
            assert_grad(
                &format!("{what} dw"),
                g.kernel.as_ref().unwrap(),
                &numeric(&w, &|w| loss(&x, w, &b)),
            );
            assert_grad(
                &format!("{what} db"),
                g.bias.as_ref().unwrap(),
                &numeric(&b, &|b| loss(&x, &w, b)),
            );
        }
    }
}

#[test]
fn max_pool_backward_matches_finite_differences() {
    let mut rng = Rng::new(24);
    for (shape, size, stride, padding) in [
        ([2, 5, 7, 3], [2, 2], [2, 2], Padding::Valid),
        ([1, 7, 6, 2], [3, 3], [2, 2], Padding::Same),
        ([1, 4, 5, 1], [3, 2], [1, 1], Padding::Valid),
    ] {
        let spec = Pool2dSpec {
            size,
            stride,
            padding,
        };
        // Normal draws are distinct, so no step of 1e-6 changes a window's winner.
        let x = random(&shape, &mut rng);
        let y = max_pool2d_reference(&x, &spec).unwrap();
        let r = random(y.dims(), &mut rng);
        let dx = max_pool2d_backward_reference(&x, &r, &spec).unwrap();
        let f = |x: &Tensor| weighted_sum(&max_pool2d_reference(x, &spec).unwrap(), &r);
        assert_grad(
            &format!("max pool {shape:?} {size:?}"),
            &dx,
            &numeric(&x, &f),
        );
    }
}

#[test]
fn global_pools_backward_match_finite_differences() {
    let mut rng = Rng::new(25);
    for shape in [[1, 1, 1, 1], [3, 5, 3, 7], [2, 7, 7, 3]] {
        for kind in [GlobalPool::Avg, GlobalPool::Max] {
            let x = random(&shape, &mut rng);
            let r = random(&[shape[0], shape[3]], &mut rng);
            let dx = global_pool_backward_reference(&x, &r, kind).unwrap();
            let f = |x: &Tensor| weighted_sum(&global_pool_reference(x, kind).unwrap(), &r);
            assert_grad(&format!("{kind:?} {shape:?}"), &dx, &numeric(&x, &f));
        }
    }
}

#[test]
fn relu_and_mask_backward_match_finite_differences() {
    let mut rng = Rng::new(26);
    let x = loop {
        let x = random(&[3, 17], &mut rng);
        if relu_ready(&x) {
            break x;
        }
    };
    let y = relu_reference(&x).unwrap();
    let r = random(&[3, 17], &mut rng);
    let dx = relu_backward_reference(&y, &r).unwrap();
    let f = |x: &Tensor| weighted_sum(&relu_reference(x).unwrap(), &r);
    assert_grad("relu", &dx, &numeric(&x, &f));
    let mask = Tensor::from_values(
        [3, 17],
        &(0..51).map(|i| [0.0, 2.0][i % 3 / 2]).collect::<Vec<f64>>(),
    )
    .unwrap();
    let dx = mul_reference(&r, &mask).unwrap();
    let f = |x: &Tensor| weighted_sum(&mul_reference(x, &mask).unwrap(), &r);
    assert_grad("dropout mask", &dx, &numeric(&x, &f));
}

#[test]
fn softmax_cross_entropy_gradient_matches_finite_differences() {
    let mut rng = Rng::new(27);
    for (batch, classes) in [(1, 2), (3, 5), (7, 17)] {
        let z = random(&[batch, classes], &mut rng);
        let z = mul_reference(
            &z,
            &Tensor::from_values([batch, classes], &vec![3.0f64; batch * classes]).unwrap(),
        )
        .unwrap();
        let labels: Vec<usize> = (0..batch)
            .map(|_| rng.below(classes as u64) as usize)
            .collect();
        let ce = softmax_cross_entropy_reference(&z, &labels).unwrap();
        let f = |z: &Tensor| softmax_cross_entropy_reference(z, &labels).unwrap().loss;
        assert_grad(
            &format!("softmax-ce {batch}x{classes}"),
            &ce.dlogits,
            &numeric(&z, &f),
        );
        for row in vals(&ce.probs).chunks(classes) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn f64_and_f32_kernels_agree() {
    let mut rng = Rng::new(28);
    let x = random(&[2, 5, 4, 3], &mut rng);
    let k = random(&[3, 3, 3, 2], &mut rng);
    let spec = Conv2dSpec::same_relu();
    let y64 = conv2d_reference(&x, &k, None, &spec).unwrap();
    let (x32, k32) = (x.cast(DType::F32).unwrap(), k.cast(DType::F32).unwrap());
    let y32 = conv2d_reference(&x32, &k32, None, &spec).unwrap();
    for (a, b) in y32.data().iter().zip(vals(&y64)) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
}
