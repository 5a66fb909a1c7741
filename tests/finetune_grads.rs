//! Fine-tuning's gradients against a real framework: one training step of VGG16's blocks 4
//! and 5 plus a head (`gap,dense8,relu,dense3`), on the mini VGG16 fixture, computed by Keras 3
//! on JAX (`tests/data/finetune/make_reference.py`, committed with its output). Every gradient,
//! the loss, the logits and the input's gradient must match to `1e-4` of each tensor's largest
//! value, on the reference backend and on the fast one at every ISA. The same step in f64 is
//! checked against central finite differences on sampled weights.

mod common;

use std::collections::HashMap;

use keel::cpu::CpuReference;
use keel::nn::head::{Head, HeadSpec, Mode};
use keel::nn::{Classifier, ConvTail, Vgg};
use keel::rng::Rng;
use keel::tensor::{Backend, DType, Tensor};
use safetensors::SafeTensors;

/// Relative to each tensor's max |value|; Keras (f32) agrees with an f64 NumPy version of the
/// same step to 5e-7 (the fixture's README), so 1e-4 leaves room for f32 summation order only.
const TOL: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = common::test_data("finetune/mini_vgg16_blocks45_grads.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let data: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name, Tensor::from_vec(v.shape().to_vec(), &data).unwrap())
            })
            .collect();
        Fixture { tensors }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
    }
}

/// The model of the fixture: blocks 4-5 of the mini VGG16 at 120x88, and the stored head.
fn model(shared: &std::path::Path, fx: &Fixture) -> Classifier {
    let weights =
        keel::io::load_weights(&shared.join("fixtures/keras/models/mini_vgg16_notop.keras2.h5"))
            .unwrap();
    let config = weights.identity().base_config([120, 88]);
    let vgg = Vgg::new(config, weights).unwrap();
    let tail: ConvTail = vgg.tail("block4_conv1").unwrap();
    assert_eq!(tail.input_shape(), &[15, 11, 12]);
    assert_eq!(tail.output_shape(), &[3, 2, 16]);
    let spec = HeadSpec::parse("gap,dense8,relu", 3).unwrap();
    let params = [
        "dense1.kernel",
        "dense1.bias",
        "dense2.kernel",
        "dense2.bias",
    ]
    .map(|n| (n.to_string(), fx.get(&format!("head.{n}")).clone()))
    .to_vec();
    let head = Head::from_params(spec, tail.output_shape(), params).unwrap();
    Classifier::with_tail(tail, head).unwrap()
}

fn labels(fx: &Fixture) -> Vec<usize> {
    fx.get("labels")
        .data()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.cast(DType::F32).unwrap();
    let scale = want
        .data()
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()));
    assert!(scale > 0.0, "{what}: the reference is all zeros");
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        let err = (g as f64 - w as f64).abs();
        assert!(
            err <= TOL * scale,
            "{what}[{i}]: keel {g}, keras {w} (|diff| {err:e} > {TOL:e} * {scale:e})"
        );
        worst = worst.max(err / scale);
    }
    worst
}

/// One step: loss, logits, every parameter's gradient and the input's.
fn step(
    be: &dyn Backend,
    m: &Classifier,
    x: &Tensor,
    labels: &[usize],
) -> (f64, Tensor, Vec<Tensor>, Tensor) {
    let (logits, tape) = m
        .forward_train(be, x.clone(), Mode::Train(&mut Rng::new(0)))
        .unwrap();
    let ce = be.softmax_cross_entropy(&logits, labels).unwrap();
    let grads = m.backward(be, &tape, &ce.dlogits).unwrap();
    // The input's gradient: the head's, then the tail's, asked for explicitly.
    let tail = m.tail.as_ref().unwrap();
    let (y, ttape) = tail.forward_train(be, x.clone()).unwrap();
    let (_, htape) = m
        .head
        .forward(be, &y, Mode::Train(&mut Rng::new(0)))
        .unwrap();
    let (_, dfeat) = m.head.backward(be, &htape, &ce.dlogits, true).unwrap();
    let (_, dx) = tail.backward(be, &ttape, &dfeat.unwrap(), true).unwrap();
    (
        ce.loss,
        be.to_host(logits).unwrap(),
        grads.into_iter().map(|g| be.to_host(g).unwrap()).collect(),
        be.to_host(dx.unwrap()).unwrap(),
    )
}

