//! Grad-CAM and saliency: their gradients against central finite differences, and the
//! `keel visualize gradcam|saliency` commands (picture sizes, refusals).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::run::{assert_fails_with, assert_ok, keel_in, s, stdout, trained_model, weights};
use keel::cpu::CpuReference;
use keel::io::image::Interpolation;
use keel::nn::{Vgg, preprocess_rgb8};
use keel::tensor::{DType, Tensor};
use keel::transfer::{FrozenBase, TrainedModel};
use keel::viz::gradcam::{Above, Explainer, host_f64};

/// Step of the central differences, in f64. Their rounding error is about
/// 1e-16 * |logit| / H (logits of the tiny model reach ~10: ~1e-10), their truncation error
/// H^2 times the third derivative (~1e-10); a ReLU or max-pool kink within H of a point would
/// show as an O(1) error.
const H: f64 = 1e-5;
/// Largest allowed |analytic - numeric| relative to the largest gradient checked: the
/// truncation error is O(H^2) on smooth pieces, so 1e-6 leaves a wide margin and still catches
/// any wrong backward formula (those are off by O(1)).
const TOL: f64 = 1e-6;

/// The photo as the network sees it: `(1, h, w, 3)` caffe-preprocessed.
fn input_of(path: &Path, [h, w]: [usize; 2]) -> Tensor {
    let img = keel::io::image::load_img(path, Some((h, w)), Interpolation::Bilinear).unwrap();
    preprocess_rgb8(h, w, &img.data)
        .unwrap()
        .reshape([1, h, w, 3])
        .unwrap()
}

/// Check d logit[class] / d a at `indices` against central differences, in f64 on the
/// reference backend; returns the largest error relative to the largest gradient.
fn check_gradient(above: &Above, a: &Tensor, class: usize, indices: &[usize], what: &str) -> f64 {
    let be = CpuReference;
    let above = above.cast(DType::F64).unwrap();
    let a = a.cast(DType::F64).unwrap();
    let (_, g) = above.gradient(&be, a.clone(), class).unwrap();
    let g = host_f64(&g).unwrap();
    let logit = |x: &Tensor| host_f64(&above.logits(&be, x).unwrap()).unwrap()[class];
    let mut worst: f64 = 0.0;
    // Relative to the largest gradient anywhere in `a`, as the library's own gradient checks.
    let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    let mut pairs = Vec::new();
    for &i in indices {
        let mut x = a.clone();
        let keep = x.values::<f64>().unwrap()[i];
        x.values_mut::<f64>().unwrap()[i] = keep + H;
        let up = logit(&x);
        x.values_mut::<f64>().unwrap()[i] = keep - H;
        let down = logit(&x);
        let numeric = (up - down) / (2.0 * H);
        pairs.push((i, g[i], numeric));
    }
    assert!(
        scale > 0.0,
        "{what}: the gradient is all zeros, the check proves nothing"
    );
    for (i, analytic, numeric) in pairs {
        let err = (analytic - numeric).abs() / scale;
        assert!(
            err <= TOL,
            "{what}[{i}]: analytic {analytic}, numeric {numeric} (relative error {err:e} > {TOL:e})"
        );
        worst = worst.max(err);
    }
    eprintln!(
        "{what}: {} elements, largest gradient {scale:.3e}, largest relative error {worst:.2e} \
         (tolerance {TOL:e})",
        indices.len()
    );
    worst
}

/// The non-zero elements of `a`: a zero activation ties with its neighbours in the max pool
/// above it, where the gradient is one-sided and a central difference is not the derivative.
fn nonzero(a: &Tensor) -> Vec<usize> {
    let v = host_f64(a).unwrap();
    (0..v.len()).filter(|&i| v[i] != 0.0).collect()
}

