//! The whole head, every parameter and its input, through the loss and the L2 penalty,
//! against central finite differences in f64 on the reference backend, with a fixed dropout
//! mask (the same seed for every evaluation). Tolerance as for the single ops
//! (`cpu/reference/gradcheck.rs`): 1e-6 of the largest gradient.

use super::model::{Head, Mode};
use super::spec::HeadSpec;
use crate::cpu::CpuReference;
use crate::cpu::reference::gradcheck::{assert_grad, numeric, random};
use crate::nn::optim::{add_l2_gradient, l2_penalty};
use crate::rng::Rng;
use crate::tensor::{Backend, DType, Tensor};

#[test]
fn head_backward_matches_finite_differences() {
    let be = CpuReference;
    let mut rng = Rng::new(17);
    for (spec, input) in [
        ("gap,dense5,relu,dropout0.5", vec![3, 5, 7]),
        ("gmp,dense3,relu", vec![1, 3, 4]),
        ("flatten,dropout0.25,dense4,relu,dense4", vec![2, 3, 3]),
        ("gap", vec![1, 1, 9]),
    ] {
        let (classes, batch, l2) = (3, 5, 0.01);
        let head = Head::new(HeadSpec::parse(spec, classes).unwrap(), &input, 3)
            .unwrap()
            .cast(DType::F64)
            .unwrap();
        let mut shape = vec![batch];
        shape.extend(&input);
        let x = random(&shape, &mut rng);
        let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
        let loss_of = |h: &Head, x: &Tensor| {
            let (logits, _) = h.forward(&be, x, Mode::Train(&mut Rng::new(99))).unwrap();
            be.softmax_cross_entropy(&logits, &labels).unwrap().loss
                + l2_penalty(&be, &h.params(), l2).unwrap()
        };
        let (logits, tape) = head
            .forward(&be, &x, Mode::Train(&mut Rng::new(99)))
            .unwrap();
        let ce = be.softmax_cross_entropy(&logits, &labels).unwrap();
        let (mut grads, dx) = head.backward(&be, &tape, &ce.dlogits, true).unwrap();
        add_l2_gradient(&be, &head.params(), l2, &mut grads).unwrap();
        for (k, p) in head.params().iter().enumerate() {
            let num = numeric(p.tensor, &|v| {
                let mut h = head.clone();
                *h.params_mut()[k].tensor = v.clone();
                loss_of(&h, &x)
            });
            assert_grad(&format!("head {spec}: {}", p.name), &grads[k], &num);
        }
        let num = numeric(&x, &|x| loss_of(&head, x));
        assert_grad(&format!("head {spec}: input"), dx.as_ref().unwrap(), &num);
    }
}

#[test]
fn eval_mode_runs_every_unit_and_seeds_fix_the_masks() {
    let be = CpuReference;
    let head = Head::new(
        HeadSpec::parse("gap,dense7,dropout0.5", 2).unwrap(),
        &[1, 1, 3],
        1,
    )
    .unwrap();
    let x = Tensor::from_vec([1, 1, 1, 3], &[0.5, -1.0, 2.0]).unwrap();
    let a = head.logits(&be, &x).unwrap();
    let b = head.logits(&be, &x).unwrap();
    assert_eq!(a.data(), b.data(), "dropout must be off outside training");
    let (t1, _) = head
        .forward(&be, &x, Mode::Train(&mut Rng::new(1)))
        .unwrap();
    let (t2, _) = head
        .forward(&be, &x, Mode::Train(&mut Rng::new(1)))
        .unwrap();
    assert_eq!(t1.data(), t2.data(), "the same seed gives the same mask");
    let e = head.backward(
        &be,
        &head.forward(&be, &x, Mode::Eval).unwrap().1,
        &a,
        false,
    );
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("tape of a training forward pass")
    );
}

#[test]
fn dropout_keeps_the_expected_fraction() {
    let mut rng = Rng::new(14);
    let mask = super::model::dropout_mask(&[100_000].into(), DType::F32, 0.5, &mut rng).unwrap();
    let kept = mask.data().iter().filter(|&&m| m == 2.0).count();
    let dropped = mask.data().iter().filter(|&&m| m == 0.0).count();
    assert_eq!(kept + dropped, 100_000);
    assert!((kept as f64 / 1e5 - 0.5).abs() < 0.01, "{kept}");
}
