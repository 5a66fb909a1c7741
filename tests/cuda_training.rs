//! Training on the CUDA backend (`kernels/train.cu`), without a GPU: every backward and
//! optimizer op run from the same CUDA source on the CPU build of the kernels, through
//! `CudaBackend`'s own launch code, compared with `keel::cpu::CpuReference` on random inputs of
//! odd shapes; then one fine-tuning step of the micro VGG16 against the same step on the CPU,
//! and two seeded CUDA runs of it compared bit for bit.
//!
//! Errors are `max|got - want| / max|want|` (`check::relative_error`: NaN, or any non-finite
//! value, is an infinite error, so it never passes). Where the CUDA kernels do the reference's
//! f32 operations in the reference's order (pool gradients, masks, optimizer steps) the
//! tolerance is 0: they must agree bit for bit.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use keel::cpu::CpuReference;
use keel::cuda::check::relative_error;
use keel::cuda::{CudaBackend, Gpu};
use keel::nn::head::{Head, HeadSpec, Mode};
use keel::nn::optim::{Optimizer, OptimizerKind};
use keel::nn::{Classifier, ConvTail, Vgg};
use keel::rng::Rng;
use keel::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, Device, GlobalPool, LayerGrads, LayerParams,
    Padding, Pool2dSpec, Tensor, Wanted,
};

/// The CPU build, or None with a printed reason.
fn cpu_build() -> Option<Arc<Gpu>> {
    match Gpu::cpu_emulated() {
        Ok(g) => Some(g),
        Err(e) => {
            common::skip(format!("kernels cannot be built for the CPU here: {e}"));
            None
        }
    }
}

fn backend() -> Option<CudaBackend> {
    cpu_build().map(CudaBackend::new)
}

fn random(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, &rng.uniform_vec(n, lo, hi)).unwrap()
}

/// Small integers: pools get ties to route.
fn ties(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = rng
        .uniform_vec(n, -3.0, 3.0)
        .iter()
        .map(|v| v.round())
        .collect();
    Tensor::from_vec(shape, &v).unwrap()
}

fn up(be: &CudaBackend, t: &Tensor) -> Tensor {
    let d = be.upload(t.clone()).unwrap();
    assert_eq!(d.device(), Device::Cuda(0));
    d
}

fn host(be: &CudaBackend, t: &Tensor) -> Tensor {
    assert_eq!(t.device(), Device::Cuda(0), "results stay on the device");
    be.to_host(t.clone()).unwrap()
}