/// A trained micro model, its base (on the reference backend) and a photo.
fn trained(name: &str, extra: &[&str]) -> (PathBuf, TrainedModel, FrozenBase, PathBuf) {
    let home = common::temp_dir(name);
    let dir = trained_model(&home, extra);
    let model = TrainedModel::load(&dir).unwrap();
    let info = &model.card.base;
    let base = FrozenBase::load(
        &weights(),
        &info.layer,
        info.input,
        info.interpolation.parse().unwrap(),
        Arc::new(CpuReference),
    )
    .unwrap();
    let base = model.tuned_base(&base).unwrap();
    let photo = home.join("photos/red/r00.png");
    (home, model, base, photo)
}

#[test]
fn gradcam_and_saliency_gradients_match_finite_differences() {
    let (home, model, base, photo) = trained("cam-fd", &["--fine-tune", "block5"]);
    let be = CpuReference;
    let x = input_of(&photo, model.card.base.input);
    let explainer = Explainer::for_model(&model, &base).unwrap();
    for class in 0..2 {
        // block5_conv3: inside the fine-tuned layers; block4_conv2: below them.
        for layer in ["block5_conv3", "block4_conv2"] {
            let a = explainer.activation(&be, &x, layer).unwrap();
            let above = explainer.above(layer).unwrap();
            let idx = nonzero(&a);
            let idx: Vec<usize> = idx
                .iter()
                .step_by(idx.len().div_ceil(40))
                .copied()
                .collect();
            check_gradient(&above, &a, class, &idx, &format!("{layer} class {class}"));
            // Grad-CAM's own alpha (f32, the fast path) against the f64 gradient's mean.
            let cam = explainer.gradcam(&be, &x, layer, Some(class)).unwrap();
            let a64 = a.cast(DType::F64).unwrap();
            let (_, g) = above
                .cast(DType::F64)
                .unwrap()
                .gradient(&be, a64, class)
                .unwrap();
            let k = *a.dims().last().unwrap();
            let cells = (a.numel() / k) as f64;
            let g = host_f64(&g).unwrap();
            let scale = cam.alpha.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            for (c, &alpha) in cam.alpha.iter().enumerate() {
                let want: f64 = g.iter().skip(c).step_by(k).sum::<f64>() / cells;
                // f32 against f64 through a dozen layers: 1e-4 of the largest weight.
                assert!(
                    (alpha - want).abs() <= 1e-4 * scale,
                    "{layer} alpha[{c}]: {alpha} vs {want}"
                );
            }
        }
    }
    // Saliency: the gradient with respect to input pixels, through the whole base.
    let above = explainer.above("input_1").unwrap();
    let n = x.numel();
    let idx: Vec<usize> = (0..n).step_by(n / 30).collect();
    check_gradient(&above, &x, 1, &idx, "input pixels");
    let sal = explainer.saliency(&be, &x, Some(1)).unwrap();
    assert_eq!((sal.map.height, sal.map.width), (40, 40));
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn imagenet_top_gradients_match_finite_differences() {
    let be = CpuReference;
    let set = keel::io::load_weights(&common::test_data("h5/micro_vgg16_top.h5")).unwrap();
    let mut config = set.identity().config();
    config.input = [32, 32];
    let vgg = Vgg::new(config, set).unwrap();
    let explainer = Explainer::imagenet(&vgg).unwrap();
    let x = input_of(&common::test_data("images/rgb_17x23.png"), [32, 32]);
    for layer in ["block5_conv3", "block3_conv1"] {
        let a = explainer.activation(&be, &x, layer).unwrap();
        let above = explainer.above(layer).unwrap();
        let idx = nonzero(&a);
        let idx: Vec<usize> = idx
            .iter()
            .step_by(idx.len().div_ceil(40))
            .copied()
            .collect();
        check_gradient(&above, &a, 3, &idx, &format!("top {layer}"));
    }
    let above = explainer.above("input_1").unwrap();
    let idx: Vec<usize> = (0..x.numel()).step_by(97).collect();
    check_gradient(&above, &x, 3, &idx, "top input pixels");
}

/// A `w` x `h` PNG (another size than the network's input, to see the overlay keep it).
fn odd_photo(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 3) as u8, 200]));
    img.save(path).unwrap();
}

