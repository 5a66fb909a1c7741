//! The real ImageNet VGG16 conv base reproduces Keras's block5_pool on five 224x224 images,
//! loaded from the Keras download-layout .h5 and from its safetensors conversion.
//! Tolerance `max|diff| <= 1e-4 * max|ref|` (weights/README: a float64 pass lands at ~1e-6),
//! for the reference kernels and for the fast backend (Winograd F(4x4) included) on every
//! instruction set this CPU has.

mod common;

use keel::io::npy;
use keel::nn::{Arch, Vgg, VggConfig};
use keel::tensor::DType;

const TOL: f64 = 1e-4;
const IMAGES: [&str; 5] = [
    "img0_gradient",
    "img1_checker_circles",
    "img2_uniform_noise",
    "img3_smooth_noise",
    "img4_photo_f3board",
];

#[test]
fn vgg16_imagenet_base_matches_keras_via_h5_and_safetensors() {
    let Some(shared) = common::shared("weights/vgg16_imagenet_notop.h5") else {
        return;
    };
    let weights_dir = shared.join("weights");
    let h5 = keel::io::load_weights(&weights_dir.join("vgg16_imagenet_notop.h5")).unwrap();
    assert_eq!(h5.num_params(), 14_714_688);
    let id = h5.identity().clone();
    assert_eq!((id.arch, id.include_top), (Arch::Vgg16, false));

    let dir = common::temp_dir("imagenet");
    let st_path = dir.join("vgg16_notop.safetensors");
    keel::io::safetensors::write_weights(&st_path, &h5, DType::F32).unwrap();
    let st = keel::io::load_weights(&st_path).unwrap();
    assert_eq!(st.layers().len(), h5.layers().len());
    for (a, b) in h5.layers().iter().zip(st.layers()) {
        assert_eq!(a.layer, b.layer);
        for (x, y) in a.tensors.iter().zip(&b.tensors) {
            assert_eq!(x.tensor.dims(), y.tensor.dims());
            assert!(
                x.tensor.data() == y.tensor.data(),
                "{}: values changed in conversion",
                a.layer
            );
        }
    }

    let config = VggConfig::notop(Arch::Vgg16);
    let paths: Vec<_> = IMAGES
        .iter()
        .map(|n| weights_dir.join(format!("ref/images/{n}.png")))
        .collect();
    let x = keel::io::batch::load_preprocessed(&paths, [224, 224], Default::default()).unwrap();
    for (i, name) in IMAGES.iter().enumerate() {
        let want = npy::read(&weights_dir.join(format!("ref/preprocess/{name}.npy"))).unwrap();
        let got = x.index0(i).unwrap();
        assert!(
            got.data()
                .iter()
                .zip(&want.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: preprocess_input differs from Keras's"
        );
    }
    let backends = common::backends();
    for (label, weights, backend) in [("h5", &h5, &backends[0])]
        .into_iter()
        .chain(backends.iter().map(|b| ("safetensors", &st, b)))
    {
        let label = format!("{label} {}", backend.name());
        let model = Vgg::new(config.clone(), weights.clone()).unwrap();
        let y = model.forward(backend.as_ref(), &x).unwrap();
        for (i, name) in IMAGES.iter().enumerate() {
            let want =
                npy::read(&weights_dir.join(format!("ref/block5_pool/{name}_block5_pool.npy")))
                    .unwrap();
            let got = y.index0(i).unwrap().reshape([1, 7, 7, 512]).unwrap();
            let rel = common::assert_close(&format!("{label} {name}"), &got, &want, TOL);
            eprintln!("{label} {name}: max|diff|/max|ref| = {rel:.2e}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bf16 convolutions (`--precision bf16`, AVX512-BF16) against Keras's fp32 block5_pool:
/// within `2e-2 * max|ref|` (bf16 keeps 8 bits of significand; the bar), and further
/// from Keras than fp32 is (else the bf16 path is not running).
#[test]
fn vgg16_bf16_block5_pool_is_within_2e_2_of_keras() {
    let Some(shared) = common::shared("weights/vgg16_imagenet_notop.h5") else {
        return;
    };
    if !keel::cpu::gemm::bf16::available() {
        common::skip("this CPU lacks AVX512-BF16 (or KEEL_ISA caps it below avx512)");
        return;
    }
    let weights_dir = shared.join("weights");
    let h5 = keel::io::load_weights(&weights_dir.join("vgg16_imagenet_notop.h5")).unwrap();
    let paths: Vec<_> = IMAGES
        .iter()
        .map(|n| weights_dir.join(format!("ref/images/{n}.png")))
        .collect();
    let x = keel::io::batch::load_preprocessed(&paths, [224, 224], Default::default()).unwrap();
    let model = Vgg::new(VggConfig::notop(Arch::Vgg16), h5).unwrap();
    let bf16 = keel::cpu::Cpu::new().with_bf16().unwrap();
    let fp32 = keel::cpu::Cpu::new();
    let y16 = model.forward(&bf16, &x).unwrap();
    let y32 = model.forward(&fp32, &x).unwrap();
    for (i, name) in IMAGES.iter().enumerate() {
        let want = npy::read(&weights_dir.join(format!("ref/block5_pool/{name}_block5_pool.npy")))
            .unwrap();
        let got = y16.index0(i).unwrap().reshape([1, 7, 7, 512]).unwrap();
        let rel = common::assert_close(&format!("bf16 {name}"), &got, &want, 2e-2);
        let got32 = y32.index0(i).unwrap().reshape([1, 7, 7, 512]).unwrap();
        let rel32 = common::assert_close(&format!("fp32 {name}"), &got32, &want, TOL);
        eprintln!("bf16 {name}: max|diff|/max|ref| = {rel:.4e} (fp32 {rel32:.2e})");
        assert!(
            rel > rel32,
            "{name}: bf16 is as close as fp32: is it running?"
        );
    }
}