#[test]
fn gradients_match_keras() {
    let Some(shared) = common::shared("fixtures/keras/models/mini_vgg16_notop.keras2.h5") else {
        return;
    };
    let fx = Fixture::load();
    let m = model(&shared, &fx);
    let x = fx.get("input");
    let labels = labels(&fx);
    for be in common::backends() {
        let (loss, logits, grads, dx) = step(be.as_ref(), &m, x, &labels);
        let want_loss = fx.get("loss").data()[0] as f64;
        assert!(
            (loss - want_loss).abs() <= TOL * want_loss.abs(),
            "{}: loss {loss} vs keras {want_loss}",
            be.name()
        );
        let mut worst = assert_close(&format!("{} logits", be.name()), &logits, fx.get("logits"));
        for (p, g) in m.params().iter().zip(&grads) {
            let what = format!("{} grad {}", be.name(), p.name);
            worst = worst.max(assert_close(&what, g, fx.get(&format!("grad.{}", p.name))));
        }
        worst = worst.max(assert_close(
            &format!("{} grad input", be.name()),
            &dx,
            fx.get("grad.input"),
        ));
        assert_eq!(
            grads.len(),
            16,
            "6 conv layers and 2 dense, kernel and bias each"
        );
        eprintln!(
            "{}: worst relative difference from Keras {worst:.1e}",
            be.name()
        );
    }
}

/// The same step in f64 on the reference kernels, against central finite differences of the
/// loss, on 8 sampled elements of every parameter (all 16 tensors): h = 1e-6, tolerance
/// 1e-6 of the tensor's largest gradient (the check of each op in `cpu/reference` uses the
/// same numbers).
#[test]
fn f64_gradients_match_finite_differences() {
    let Some(shared) = common::shared("fixtures/keras/models/mini_vgg16_notop.keras2.h5") else {
        return;
    };
    let fx = Fixture::load();
    let m = model(&shared, &fx).cast(DType::F64).unwrap();
    let x = fx.get("input").cast(DType::F64).unwrap();
    let labels = labels(&fx);
    let be = CpuReference;
    let loss_of = |m: &Classifier| {
        let (logits, _) = m
            .forward_train(&be, x.clone(), Mode::Train(&mut Rng::new(0)))
            .unwrap();
        be.softmax_cross_entropy(&logits, &labels).unwrap().loss
    };
    let (logits, tape) = m
        .forward_train(&be, x.clone(), Mode::Train(&mut Rng::new(0)))
        .unwrap();
    let ce = be.softmax_cross_entropy(&logits, &labels).unwrap();
    let grads = m.backward(&be, &tape, &ce.dlogits).unwrap();
    let mut rng = Rng::new(5);
    let h = 1e-6;
    for (k, g) in grads.iter().enumerate() {
        let gv = g.values::<f64>().unwrap();
        let scale = gv.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(scale > 0.0);
        for _ in 0..8 {
            let i = rng.below(gv.len() as u64) as usize;
            let eval = |delta: f64| {
                let mut m2 = m.clone();
                m2.params_mut()[k].tensor.values_mut::<f64>().unwrap()[i] += delta;
                loss_of(&m2)
            };
            let num = (eval(h) - eval(-h)) / (2.0 * h);
            let name = &m.params()[k].name;
            assert!(
                (num - gv[i]).abs() <= 1e-6 * scale,
                "{name}[{i}]: analytic {}, numeric {num} (scale {scale:e})",
                gv[i]
            );
        }
    }
}