/// `check::relative_error` of a device tensor against a host one, shapes equal. A reference
/// of all zeros (a ReLU mask that blocks everything) must be matched exactly.
fn error(be: &CudaBackend, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got = host(be, got);
    let want: Vec<f64> = want.data().iter().map(|&v| v as f64).collect();
    if want.iter().all(|&v| v == 0.0) {
        return if got.data().iter().all(|&v| v == 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    relative_error(got.data(), &want)
}

/// Bit-for-bit equality of a device tensor and a host one (NaN equal to NaN of the same bits).
fn assert_bits(be: &CudaBackend, what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = host(be, got);
    for (i, (g, w)) in got.data().iter().zip(want.data()).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn relu_backward_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(1);
    let mut y = random(&[3, 17, 5], -1.0, 1.0, &mut rng);
    y.data_mut()[7] = f32::NAN; // NaN in y blocks the gradient, as NaN > 0 is false
    y.data_mut()[8] = 0.0;
    let dy = random(&[3, 17, 5], -1.0, 1.0, &mut rng);
    let want = CpuReference.relu_backward(&y, &dy).unwrap();
    let got = be.relu_backward(&up(&be, &y), &up(&be, &dy)).unwrap();
    // Tolerance 0: a selection, no arithmetic.
    assert_bits(&be, "relu_backward", &got, &want);
    let bad = up(&be, &Tensor::zeros([3, 17, 4]).unwrap());
    assert!(be.relu_backward(&up(&be, &y), &bad).is_err());
    let e = be.relu_backward(&y, &up(&be, &dy)).unwrap_err().to_string();
    assert!(e.contains("upload it first"), "{e}");
}

#[test]
fn max_pool_backward_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(2);
    for (shape, size, stride, padding) in [
        ([2, 7, 9, 3], [2, 2], [2, 2], Padding::Valid),
        ([1, 7, 9, 5], [3, 3], [2, 2], Padding::Same),
        ([1, 5, 6, 2], [3, 2], [1, 1], Padding::Valid),
        ([1, 1, 1, 1], [1, 1], [1, 1], Padding::Valid),
        (
            [1, 6, 5, 3],
            [2, 3],
            [1, 2],
            Padding::Explicit([1, 0, 2, 1]),
        ),
    ] {
        let spec = Pool2dSpec {
            size,
            stride,
            padding,
        };
        let mut x = ties(&shape, &mut rng);
        if x.numel() > 10 {
            x.data_mut()[10] = f32::NAN; // NaN wins its windows
        }
        let g = spec.geometry(x.shape()).unwrap();
        let dy = random(g.output_shape().dims(), -1.0, 1.0, &mut rng);
        let want = CpuReference.max_pool2d_backward(&x, &dy, &spec).unwrap();
        let got = be
            .max_pool2d_backward(&up(&be, &x), &up(&be, &dy), &spec)
            .unwrap();
        // Tolerance 0: the same windows, the same first maximum, the same additions in the
        // same order.
        assert_bits(&be, &format!("max_pool {shape:?} {spec:?}"), &got, &want);
    }
}

#[test]
fn global_pool_backward_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(3);
    let mut x = ties(&[2, 3, 5, 7], &mut rng);
    x.data_mut()[9] = f32::NAN;
    let dy = random(&[2, 7], -1.0, 1.0, &mut rng);
    for kind in [GlobalPool::Avg, GlobalPool::Max] {
        let want = CpuReference.global_pool_backward(&x, &dy, kind).unwrap();
        let got = be
            .global_pool_backward(&up(&be, &x), &up(&be, &dy), kind)
            .unwrap();
        // Tolerance 0: one product (avg) or one selection (max) per element.
        assert_bits(&be, &format!("global pool {kind:?}"), &got, &want);
    }
    let bad = up(&be, &Tensor::zeros([2, 6]).unwrap());
    assert!(
        be.global_pool_backward(&up(&be, &x), &bad, GlobalPool::Max)
            .is_err()
    );
}

/// Compare each wanted gradient; `tol` relative to the gradient's max|ref|.
fn compare_grads(be: &CudaBackend, what: &str, got: &LayerGrads, want: &LayerGrads, tol: f64) {
    let pairs = [
        ("input", &got.input, &want.input),
        ("kernel", &got.kernel, &want.kernel),
        ("bias", &got.bias, &want.bias),
    ];
    for (name, g, w) in pairs {
        match (g, w) {
            (Some(g), Some(w)) => {
                let err = error(be, g, w);
                assert!(err <= tol, "{what} {name}: error {err:.2e} > {tol:.0e}");
            }
            (None, None) => {}
            _ => panic!("{what} {name}: computed on one backend only"),
        }
    }
}

