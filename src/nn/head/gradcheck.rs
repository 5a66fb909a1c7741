//! Every backward pass against central finite differences, in f64, on random inputs of odd
//! sizes.
//!
//! Each check builds a scalar `L = sum(r * f(x))` with a random `r`, so the backward pass is
//! tested with a non-trivial upstream gradient, and compares the analytic gradient with
//! `(L(x + h) - L(x - h)) / 2h` for every input. With h = 1e-6 in f64 the finite difference is
//! good to about 1e-9 relative on these smooth (or piecewise linear, kept away from their
//! kinks) functions; the tolerance is 1e-6 of the largest gradient.

use super::model::{Head, Mode};
use super::ops;
use super::spec::HeadSpec;
use crate::rng::Rng;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn random(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| rng.normal() as f64).collect()
}

/// Values with |v| >= 0.1, so no finite difference step crosses ReLU's kink.
fn away_from_zero(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = rng.normal() as f64;
            v.signum() * (v.abs() + 0.1)
        })
        .collect()
}

fn weighted_sum(y: &[f64], r: &[f64]) -> f64 {
    assert_eq!(y.len(), r.len());
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// The central finite-difference gradient of `f` at `x`.
fn numeric(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let keep = x[i];
            x[i] = keep + H;
            let up = f(&x);
            x[i] = keep - H;
            let down = f(&x);
            x[i] = keep;
            (up - down) / (2.0 * H)
        })
        .collect()
}

fn assert_grad(what: &str, analytic: &[f64], numeric: &[f64]) {
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

#[test]
fn dense_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for (batch, n_in, n_out) in [(1, 1, 1), (3, 17, 5), (4, 9, 63)] {
        let x = random(batch * n_in, &mut rng);
        let w = random(n_in * n_out, &mut rng);
        let b = random(n_out, &mut rng);
        let r = random(batch * n_out, &mut rng);
        let (dx, dw, db) = ops::dense_backward(&x, &w, &r, n_in, n_out);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            weighted_sum(&ops::dense_forward(x, w, b, n_in, n_out), &r)
        };
        let what = format!("dense {batch}x{n_in}->{n_out}");
        assert_grad(
            &format!("{what} dx"),
            &dx,
            &numeric(&x, &|x| loss(x, &w, &b)),
        );
        assert_grad(
            &format!("{what} dw"),
            &dw,
            &numeric(&w, &|w| loss(&x, w, &b)),
        );
        assert_grad(
            &format!("{what} db"),
            &db,
            &numeric(&b, &|b| loss(&x, &w, b)),
        );
    }
}

#[test]
fn relu_backward_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let x = away_from_zero(3 * 17, &mut rng);
    let r = random(x.len(), &mut rng);
    let dx = ops::relu_backward(&x, &r);
    assert_grad(
        "relu",
        &dx,
        &numeric(&x, &|x| weighted_sum(&ops::relu_forward(x), &r)),
    );
}

#[test]
fn dropout_backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    let x = random(5 * 7, &mut rng);
    let r = random(x.len(), &mut rng);
    let mask: Vec<f64> = ops::dropout_mask(x.len(), 0.3, &mut rng);
    assert!(mask.contains(&0.0) && mask.iter().any(|&m| m > 1.0));
    let dx = ops::mul_mask(&r, &mask);
    assert_grad(
        "dropout",
        &dx,
        &numeric(&x, &|x| weighted_sum(&ops::mul_mask(x, &mask), &r)),
    );
}

#[test]
fn dropout_keeps_the_expected_fraction() {
    let mut rng = Rng::new(14);
    let mask: Vec<f32> = ops::dropout_mask(100_000, 0.5, &mut rng);
    let kept = mask.iter().filter(|&&m| m == 2.0).count();
    assert_eq!(
        kept + mask.iter().filter(|&&m| m == 0.0).count(),
        mask.len()
    );
    assert!((kept as f64 / 1e5 - 0.5).abs() < 0.01, "{kept}");
}

