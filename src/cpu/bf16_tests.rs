//! `--precision bf16` beyond the forward convolutions: the dense layers (forward and
//! backward) and the input gradient of a convolution, against f64 sums of the operands
//! rounded to bfloat16 (dense) or against the f64 reference (convolution).
//!
//! Tolerances:
//! - dense: per element `1e-5 * (sum_k |a_k b_k| + |bias|)` over the rounded operands, the
//!   bf16 GEMM's own bound (`gemm::bf16`): the only differences left are f32 summation order.
//! - convolution input gradient: per element `9e-2 * S` against the exact gradient, where `S`
//!   is the same gradient of `|dz|` through `|kernel|` (the magnitude of the sum). The input
//!   gradient is a forward convolution on the bf16 kernels, whose F(4x4) transforms amplify
//!   the 2^-9 rounding most where the sum is short: the worst seen is 4.3e-2 (9 channels of
//!   `dz` into F(4x4)), 2.0e-2 at 24. And strictly further from the exact gradient than the
//!   f32 path, else bf16 is not running. The kernel and bias
//!   gradients stay f32: bit-identical to the f32 path.

use super::gemm::bf16::{available, bf16_to_f32, round_bf16};
use super::{Cpu, conv2d_backward_reference};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, Conv2dSpec, DType, LayerParams, Padding, Tensor, Wanted};

fn skip(test: &str) -> bool {
    if available() {
        return false;
    }
    eprintln!("SKIPPED {test}: this CPU lacks AVX512-BF16 (or KEEL_ISA caps it below avx512)");
    true
}

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, &rng.uniform_vec(n, -1.0, 1.0)).unwrap()
}

fn r(x: f32) -> f64 {
    f64::from(bf16_to_f32(round_bf16(x)))
}

/// `C = A (m x k) B (k x n)` over bf16-rounded operands in f64, and `sum |a b|` per element.
fn rounded_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut c, mut s) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for p in 0..k {
            let av = r(a[i * k + p]);
            for j in 0..n {
                let prod = av * r(b[p * n + j]);
                c[i * n + j] += prod;
                s[i * n + j] += prod.abs();
            }
        }
    }
    (c, s)
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

fn assert_within(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (f64::from(g) - w).abs();
        // Written so that NaN fails.
        assert!(
            err <= 1e-5 * s,
            "{what}[{i}]: got {g}, want {w} (sum|ab| {s})"
        );
    }
}

#[test]
fn bf16_dense_forward_and_backward_round_their_operands() {
    if skip("bf16_dense_forward_and_backward_round_their_operands") {
        return;
    }
    let cpu = Cpu::new().with_bf16().unwrap();
    let mut rng = Rng::new(7);
    for (n, fin, fout) in [(1, 1, 1), (3, 17, 63), (5, 100, 3), (17, 63, 33)] {
        let x = random(&[n, fin], &mut rng);
        let w = LayerParams::new(
            random(&[fin, fout], &mut rng),
            Some(random(&[fout], &mut rng)),
        );
        let (xd, kd) = (x.data(), w.kernel().data());
        let bias = w.bias().unwrap().data();

        let y = cpu.dense(&x, &w, Activation::Relu).unwrap();
        let (mut want, mut scale) = rounded_product(xd, kd, n, fin, fout);
        for (i, (v, s)) in want.iter_mut().zip(scale.iter_mut()).enumerate() {
            let b = f64::from(bias[i % fout]);
            *v = (*v + b).max(0.0);
            *s += b.abs();
        }
        assert_within(&format!("dense {n}x{fin}x{fout}"), y.data(), &want, &scale);

        let dy = random(&[n, fout], &mut rng);
        let grads = cpu
            .dense_backward(&x, &y, &dy, &w, Activation::Relu, Wanted::ALL)
            .unwrap();
        // dz: the ReLU's mask on dy, in f32 (exact), then rounded by the products.
        let dz: Vec<f32> = dy
            .data()
            .iter()
            .zip(y.data())
            .map(|(&g, &yv)| if yv > 0.0 { g } else { 0.0 })
            .collect();
        let (want_dx, s_dx) = rounded_product(&dz, &transpose(kd, fin, fout), n, fout, fin);
        assert_within("dense dx", grads.input.unwrap().data(), &want_dx, &s_dx);
        let (want_dk, s_dk) = rounded_product(&transpose(xd, n, fin), &dz, fin, n, fout);
        assert_within("dense dW", grads.kernel.unwrap().data(), &want_dk, &s_dk);
    }
}