#[test]
fn dense_backward_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(4);
    for (n, fin, fout) in [(1, 1, 1), (3, 17, 5), (2, 70, 65), (5, 3, 129)] {
        let x = random(&[n, fin], -1.0, 1.0, &mut rng);
        let k = random(&[fin, fout], -1.0, 1.0, &mut rng);
        let b = random(&[fout], -1.0, 1.0, &mut rng);
        let dy = random(&[n, fout], -1.0, 1.0, &mut rng);
        for act in [Activation::Linear, Activation::Relu] {
            let cpu_w = LayerParams::new(k.clone(), Some(b.clone()));
            let mut y = CpuReference.dense(&x, &cpu_w, act).unwrap();
            if act == Activation::Relu && y.numel() > 2 {
                y.data_mut()[1] = f32::NAN; // blocks its gradient like a non-positive output
            }
            for wanted in [Wanted::ALL, Wanted::PARAMS, Wanted::INPUT] {
                let want = CpuReference
                    .dense_backward(&x, &y, &dy, &cpu_w, act, wanted)
                    .unwrap();
                let dev_w = LayerParams::new(up(&be, &k), Some(up(&be, &b)));
                let got = be
                    .dense_backward(
                        &up(&be, &x),
                        &up(&be, &y),
                        &up(&be, &dy),
                        &dev_w,
                        act,
                        wanted,
                    )
                    .unwrap();
                // f32 sums of at most 129 products of values in [-1, 1] in another order:
                // 1e-5 of the largest gradient (measured worst a few 1e-7).
                compare_grads(
                    &be,
                    &format!("dense ({n},{fin},{fout}) {act:?}"),
                    &got,
                    &want,
                    1e-5,
                );
            }
        }
    }
    // Host weights are uploaded once into the layer's cache, as the forward pass does.
    let (x, k) = (
        random(&[2, 3], -1.0, 1.0, &mut rng),
        random(&[3, 4], -1.0, 1.0, &mut rng),
    );
    let w = LayerParams::new(k.clone(), None);
    let dy = random(&[2, 4], -1.0, 1.0, &mut rng);
    let y = Tensor::zeros([2, 4]).unwrap();
    let got = be
        .dense_backward(
            &up(&be, &x),
            &up(&be, &y),
            &up(&be, &dy),
            &w,
            Activation::Linear,
            Wanted::ALL,
        )
        .unwrap();
    let want = CpuReference
        .dense_backward(
            &x,
            &y,
            &dy,
            &LayerParams::new(k, None),
            Activation::Linear,
            Wanted::ALL,
        )
        .unwrap();
    compare_grads(&be, "dense, host weights", &got, &want, 1e-5);
    let bad = up(&be, &Tensor::zeros([2, 5]).unwrap());
    let e = be
        .dense_backward(
            &up(&be, &x),
            &bad,
            &bad,
            &w,
            Activation::Linear,
            Wanted::ALL,
        )
        .unwrap_err();
    assert!(e.to_string().contains("gradient has shape"), "{e}");
}

