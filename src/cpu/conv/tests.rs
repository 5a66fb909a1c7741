//! Every algorithm on every available ISA against the reference convolution, on random data
//! with odd sizes, channels and paddings.
//!
//! Tolerance, relative to the largest |output| of the reference: 1e-5 for direct and implicit
//! GEMM (the same products summed in another order), 1e-5 for F(2x2) Winograd and 1e-4 for
//! F(4x4), whose transforms multiply by up to 8 (A) and 4-5 (B) before dividing (G) and so
//! lose a few more bits; these are the measured worst cases times about 4.

use super::*;
use crate::cpu::conv2d_backward_reference;
use crate::rng::Rng;
use crate::tensor::{Padding, Wanted};
use winograd::Schedule;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, &rng.uniform_vec(n, -1.0, 1.0)).unwrap()
}

fn tolerance(algo: ConvAlgo) -> f32 {
    match algo {
        ConvAlgo::Winograd4 => 1e-4,
        _ => 1e-5,
    }
}

/// (n, h, w, cin, cout, kernel, stride, padding)
type Case = (usize, usize, usize, usize, usize, usize, usize, Padding);

const CASES: [Case; 10] = [
    (1, 1, 1, 1, 1, 3, 1, Padding::Same),
    (1, 3, 5, 3, 17, 3, 1, Padding::Same),
    (2, 7, 9, 17, 33, 3, 1, Padding::Same),
    (1, 17, 13, 63, 65, 3, 1, Padding::Same),
    (3, 9, 6, 5, 7, 3, 1, Padding::Valid),
    (1, 11, 10, 16, 40, 3, 1, Padding::Explicit([2, 0, 1, 3])),
    (1, 15, 14, 20, 48, 5, 2, Padding::Same),
    (1, 8, 9, 9, 31, 1, 1, Padding::Valid),
    (1, 30, 31, 64, 96, 3, 1, Padding::Same),
    // F(4x4)'s V rows would be a multiple of 4 KB apart (36 * 256 floats): laid out further.
    (1, 6, 7, 256, 20, 3, 1, Padding::Same),
];