#[test]
fn bf16_conv_input_gradient_runs_in_bf16_and_the_kernel_gradient_stays_f32() {
    let test = "bf16_conv_input_gradient_runs_in_bf16_and_the_kernel_gradient_stays_f32";
    if skip(test) {
        return;
    }
    let (bf16, fp32) = (Cpu::new().with_bf16().unwrap(), Cpu::new());
    let mut rng = Rng::new(29);
    // (n, h, w, cin, cout): enough tiles for Winograd, and a small one for implicit GEMM.
    for (n, h, w, cin, cout) in [(2, 31, 29, 16, 24), (1, 7, 9, 17, 33), (3, 17, 17, 63, 9)] {
        let spec = Conv2dSpec {
            stride: [1, 1],
            padding: Padding::Same,
            activation: Activation::Relu,
        };
        let x = random(&[n, h, w, cin], &mut rng);
        let params = LayerParams::new(
            random(&[3, 3, cin, cout], &mut rng),
            Some(random(&[cout], &mut rng)),
        );
        let y = fp32.conv2d(&x, &params, &spec).unwrap();
        let dy = random(y.shape().dims(), &mut rng);
        let g16 = bf16
            .conv2d_backward(&x, &y, &dy, &params, &spec, Wanted::ALL)
            .unwrap();
        let g32 = fp32
            .conv2d_backward(&x, &y, &dy, &params, &spec, Wanted::ALL)
            .unwrap();
        let f64s = |t: &Tensor| t.cast(DType::F64).unwrap();
        let dx_of = |dy: &Tensor, kernel: &Tensor, spec: &Conv2dSpec| {
            let dx = conv2d_backward_reference(
                &f64s(&x),
                &f64s(&y),
                &f64s(dy),
                &f64s(kernel),
                spec,
                Wanted::INPUT,
            )
            .unwrap()
            .input
            .unwrap();
            dx.values::<f64>().unwrap().to_vec()
        };
        let exact = dx_of(&dy, params.kernel(), &spec);
        // S: |dz| (dy where the ReLU passed) through |kernel|, with no activation.
        let abs = |t: &Tensor| {
            let v: Vec<f32> = t.data().iter().map(|v| v.abs()).collect();
            Tensor::from_vec(t.dims(), &v).unwrap()
        };
        let dz_abs: Vec<f32> = dy
            .data()
            .iter()
            .zip(y.data())
            .map(|(&g, &yv)| if yv > 0.0 { g.abs() } else { 0.0 })
            .collect();
        let dz_abs = Tensor::from_vec(dy.dims(), &dz_abs).unwrap();
        let linear = Conv2dSpec {
            activation: Activation::Linear,
            ..spec
        };
        let scale = dx_of(&dz_abs, &abs(params.kernel()), &linear);
        // The worst error as a fraction of S; NaN propagates (and then fails).
        let worst = |got: &Tensor| {
            got.data()
                .iter()
                .zip(&exact)
                .zip(&scale)
                .map(|((&g, &e), &s)| (f64::from(g) - e).abs() / s.max(1e-30))
                .fold(0f64, |m, d| {
                    if d.is_nan() || m.is_nan() {
                        f64::NAN
                    } else {
                        m.max(d)
                    }
                })
        };
        let (e16, e32) = (
            worst(g16.input.as_ref().unwrap()),
            worst(g32.input.as_ref().unwrap()),
        );
        eprintln!(
            "conv {n}x{h}x{w}x{cin}->{cout} dx: worst error bf16 {e16:.2e}, f32 {e32:.2e} of S"
        );
        assert!(e16 <= 9e-2, "bf16 dx error {e16} of S > 9e-2");
        assert!(e16 > e32, "bf16 dx is as close as f32: is bf16 running?");
        assert_eq!(g16.kernel.unwrap().data(), g32.kernel.unwrap().data());
        assert_eq!(g16.bias.unwrap().data(), g32.bias.unwrap().data());
    }
}