#[test]
fn conv2d_backward_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(5);
    type Case = ([usize; 4], [usize; 4], [usize; 2], Padding);
    let cases: &[Case] = &[
        ([1, 1, 1, 1], [1, 1, 1, 1], [1, 1], Padding::Valid),
        ([1, 3, 3, 1], [3, 3, 1, 3], [1, 1], Padding::Same),
        ([2, 7, 6, 3], [3, 3, 3, 17], [1, 1], Padding::Same),
        ([1, 9, 11, 5], [3, 3, 5, 7], [2, 2], Padding::Same),
        ([3, 8, 10, 4], [3, 3, 4, 6], [2, 1], Padding::Valid),
        (
            [1, 5, 5, 2],
            [2, 3, 2, 4],
            [1, 1],
            Padding::Explicit([1, 0, 2, 1]),
        ),
        ([1, 2, 2, 1], [5, 5, 1, 2], [3, 3], Padding::Same),
        ([1, 4, 3, 70], [3, 3, 70, 9], [1, 1], Padding::Same),
    ];
    for (c, &(xs, ks, stride, padding)) in cases.iter().enumerate() {
        for activation in [Activation::Linear, Activation::Relu] {
            let spec = Conv2dSpec {
                stride,
                padding,
                activation,
            };
            let x = random(&xs, -1.0, 1.0, &mut rng);
            let k = random(&ks, -1.0, 1.0, &mut rng);
            let b = random(&ks[3..], -0.2, 0.2, &mut rng);
            let cpu_w = LayerParams::new(k.clone(), Some(b.clone()));
            let mut y = CpuReference.conv2d(&x, &cpu_w, &spec).unwrap();
            if activation == Activation::Relu && y.numel() > 3 {
                y.data_mut()[2] = f32::NAN; // NaN in y blocks the gradient
            }
            let dy = random(y.dims(), -1.0, 1.0, &mut rng);
            // Every case wants everything; a few ask for one half only.
            let wanted_list: &[Wanted] = if c % 3 == 2 {
                &[Wanted::ALL, Wanted::PARAMS, Wanted::INPUT]
            } else {
                &[Wanted::ALL]
            };
            for &wanted in wanted_list {
                let want = CpuReference
                    .conv2d_backward(&x, &y, &dy, &cpu_w, &spec, wanted)
                    .unwrap();
                let dev_w = LayerParams::new(up(&be, &k), Some(up(&be, &b)));
                let got = be
                    .conv2d_backward(
                        &up(&be, &x),
                        &up(&be, &y),
                        &up(&be, &dy),
                        &dev_w,
                        &spec,
                        wanted,
                    )
                    .unwrap();
                // f32 sums of at most 3*8*10 = 240 (kernel) or 3*3*70 = 630 (input) products
                // in [-1, 1], in another order: 1e-5 of the largest gradient.
                compare_grads(
                    &be,
                    &format!("conv {xs:?} {ks:?} {stride:?} {padding:?} {activation:?}"),
                    &got,
                    &want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn softmax_cross_entropy_matches_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(6);
    for (rows, classes) in [(1, 1), (5, 7), (3, 2), (17, 3)] {
        let z = random(&[rows, classes], -20.0, 20.0, &mut rng);
        let labels: Vec<usize> = (0..rows).map(|r| (r * 5 + 1) % classes).collect();
        let want = CpuReference.softmax_cross_entropy(&z, &labels).unwrap();
        let got = be.softmax_cross_entropy(&up(&be, &z), &labels).unwrap();
        // expf and logf may differ from Rust's by an ulp: 1e-6 relative.
        let scale = want.loss.abs().max(1e-30);
        assert!(
            (got.loss - want.loss).abs() <= 1e-6 * scale,
            "loss {} vs {}",
            got.loss,
            want.loss
        );
        if classes > 1 {
            for (name, g, w) in [
                ("probs", &got.probs, &want.probs),
                ("dlogits", &got.dlogits, &want.dlogits),
            ] {
                let err = error(&be, g, w);
                // A few f32 roundings of exp and the sum of up to 7 terms: 1e-6.
                assert!(err <= 1e-6, "{name} ({rows},{classes}): {err:.2e}");
            }
        }
    }
    // A NaN logit turns its row NaN on both backends; the other rows still agree.
    let mut z = random(&[3, 4], -5.0, 5.0, &mut rng);
    z.data_mut()[5] = f32::NAN;
    let want = CpuReference.softmax_cross_entropy(&z, &[0, 1, 2]).unwrap();
    let got = be.softmax_cross_entropy(&up(&be, &z), &[0, 1, 2]).unwrap();
    assert!(want.loss.is_nan() && got.loss.is_nan());
    let (gp, wp) = (host(&be, &got.probs), &want.probs);
    for (i, (g, w)) in gp.data().iter().zip(wp.data()).enumerate() {
        if (4..8).contains(&i) {
            assert!(g.is_nan() && w.is_nan(), "probs[{i}]: {g} vs {w}");
        } else {
            assert!(((g - w) as f64).abs() <= 1e-6, "probs[{i}]: {g} vs {w}");
        }
    }
    // Labels are checked before anything runs.
    let z = up(&be, &z);
    let e = be
        .softmax_cross_entropy(&z, &[0, 4, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 4 is out of range for 4 classes"), "{e}");
    let e = be
        .softmax_cross_entropy(&z, &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 labels for 3 rows"), "{e}");
}

#[test]
fn sum_squares_and_axpy_match_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(7);
    for len in [1, 17, 1000, 70_001] {
        let x = random(&[len], -2.0, 2.0, &mut rng);
        let want = CpuReference.sum_squares(&x).unwrap();
        let got = be.sum_squares(&up(&be, &x)).unwrap();
        // Exact f64 squares of f32 values, summed in f64 in another order: 1e-12.
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "sum_squares({len}): {got} vs {want}"
        );
        let y = random(&[len], -1.0, 1.0, &mut rng);
        let mut want_y = y.clone();
        CpuReference.axpy(0.37, &x, &mut want_y).unwrap();
        let y_dev = up(&be, &y);
        let mut got_y = y_dev.clone();
        be.axpy(0.37, &up(&be, &x), &mut got_y).unwrap();
        // Tolerance 0: the same f32 multiply and add, not contracted.
        assert_bits(&be, "axpy", &got_y, &want_y);
        // The update is a new buffer: clones of the old tensor keep their values.
        assert_bits(&be, "axpy's input", &y_dev, &y);
    }
    let mut y = up(&be, &Tensor::zeros([3]).unwrap());
    assert!(
        be.axpy(1.0, &up(&be, &Tensor::zeros([4]).unwrap()), &mut y)
            .is_err()
    );
}

#[test]
fn optimizer_steps_match_the_reference() {
    let Some(be) = backend() else { return };
    let mut rng = Rng::new(8);
    let shape = [3, 17, 5];
    let w0 = random(&shape, -1.0, 1.0, &mut rng);
    let grads: Vec<Tensor> = (0..3)
        .map(|_| random(&shape, -1.0, 1.0, &mut rng))
        .collect();
    let zeros = Tensor::zeros(shape).unwrap();
    for nesterov in [false, true] {
        let (mut w, mut v) = (w0.clone(), zeros.clone());
        let (mut dw, mut dv) = (up(&be, &w0), up(&be, &zeros));
        let keep = dw.clone();
        for g in &grads {
            CpuReference
                .sgd_step(&mut w, g, &mut v, 0.05, 0.9, nesterov)
                .unwrap();
            be.sgd_step(&mut dw, &up(&be, g), &mut dv, 0.05, 0.9, nesterov)
                .unwrap();
        }
        // Tolerance 0: the same f32 operations in the same order.
        assert_bits(&be, "sgd weights", &dw, &w);
        assert_bits(&be, "sgd velocity", &dv, &v);
        assert_bits(&be, "sgd's old weights", &keep, &w0);
    }
    for decay in [0.0, 0.004] {
        let (mut w, mut m, mut v) = (w0.clone(), zeros.clone(), zeros.clone());
        let (mut dw, mut dm, mut dv) = (up(&be, &w0), up(&be, &zeros), up(&be, &zeros));
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let (b1, b2) = (0.9f64, 0.999f64);
            let step = AdamStep {
                alpha: 1e-3 * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t)),
                beta1: b1,
                beta2: b2,
                epsilon: 1e-7,
                decay,
            };
            CpuReference
                .adam_step(&mut w, g, &mut m, &mut v, &step)
                .unwrap();
            be.adam_step(&mut dw, &up(&be, g), &mut dm, &mut dv, &step)
                .unwrap();
        }
        // Tolerance 0: the same f32 operations in the same order (sqrt and division are
        // correctly rounded on both).
        assert_bits(&be, "adam weights", &dw, &w);
        assert_bits(&be, "adam m", &dm, &m);
        assert_bits(&be, "adam v", &dv, &v);
    }
    let mut w = up(&be, &w0);
    let e = be
        .adam_step(
            &mut w,
            &up(&be, &Tensor::zeros([2]).unwrap()),
            &mut up(&be, &zeros),
            &mut up(&be, &zeros),
            &AdamStep {
                alpha: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-7,
                decay: 0.0,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("adam"), "{e}");
}

/// What one fine-tuning step gives: the loss, every gradient and every parameter after an
/// Adam step, on the host.
struct Step {
    loss: f64,
    names: Vec<String>,
    grads: Vec<Tensor>,
    updated: Vec<Tensor>,
}

/// Blocks 4 and 5 of the micro VGG16 plus a seeded head, and the input of block4_conv1 for a
/// 2x35x33x3 image batch (computed on the CPU: the forward ops are tested elsewhere).
fn fine_tune_model() -> (Classifier, Tensor, Vec<usize>) {
    let weights = keel::io::load_weights(&common::test_data("h5/micro_vgg16_notop.h5")).unwrap();
    let config = weights.identity().base_config([35, 33]);
    let vgg = Vgg::new(config, weights).unwrap();
    let mut rng = Rng::new(11);
    let image = random(&[2, 35, 33, 3], -100.0, 100.0, &mut rng);
    let x = vgg
        .forward_outputs(&CpuReference, &image, &["block3_pool"])
        .unwrap()
        .remove(0);
    let tail: ConvTail = vgg.tail("block4_conv1").unwrap();
    let spec = HeadSpec::parse("gap,dense8,relu", 3).unwrap();
    let head = Head::new(spec, tail.output_shape(), 5).unwrap();
    (Classifier::with_tail(tail, head).unwrap(), x, vec![2, 0])
}

fn fine_tune_step(be: &dyn Backend, model: &Classifier, x: &Tensor, labels: &[usize]) -> Step {
    let mut m = Classifier {
        tail: Some(model.tail.as_ref().unwrap().upload(be).unwrap()),
        head: model.head.upload(be).unwrap(),
    };
    let (logits, tape) = m
        .forward_train(be, x.clone(), Mode::Train(&mut Rng::new(0)))
        .unwrap();
    let ce = be.softmax_cross_entropy(&logits, labels).unwrap();
    let grads = m.backward(be, &tape, &ce.dlogits).unwrap();
    let kind = OptimizerKind::from_name("adam").unwrap();
    let mut opt = Optimizer::new(be, kind, &m.params()).unwrap();
    opt.step(be, m.params_mut(), &grads, 1e-3).unwrap();
    let names = m.params().iter().map(|p| p.name.to_string()).collect();
    let updated = m
        .params()
        .iter()
        .map(|p| be.to_host(p.tensor.clone()).unwrap())
        .collect();
    Step {
        loss: ce.loss,
        names,
        grads: grads.into_iter().map(|g| be.to_host(g).unwrap()).collect(),
        updated,
    }
}

#[test]
fn a_fine_tuning_step_matches_the_cpu_and_reproduces() {
    let Some(gpu) = cpu_build() else { return };
    let (model, x, labels) = fine_tune_model();
    let cuda = CudaBackend::new(gpu);
    let want = fine_tune_step(&CpuReference, &model, &x, &labels);
    let got = fine_tune_step(&cuda, &model, &x, &labels);
    assert_eq!(got.names, want.names);
    assert!(
        got.names.iter().any(|n| n.starts_with("block5_conv")),
        "{:?}",
        got.names
    );
    // Several layers of f32 sums in another order: 1e-5 of the loss.
    let loss_err = (got.loss - want.loss).abs() / want.loss.abs();
    eprintln!("loss {} vs {} (error {loss_err:.2e})", got.loss, want.loss);
    assert!(loss_err <= 1e-5, "loss {} vs {}", got.loss, want.loss);
    let lr = 1e-3;
    for (i, name) in want.names.iter().enumerate() {
        let (g, w) = (&got.grads[i], &want.grads[i]);
        let wv: Vec<f64> = w.data().iter().map(|&v| v as f64).collect();
        let err = relative_error(g.data(), &wv);
        let gmax = w.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("grad {name}: max|g| {gmax:.2e}, error {err:.2e}");
        if name.starts_with("block5_conv") && name.ends_with("kernel") {
            assert!(
                gmax > 0.0,
                "{name}: the gradient is all zeros; the check proves nothing"
            );
        }
        // Gradients back through up to 6 conv layers and a head, every sum in f32 in another
        // order: 1e-4 of each gradient's largest value, as the CPU's check against Keras.
        assert!(err <= 1e-4, "gradient of {name}: {err:.2e}");
        // Adam's first step moves each weight by about lr * sign(g); where the gradient is
        // tiny its sign (and so the step) may differ by rounding, by up to 2 lr. Elsewhere
        // the weights must agree to 1e-6 of the largest (f32 rounding of w - step).
        let (uw, ug) = (&want.updated[i], &got.updated[i]);
        let wmax = uw.data().iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let mut worst = 0f64;
        for (j, ((&a, &b), &gr)) in ug.data().iter().zip(uw.data()).zip(w.data()).enumerate() {
            let d = (a as f64 - b as f64).abs();
            let allowed = if gr.abs() <= 1e-3 * gmax {
                2.0 * lr + 1e-6 * wmax
            } else {
                1e-6 * wmax.max(lr)
            };
            assert!(d <= allowed, "{name}[{j}] after Adam: {a} vs {b} (g {gr})");
            worst = worst.max(d / wmax.max(1e-30));
        }
        eprintln!("updated {name}: error {worst:.2e}");
    }
    // Seeded runs reproduce bit for bit.
    let again = fine_tune_step(&cuda, &model, &x, &labels);
    assert_eq!(again.loss.to_bits(), got.loss.to_bits(), "loss");
    for (i, name) in got.names.iter().enumerate() {
        for (what, a, b) in [
            ("gradient", &again.grads[i], &got.grads[i]),
            ("updated", &again.updated[i], &got.updated[i]),
        ] {
            let same = a
                .data()
                .iter()
                .zip(b.data())
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{what} of {name} differs between two seeded runs");
        }
    }
}