#[test]
fn every_algorithm_matches_the_reference() {
    let mut rng = Rng::new(11);
    for (c, &(n, h, w, cin, cout, k, s, padding)) in CASES.iter().enumerate() {
        let x = random(&[n, h, w, cin], &mut rng);
        let kernel = random(&[k, k, cin, cout], &mut rng);
        let bias = random(&[cout], &mut rng);
        // The scale is that of the linear output, so that a ReLU case whose outputs are all
        // clipped still compares against a meaningful tolerance.
        let linear = Conv2dSpec {
            stride: [s, s],
            padding,
            activation: Activation::Linear,
        };
        let scale = conv2d_reference(&x, &kernel, Some(&bias), &linear)
            .unwrap()
            .max_abs();
        assert!(scale > 0.0);
        for activation in [Activation::Linear, Activation::Relu] {
            let spec = Conv2dSpec {
                stride: [s, s],
                padding,
                activation,
            };
            let want = conv2d_reference(&x, &kernel, Some(&bias), &spec).unwrap();
            let g = spec
                .geometry(x.shape(), kernel.shape(), Some(bias.shape()))
                .unwrap();
            for algo in ConvAlgo::ALL.into_iter().filter(|a| a.supports(&g)) {
                for isa in Isa::all_available() {
                    // Twice: the second run uses the plan the first one cached.
                    let w = LayerParams::new(kernel.clone(), Some(bias.clone()));
                    for _ in 0..2 {
                        let got = conv2d_with(algo, isa, &x, &w, &spec).unwrap();
                        assert_eq!(got.shape(), want.shape());
                        let mut worst = 0f32;
                        for (a, b) in got.data().iter().zip(want.data()) {
                            assert!(a.is_finite(), "case {c} {algo} {isa}: {a}");
                            worst = worst.max((a - b).abs());
                        }
                        assert!(
                            worst <= tolerance(algo) * scale,
                            "case {c} {algo} {isa} {activation:?}: max|diff| {worst} > {} * {scale}",
                            tolerance(algo)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn winograd_refuses_other_geometries() {
    let mut rng = Rng::new(3);
    let x = random(&[1, 8, 8, 4], &mut rng);
    let k = random(&[3, 3, 4, 5], &mut rng);
    let spec = Conv2dSpec {
        stride: [2, 2],
        ..Conv2dSpec::same_relu()
    };
    let err = conv2d_with(
        ConvAlgo::Winograd4,
        Isa::Portable,
        &x,
        &LayerParams::new(k, None),
        &spec,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("3x3 stride-1"), "{err}");
}

#[test]
fn nan_in_the_input_reaches_the_output() {
    let mut rng = Rng::new(5);
    let mut x = random(&[1, 9, 9, 16], &mut rng);
    x.data_mut()[4 * 9 * 16 + 4 * 16] = f32::NAN;
    let k = random(&[3, 3, 16, 8], &mut rng);
    for algo in ConvAlgo::ALL {
        let y = conv2d_with(
            algo,
            Isa::best(),
            &x,
            &LayerParams::new(k.clone(), None),
            &Conv2dSpec::same_relu(),
        )
        .unwrap();
        assert!(y.data().iter().any(|v| v.is_nan()), "{algo} hid a NaN");
    }
}

#[test]
fn auto_picks_per_layer() {
    let spec = Conv2dSpec::same_relu();
    let g = |h: usize, cin: usize| {
        spec.geometry(
            &crate::tensor::Shape::new([1, h, h, cin]),
            &crate::tensor::Shape::new([3, 3, cin, 64]),
            None,
        )
        .unwrap()
    };
    assert_eq!(ConvAlgo::auto(&g(224, 3)), ConvAlgo::ImplicitGemm);
    assert_eq!(ConvAlgo::auto(&g(224, 64)), ConvAlgo::Winograd4);
    assert_eq!(ConvAlgo::auto(&g(14, 512)), ConvAlgo::ImplicitGemm);
    for a in ConvAlgo::ALL {
        assert_eq!(ConvAlgo::parse(a.name()), Some(a));
    }
}

#[test]
fn fused_pooling_matches_convolution_then_pooling() {
    use crate::cpu::max_pool2d_reference;
    let mut rng = Rng::new(21);
    // (n, h, w, cin, cout): odd and even sizes, down to one pooled pixel.
    for (n, h, w, cin, cout) in [
        (1, 9, 7, 17, 33),
        (2, 12, 10, 16, 20),
        (1, 5, 13, 8, 7),
        (1, 2, 3, 4, 5),
    ] {
        let x = random(&[n, h, w, cin], &mut rng);
        let kernel = random(&[3, 3, cin, cout], &mut rng);
        let bias = random(&[cout], &mut rng);
        let spec = Conv2dSpec::same_relu();
        let conv = conv2d_reference(&x, &kernel, Some(&bias), &spec).unwrap();
        let want = max_pool2d_reference(&conv, &crate::tensor::Pool2dSpec::vgg()).unwrap();
        let scale = conv.max_abs().max(1e-3);
        for algo in ConvAlgo::ALL {
            for isa in Isa::all_available() {
                let params = LayerParams::new(kernel.clone(), Some(bias.clone()));
                let got = conv2d_pool_with(algo, isa, &x, &params, &spec).unwrap();
                assert_eq!(got.shape(), want.shape(), "{algo} {isa} {h}x{w}");
                for (a, b) in got.data().iter().zip(want.data()) {
                    assert!(
                        a.is_finite() && (a - b).abs() <= tolerance(algo) * scale,
                        "{algo} {isa} {h}x{w}: {a} vs {b}"
                    );
                }
                // Winograd's fused pooling gives exactly its own convolution, then pooling.
                let unfused = conv2d_with(algo, isa, &x, &params, &spec)
                    .and_then(|y| max_pool2d_reference(&y, &crate::tensor::Pool2dSpec::vgg()))
                    .unwrap();
                assert_eq!(got.data(), unfused.data(), "{algo} {isa} {h}x{w}");
            }
        }
    }
}

#[test]
fn fused_pooling_refuses_an_output_smaller_than_the_window() {
    let mut rng = Rng::new(4);
    let x = random(&[1, 1, 6, 4], &mut rng);
    let k = random(&[3, 3, 4, 5], &mut rng);
    for algo in ConvAlgo::ALL {
        let err = conv2d_pool_with(
            algo,
            Isa::Portable,
            &x,
            &LayerParams::new(k.clone(), None),
            &Conv2dSpec::same_relu(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("smaller than the window"), "{algo}: {err}");
    }
}

/// The gradients on every ISA, with the input gradient's convolution forced to each algorithm
/// (where it applies), against the reference gradients. Tolerances relative to the largest
/// reference gradient: the forward algorithms' for the input gradient (it is their forward
/// convolution), and 1e-5 for the kernel and bias gradients, whose sums run over up to
/// 3 * 30 * 31 = 2790 pixels here (measured worst about 1e-6).
#[test]
fn backward_matches_the_reference() {
    let mut rng = Rng::new(13);
    for (c, &(n, h, w, cin, cout, k, s, padding)) in CASES.iter().enumerate() {
        let x = random(&[n, h, w, cin], &mut rng);
        let kernel = random(&[k, k, cin, cout], &mut rng);
        let bias = random(&[cout], &mut rng);
        for activation in [Activation::Linear, Activation::Relu] {
            let spec = Conv2dSpec {
                stride: [s, s],
                padding,
                activation,
            };
            let y = conv2d_reference(&x, &kernel, Some(&bias), &spec).unwrap();
            let dy = random(y.dims(), &mut rng);
            let want = conv2d_backward_reference(&x, &y, &dy, &kernel, &spec, Wanted::ALL).unwrap();
            let close = |what: &str, got: &Tensor, want: &Tensor, tol: f32| {
                assert_eq!(got.shape(), want.shape(), "case {c} {what}");
                let scale = want.max_abs().max(1e-6);
                for (a, b) in got.data().iter().zip(want.data()) {
                    assert!(
                        a.is_finite() && (a - b).abs() <= tol * scale,
                        "case {c} {activation:?} {what}: {a} vs {b} (scale {scale})"
                    );
                }
            };
            for isa in Isa::all_available() {
                for forced in [None].into_iter().chain(ConvAlgo::ALL.map(Some)) {
                    let params = LayerParams::new(kernel.clone(), Some(bias.clone()));
                    // Twice: the second run reuses the flipped kernel cached by the first.
                    for _ in 0..2 {
                        let got = conv2d_backward_with(
                            forced,
                            isa,
                            &x,
                            &y,
                            &dy,
                            &params,
                            &spec,
                            Wanted::ALL,
                        )
                        .unwrap();
                        let tol = tolerance(forced.unwrap_or(ConvAlgo::Winograd4));
                        let what = format!("{isa} {forced:?}");
                        close(
                            &format!("{what} dx"),
                            got.input.as_ref().unwrap(),
                            want.input.as_ref().unwrap(),
                            tol,
                        );
                        close(
                            &format!("{what} dk"),
                            got.kernel.as_ref().unwrap(),
                            want.kernel.as_ref().unwrap(),
                            1e-5,
                        );
                        close(
                            &format!("{what} db"),
                            got.bias.as_ref().unwrap(),
                            want.bias.as_ref().unwrap(),
                            1e-5,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_flipped_kernel_follows_the_weights() {
    let mut rng = Rng::new(17);
    let x = random(&[1, 6, 5, 4], &mut rng);
    let k = random(&[3, 3, 4, 3], &mut rng);
    let spec = Conv2dSpec::same_relu();
    let mut params = LayerParams::new(k.clone(), None);
    let y = conv2d_reference(&x, &k, None, &spec).unwrap();
    let dy = random(y.dims(), &mut rng);
    let isa = Isa::best();
    let first = conv2d_backward_with(None, isa, &x, &y, &dy, &params, &spec, Wanted::INPUT)
        .unwrap()
        .input
        .unwrap();
    // Change the weights: the cached flipped kernel must not be used again.
    let (kt, _) = params.tensors_mut();
    for v in kt.data_mut() {
        *v *= -2.0;
    }
    let k2 = params.kernel().clone();
    let again = conv2d_backward_with(None, isa, &x, &y, &dy, &params, &spec, Wanted::INPUT)
        .unwrap()
        .input
        .unwrap();
    let want = conv2d_backward_reference(&x, &y, &dy, &k2, &spec, Wanted::INPUT)
        .unwrap()
        .input
        .unwrap();
    for ((a, b), f) in again.data().iter().zip(want.data()).zip(first.data()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        assert!(
            (a + 2.0 * f).abs() <= 1e-4 * (1.0 + f.abs()),
            "{a} vs -2 * {f}"
        );
    }
}

/// A 3x3 stride-1 layer (what Winograd runs) with random input, kernel and bias.
struct Layer3x3 {
    x: Tensor,
    kernel: Tensor,
    bias: Tensor,
    spec: Conv2dSpec,
    g: ConvGeometry,
}

/// One [`Layer3x3`] for each 3x3 stride-1 case of [`CASES`], with `activation`.
fn layers_3x3(rng: &mut Rng, activation: Activation) -> Vec<Layer3x3> {
    CASES
        .iter()
        .filter(|&&(.., k, s, _)| k == 3 && s == 1)
        .map(|&(n, h, w, cin, cout, _, _, padding)| {
            let x = random(&[n, h, w, cin], rng);
            let kernel = random(&[3, 3, cin, cout], rng);
            let bias = random(&[cout], rng);
            let spec = Conv2dSpec {
                stride: [1, 1],
                padding,
                activation,
            };
            let g = spec
                .geometry(x.shape(), kernel.shape(), Some(bias.shape()))
                .unwrap();
            Layer3x3 {
                x,
                kernel,
                bias,
                spec,
                g,
            }
        })
        .collect()
}

/// `Variant::F4Bf16` (F(4x4) on the points 0, ±1, 1/2, -2) is exact arithmetic like F4: in
/// f32, forward and kernel gradient, within F(4x4)'s tolerance of the reference on every 3x3
/// stride-1 case. The bf16 path uses it; this checks its matrices apart from bf16's rounding.
#[test]
fn f4_on_the_bf16_points_matches_the_reference_in_f32() {
    let mut rng = Rng::new(31);
    let layers = layers_3x3(&mut rng, Activation::Linear);
    let mut checked = 0;
    for (c, l) in layers.iter().enumerate() {
        let (x, kernel, bias, spec, g) = (&l.x, &l.kernel, &l.bias, &l.spec, &l.g);
        let (cin, cout) = (g.cin, g.cout);
        let want = conv2d_reference(x, kernel, Some(bias), spec).unwrap();
        let dy = random(want.dims(), &mut rng);
        let want_dk = conv2d_backward_reference(x, &want, &dy, kernel, spec, Wanted::PARAMS)
            .unwrap()
            .kernel
            .unwrap();
        for isa in Isa::all_available() {
            let ww = WinogradWeights::new(Variant::F4Bf16, isa, kernel.data(), cin, cout);
            let mut got = vec![0f32; want.numel()];
            conv_winograd(&ww, x.data(), Some(bias.data()), false, g, false, &mut got);
            let mut dk = vec![0f32; want_dk.numel()];
            kernel_grad_winograd(Variant::F4Bf16, isa, x.data(), dy.data(), g, &mut dk);
            for (what, got, want) in [("forward", &got[..], &want), ("dk", &dk[..], &want_dk)] {
                let scale = want.max_abs().max(1e-6);
                for (a, b) in got.iter().zip(want.data()) {
                    assert!(
                        a.is_finite() && (a - b).abs() <= tolerance(ConvAlgo::Winograd4) * scale,
                        "case {c} {isa} {what}: {a} vs {b} (scale {scale})"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// The two schedules of Winograd (all threads per phase, or a block per thread) compute the
/// same operations in the same order: identical bits, pooled or not, F(2x2) and F(4x4), on a
/// pool of two threads whatever the machine.
#[test]
fn winograd_schedules_agree_bit_for_bit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut rng = Rng::new(37);
    let layers = layers_3x3(&mut rng, Activation::Relu);
    let mut checked = 0;
    for l in &layers {
        let (x, kernel, bias, g) = (&l.x, &l.kernel, &l.bias, &l.g);
        let (n, h, w, cin, cout) = (g.n, g.h, g.w, g.cin, g.cout);
        for variant in [Variant::F2, Variant::F4, Variant::F4Bf16] {
            for isa in Isa::all_available() {
                let ww = WinogradWeights::new(variant, isa, kernel.data(), cin, cout);
                for pooled in [false, true] {
                    let len = if pooled {
                        g.n * (g.oh / 2) * (g.ow / 2) * cout
                    } else {
                        g.n * g.oh * g.ow * cout
                    };
                    let run = |schedule| {
                        let mut out = vec![f32::NAN; len];
                        pool.install(|| {
                            winograd::conv_winograd_scheduled(
                                schedule,
                                true,
                                &ww,
                                x.data(),
                                Some(bias.data()),
                                true,
                                g,
                                pooled,
                                &mut out,
                            )
                        });
                        out
                    };
                    let (shared, per_thread) = (run(Schedule::Shared), run(Schedule::PerThread));
                    assert!(shared.iter().all(|v| v.is_finite()), "{variant:?} {isa}");
                    assert!(
                        shared
                            .iter()
                            .zip(&per_thread)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{variant:?} {isa} {n}x{h}x{w}x{cin}->{cout} pooled {pooled}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}

/// bf16 Winograd with V written as bf16 pairs and read in place gives the same bits as V in
/// f32, rounded and packed by the GEMM (the same rounding, the same kernel and order), on both
/// schedules, pooled or not, odd and even channel counts (odd ones take the packing path).
#[test]
fn bf16_winograd_in_place_v_matches_the_packed_path_bit_for_bit() {
    if !crate::cpu::gemm::bf16::available() {
        eprintln!("SKIP bf16 in-place V: this CPU lacks AVX512-BF16 (or KEEL_ISA caps it)");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut rng = Rng::new(41);
    for &(n, h, w, cin, cout) in &[
        (1, 9, 7, 16, 24),
        (2, 17, 13, 18, 33),
        (1, 30, 31, 64, 96),
        (1, 11, 12, 17, 40),
        // Cin a multiple of 32, as AMX reads V in place: 12 or 35 tiles, and 48 or 150
        // (whole blocks of 32 rows and a ragged rest).
        (1, 13, 10, 32, 40),
        (2, 9, 30, 96, 33),
    ] {
        let x = random(&[n, h, w, cin], &mut rng);
        let kernel = random(&[3, 3, cin, cout], &mut rng);
        let bias = random(&[cout], &mut rng);
        let spec = Conv2dSpec::same_relu();
        let g = spec
            .geometry(x.shape(), kernel.shape(), Some(bias.shape()))
            .unwrap();
        for variant in [Variant::F2, Variant::F4Bf16] {
            let ww = WinogradWeights::new_bf16(variant, kernel.data(), cin, cout);
            for pooled in [false, true] {
                for schedule in [Schedule::Shared, Schedule::PerThread] {
                    let len = if pooled {
                        n * (h / 2) * (w / 2) * cout
                    } else {
                        n * h * w * cout
                    };
                    let run = |pairs| {
                        let mut out = vec![f32::NAN; len];
                        pool.install(|| {
                            winograd::conv_winograd_scheduled(
                                schedule,
                                pairs,
                                &ww,
                                x.data(),
                                Some(bias.data()),
                                true,
                                &g,
                                pooled,
                                &mut out,
                            )
                        });
                        out
                    };
                    let (in_place, packed) = (run(true), run(false));
                    assert!(packed.iter().all(|v| v.is_finite()));
                    assert!(
                        in_place
                            .iter()
                            .zip(&packed)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{variant:?} {schedule:?} pooled {pooled} {n}x{h}x{w}x{cin}->{cout}"
                    );
                }
            }
        }
    }
}