#[test]
fn global_pools_backward_match_finite_differences() {
    let mut rng = Rng::new(15);
    for (batch, hw, c) in [(1, 1, 1), (3, 15, 7), (2, 49, 3)] {
        let x = random(batch * hw * c, &mut rng);
        let r = random(batch * c, &mut rng);
        let dx = ops::global_avg_pool_backward(&r, hw, c);
        let f = |x: &[f64]| weighted_sum(&ops::global_avg_pool_forward(x, hw, c), &r);
        assert_grad(&format!("gap {batch}x{hw}x{c}"), &dx, &numeric(&x, &f));
        // Max pooling: normal draws are distinct, so no step of 1e-6 changes a winner.
        let (_, arg) = ops::global_max_pool_forward(&x, hw, c);
        let dx = ops::global_max_pool_backward(&r, &arg, x.len());
        let f = |x: &[f64]| weighted_sum(&ops::global_max_pool_forward(x, hw, c).0, &r);
        assert_grad(&format!("gmp {batch}x{hw}x{c}"), &dx, &numeric(&x, &f));
    }
}

#[test]
fn softmax_cross_entropy_gradient_matches_finite_differences() {
    let mut rng = Rng::new(16);
    for (batch, classes) in [(1, 2), (3, 5), (7, 17)] {
        let logits: Vec<f64> = random(batch * classes, &mut rng)
            .into_iter()
            .map(|v| 3.0 * v)
            .collect();
        let labels: Vec<usize> = (0..batch)
            .map(|_| rng.below(classes as u64) as usize)
            .collect();
        let (_, grad, probs) = ops::softmax_cross_entropy(&logits, &labels, classes);
        let f = |z: &[f64]| ops::softmax_cross_entropy(z, &labels, classes).0;
        assert_grad(
            &format!("softmax-ce {batch}x{classes}"),
            &grad,
            &numeric(&logits, &f),
        );
        for row in probs.chunks(classes) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn softmax_cross_entropy_stays_finite_on_huge_logits() {
    let (loss, grad, probs) = ops::softmax_cross_entropy(&[1000.0f32, -1000.0], &[1], 2);
    assert!(loss.is_finite() && (loss - 2000.0).abs() < 1e-3, "{loss}");
    assert!(grad.iter().chain(&probs).all(|v| v.is_finite()));
}

/// The whole head, every parameter, through the loss, L2 included, with a fixed dropout mask
/// (the same seed for every evaluation).
#[test]
fn head_backward_matches_finite_differences() {
    let mut rng = Rng::new(17);
    for (spec, input) in [
        ("gap,dense5,relu,dropout0.5", vec![3, 5, 7]),
        ("gmp,dense3,relu", vec![1, 3, 4]),
        ("flatten,dropout0.25,dense4,relu,dense4", vec![2, 3, 3]),
        ("gap", vec![1, 1, 9]),
    ] {
        let classes = 3;
        let batch = 5;
        let head: Head<f64> =
            Head::new(HeadSpec::parse(spec, classes).unwrap(), &input, 3).unwrap();
        let x = random(batch * head.input_len(), &mut rng);
        let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
        let l2 = 0.01;
        let loss_of = |h: &Head<f64>| {
            let (logits, _) = h.forward(&x, Mode::Train(&mut Rng::new(99))).unwrap();
            ops::softmax_cross_entropy(&logits, &labels, classes).0 + h.l2_penalty(l2)
        };
        let (logits, tape) = head.forward(&x, Mode::Train(&mut Rng::new(99))).unwrap();
        let (_, dlogits, _) = ops::softmax_cross_entropy(&logits, &labels, classes);
        let mut grads = head.backward(&tape, &dlogits);
        head.add_l2_gradient(l2, &mut grads);
        for (k, p) in head.params().iter().enumerate() {
            let num = numeric(&p.data, &|v| {
                let mut h = head.clone();
                h.params_mut()[k].data.copy_from_slice(v);
                loss_of(&h)
            });
            assert_grad(&format!("head {spec}: {}", p.name), &grads[k], &num);
        }
    }
}

#[test]
fn eval_mode_runs_every_unit() {
    let head: Head<f32> = Head::new(
        HeadSpec::parse("gap,dense7,dropout0.5", 2).unwrap(),
        &[1, 1, 3],
        1,
    )
    .unwrap();
    let x = [0.5f32, -1.0, 2.0];
    let a = head.logits(&x).unwrap();
    let b = head.logits(&x).unwrap();
    assert_eq!(a, b, "dropout must be off outside training");
    let (t1, _) = head.forward(&x, Mode::Train(&mut Rng::new(1))).unwrap();
    let (t2, _) = head.forward(&x, Mode::Train(&mut Rng::new(1))).unwrap();
    assert_eq!(t1, t2, "the same seed gives the same mask");
}