fn png_size(path: &Path) -> (u32, u32) {
    image::open(path).unwrap().to_rgb8().dimensions()
}

#[test]
fn commands_write_pictures_and_refuse_bad_input() {
    let home = common::temp_dir("cam-cli");
    let dir = trained_model(&home, &[]);
    let photo = home.join("odd.png");
    odd_photo(&photo, 57, 31);
    let out = home.join("cam.png");
    let run = |args: &[&str]| keel_in(&home, args);

    let r = run(&["visualize", "gradcam", s(&dir), s(&photo), "-o", s(&out)]);
    assert_ok(&r);
    assert!(stdout(&r).contains("probability"), "{}", stdout(&r));
    assert_eq!(png_size(&out), (57, 31), "the overlay has the photo's size");

    let r = run(&[
        "visualize",
        "gradcam",
        s(&dir),
        s(&photo),
        "--class",
        "blue",
        "--layer",
        "block3_conv2",
        "-o",
        s(&out),
    ]);
    assert_ok(&r);
    assert!(stdout(&r).contains("class blue"), "{}", stdout(&r));

    let sal = home.join("sal.png");
    let r = run(&[
        "visualize",
        "saliency",
        s(&dir),
        s(&photo),
        "--class",
        "0",
        "-o",
        s(&sal),
    ]);
    assert_ok(&r);
    assert_eq!(
        png_size(&sal),
        (40, 40),
        "saliency has the network input's size"
    );

    let top = common::test_data("h5/micro_vgg16_top.h5");
    let topcam = home.join("top.png");
    let r = run(&[
        "visualize",
        "gradcam",
        "--weights",
        s(&top),
        s(&photo),
        "--class",
        "3",
        "-o",
        s(&topcam),
    ]);
    assert_ok(&r);
    assert_eq!(png_size(&topcam), (57, 31));
    let r = run(&[
        "visualize",
        "saliency",
        "--weights",
        s(&top),
        s(&photo),
        "-o",
        s(&topcam),
    ]);
    assert_ok(&r);
    assert_eq!(png_size(&topcam), (32, 32));

    // Refusals: exit 1 (or 2 for usage), a message that says what is wrong, no file.
    let bad = home.join("bad.png");
    let text = home.join("notes.png");
    std::fs::write(&text, b"not an image").unwrap();
    let notop = weights();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["gradcam", s(&dir), s(&photo), "--class", "green"],
            vec!["unknown class 'green'", "blue", "red"],
        ),
        (
            vec!["saliency", s(&dir), s(&photo), "--class", "7"],
            vec!["unknown class '7'"],
        ),
        (
            vec!["gradcam", s(&dir), s(&photo), "--layer", "block5_pool"],
            vec![
                "block5_pool is a MaxPooling2D, not a convolution",
                "block5_conv3",
            ],
        ),
        (
            vec!["gradcam", s(&dir), s(&photo), "--layer", "fc1"],
            vec!["no layer named 'fc1'"],
        ),
        (
            vec!["gradcam", s(&dir), s(&text)],
            vec!["notes.png", "not a readable image"],
        ),
        (
            vec!["gradcam", s(&dir), s(&photo), "--weights", s(&top)],
            vec!["not both"],
        ),
        (vec!["saliency", s(&photo)], vec!["give a model folder"]),
        (
            vec!["gradcam", "--weights", s(&notop), s(&photo)],
            vec!["no fc1, fc2, predictions", "--top"],
        ),
        (
            vec![
                "gradcam",
                "--weights",
                s(&top),
                s(&photo),
                "--class",
                "tabby",
            ],
            vec!["unknown class 'tabby'", "class 0"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = vec!["visualize"];
        full.extend(&args);
        full.extend(["-o", s(&bad)]);
        let r = run(&full);
        assert_fails_with(&r, &needles);
        assert!(!bad.exists(), "{args:?} left {}", bad.display());
    }
    std::fs::remove_dir_all(home).unwrap();
}
