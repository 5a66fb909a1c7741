//! Convolutions and pools take their output from `Tensor::for_overwrite`: a large buffer freed
//! by an earlier tensor comes back with that tensor's values, not cleared. So every such kernel
//! must write every element of its output. Here the pool of freed buffers is first filled with
//! NaN, and each kernel's output must come out bit for bit as it does into a fresh, zeroed
//! buffer: an element left unwritten would stay NaN (or, with zeros, could pass unnoticed,
//! since a ReLU writes many zeros itself). The outputs here are larger than a last-level cache,
//! so they also exercise the streaming stores (`cpu::stream`), checked against the reference.
//!
//! One test function in its own binary: the pool is process-wide, and no other test may take
//! the poisoned buffers in between.

use keel::cpu::conv::{ConvAlgo, conv2d_bf16, conv2d_pool_with, conv2d_with};
use keel::cpu::conv2d_reference;
use keel::cpu::isa::Isa;
use keel::rng::Rng;
use keel::tensor::{AlignedVec, Conv2dSpec, LayerParams, Tensor};

/// Frees a NaN buffer of `len` floats into the pool (buffers of 32 MB and more are pooled).
fn poison(len: usize) {
    drop(Tensor::from_vec([len], &vec![f32::NAN; len]).unwrap());
}

fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn kernels_write_every_element_of_a_reused_buffer() {
    let mut rng = Rng::new(3);
    let spec = Conv2dSpec::same_relu();
    let (cin, cout) = (8, 128);
    let k = Tensor::from_vec(
        [3, 3, cin, cout],
        &rng.uniform_vec(9 * cin * cout, -0.3, 0.3),
    )
    .unwrap();
    let b = Tensor::from_vec([cout], &rng.uniform_vec(cout, -0.1, 0.1)).unwrap();
    let params = LayerParams::new(k, Some(b));
    // The premise: a poisoned buffer does come back, values and all.
    poison(1 << 23);
    let reused = Tensor::for_overwrite([1 << 23]).unwrap();
    assert!(
        reused.data().iter().all(|v| v.is_nan()),
        "the pool did not hand back its buffer"
    );
    drop(reused);
    let bf16 = keel::cpu::gemm::bf16::available();
    if !bf16 {
        eprintln!("SKIP the bf16 convolutions here: this CPU lacks AVX512-BF16");
    }
    // 258x258x128 outputs (34 MB) unpooled; 514x514 inputs give 257x257x128 pooled outputs.
    for (side, pool) in [(258, false), (514, true)] {
        let x = Tensor::from_vec(
            [1, side, side, cin],
            &rng.uniform_vec(side * side * cin, -1.0, 1.0),
        )
        .unwrap();
        let out_len = side * side * cout;
        let want = if pool {
            Tensor::zeros([0]).unwrap()
        } else {
            conv2d_reference(&x, params.kernel(), params.bias(), &spec).unwrap()
        };
        let pooled_len = (side / 2) * (side / 2) * cout;
        for algo in [
            ConvAlgo::Direct,
            ConvAlgo::ImplicitGemm,
            ConvAlgo::Winograd2,
            ConvAlgo::Winograd4,
        ] {
            let run = |bf16: bool| {
                if bf16 {
                    conv2d_bf16(algo, &x, &params, &spec, pool).unwrap()
                } else if pool {
                    conv2d_pool_with(algo, Isa::best(), &x, &params, &spec).unwrap()
                } else {
                    conv2d_with(algo, Isa::best(), &x, &params, &spec).unwrap()
                }
            };
            for precision in [false, true].into_iter().filter(|&p| !p || bf16) {
                AlignedVec::release_pooled();
                let fresh = run(precision);
                poison(out_len);
                if pool {
                    poison(pooled_len);
                }
                if !pool && !precision {
                    // Outputs this large are stored past the caches (streamed) where they
                    // exceed the last-level cache: still the convolution, within the
                    // algorithm's tolerance of the reference (as in the unit tests).
                    let tol = if algo == ConvAlgo::Winograd4 {
                        1e-4
                    } else {
                        1e-5
                    };
                    let scale = want.max_abs();
                    let worst = fresh
                        .data()
                        .iter()
                        .zip(want.data())
                        .map(|(a, b)| (a - b).abs())
                        .fold(
                            0f32,
                            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                        );
                    assert!(worst <= tol * scale, "{algo}: {worst} of {scale}");
                }
                let reused = run(precision);
                assert!(
                    reused.data().iter().all(|v| v.is_finite()),
                    "{algo} (bf16: {precision}, pool: {pool}) left elements unwritten"
                );
                assert!(
                    same_bits(&fresh, &reused),
                    "{algo} (bf16: {precision}, pool: {pool}) differs in a reused buffer"
                );
            }
        }
    }
    // `zeros` still clears what it reuses.
    poison(1 << 23);
    let z = Tensor::zeros([1 << 23]).unwrap();
    assert!(
        z.data().iter().all(|&v| v == 0.0),
        "zeros returned old values"
    );
}
