//! The `keel` binary end to end: the commands on the mini Keras fixtures, and every kind of
//! bad input: a clear message naming the file and the problem, exit code 1, no panic, and no
//! output file left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel::io::npy;

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_HOME", std::env::temp_dir().join("keel-no-cache"))
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The command failed cleanly and its message contains every one of `needles`.
#[track_caller]
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected '{n}' in: {stderr}");
    }
}

fn h5(name: &str) -> PathBuf {
    common::test_data(&format!("h5/{name}"))
}

fn mini(shared: &Path, name: &str) -> PathBuf {
    shared.join("fixtures/keras/models").join(name)
}

/// Run `features` with `weights` on a small image and expect failure naming `needles`; the
/// output must not exist afterwards.
#[track_caller]
fn features_fails(weights: &Path, needles: &[&str]) {
    let dir = common::temp_dir(&format!(
        "bad-{}",
        weights.file_name().unwrap().to_string_lossy()
    ));
    let img = common::test_data("images/rgb_17x23.png");
    let out_path = dir.join("f.npy");
    let out = keel(&[
        "features",
        s(&img),
        "--weights",
        s(weights),
        "--input",
        "32x32",
        "-o",
        s(&out_path),
    ]);
    let mut all = vec![s(weights)];
    all.extend_from_slice(needles);
    assert_fails_with(&out, &all);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "output left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_prints_keras_totals() {
    let out = keel(&["summary", "vgg16"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Total params: 14,714,688"), "{text}");
    assert!(text.contains("block5_pool (MaxPooling2D)"), "{text}");
    let out = keel(&["summary", "vgg19", "--top"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Total params: 143,667,240"));
    assert_fails_with(
        &keel(&["summary", "vgg16", "--input", "16x16"]),
        &["too small"],
    );
}

#[test]
fn features_match_keras_and_survive_conversion() {
    let Some(shared) = common::shared("fixtures/keras/models") else {
        return;
    };
    let inputs = shared.join("fixtures/keras/inputs");
    let dir = common::temp_dir("features");
    let imgs: Vec<PathBuf> = (0..3)
        .map(|i| inputs.join(format!("rgb_48x40_img{i}.png")))
        .collect();
    let want =
        npy::read(&shared.join("fixtures/keras/ref/mini_vgg16_notop/global_avg.npy")).unwrap();
    let weights = mini(&shared, "mini_vgg16_notop.k1.h5");
    let st = dir.join("mini.safetensors");
    let out = keel(&["convert", s(&weights), "-o", s(&st)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in [&weights, &st] {
        let f = dir.join("f.npy");
        let mut args = vec!["features"];
        args.extend(imgs.iter().map(|p| s(p)));
        args.extend([
            "--weights",
            s(w),
            "--input",
            "48x40",
            "--pooling",
            "avg",
            "--batch",
            "2",
            "-o",
            s(&f),
        ]);
        let out = keel(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Two batches: the second was decoded while the first ran, and the rows still come
        // out in input order (Keras's numbers, image by image).
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(" busy ") && err.contains("% of the time"),
            "{err}"
        );
        let got = npy::read(&f).unwrap().to_tensor().unwrap();
        common::assert_close("features global_avg", &got, &want, 1e-5);
        let listed = std::fs::read_to_string(dir.join("f.paths.txt")).unwrap();
        assert_eq!(listed.lines().count(), 3);
        assert!(
            listed
                .lines()
                .next()
                .unwrap()
                .ends_with("rgb_48x40_img0.png")
        );
    }
    // TF32 is the GPU's tensor-core format; the CPU says so instead of computing in fp32
    // under another name.
    let g = dir.join("g.npy");
    let mut args = vec!["features", s(&imgs[0]), "--weights", s(&weights)];
    args.extend(["--precision", "tf32", "-o", s(&g)]);
    let out = keel(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--precision tf32 is the GPU's tensor-core format"),
        "{err}"
    );
    assert!(!g.exists());
    // bf16 runs on the CPU only with AVX512-BF16: capped below it, keel refuses and says why.
    let mut args = vec!["features", s(&imgs[0]), "--weights", s(&weights)];
    args.extend(["--precision", "bf16", "-o", s(&g)]);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(&args)
        .env("KEEL_HOME", std::env::temp_dir().join("keel-no-cache"))
        .env("KEEL_ISA", "avx2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs AVX512-BF16"), "{err}");
    assert!(!g.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn classify_prints_keras_top_classes() {
    let Some(shared) = common::shared("fixtures/keras/models") else {
        return;
    };
    let img = shared.join("fixtures/keras/inputs/rgb_32x32_img1.png");
    let out = keel(&[
        "classify",
        s(&img),
        "--weights",
        s(&mini(&shared, "mini_vgg16_top.weights.h5")),
        "--top",
        "3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // index.json: top-3 classes 7, 5, 3 with top-1 probability 0.7749.
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].contains("class 7") && lines[1].contains("0.7749"),
        "{text}"
    );
    assert!(
        lines[2].contains("class 5") && lines[3].contains("class 3"),
        "{text}"
    );
}

#[test]
fn wrong_model_is_named() {
    let img = common::test_data("images/rgb_17x23.png");
    let out = keel(&[
        "features",
        s(&img),
        "--weights",
        s(&h5("micro_vgg19_notop.h5")),
        "--model",
        "vgg16",
        "-o",
        "/tmp/never.npy",
    ]);
    assert_fails_with(
        &out,
        &[
            "micro_vgg19_notop.h5",
            "holds VGG19 weights",
            "--model vgg16",
        ],
    );
    assert!(!Path::new("/tmp/never.npy").exists());
}

#[test]
fn classify_with_a_conv_base_file_says_it_needs_the_top() {
    let img = common::test_data("images/rgb_17x23.png");
    let out = keel(&[
        "classify",
        s(&img),
        "--weights",
        s(&h5("micro_vgg16_notop.h5")),
    ]);
    assert_fails_with(&out, &["micro_vgg16_notop.h5", "conv base", "--top"]);
}

#[test]
fn features_from_a_file_with_the_top_use_its_conv_base() {
    let img = common::test_data("images/rgb_17x23.png");
    let dir = common::temp_dir("top-base");
    let f = dir.join("f.npy");
    let out = keel(&[
        "features",
        s(&img),
        "--weights",
        s(&h5("micro_vgg16_top.h5")),
        "--input",
        "64x48",
        "-o",
        s(&f),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(npy::read(&f).unwrap().shape, vec![1, 2, 1, 6]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_weight_file_zero_bytes() {
    let dir = common::temp_dir("zero");
    let p = dir.join("empty.h5");
    std::fs::write(&p, b"").unwrap();
    features_fails(&p, &["empty (0 bytes)"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_weight_file_garbage() {
    let dir = common::temp_dir("garbage");
    let p = dir.join("garbage.h5");
    let bytes: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    std::fs::write(&p, bytes).unwrap();
    features_fails(&p, &["not a readable HDF5 file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_weight_file_not_hdf5() {
    features_fails(
        &common::test_data("images/rgb_17x23.png"),
        &["not a readable HDF5 file"],
    );
}

#[test]
fn bad_weight_file_truncated() {
    let dir = common::temp_dir("trunc");
    let full = std::fs::read(h5("micro_vgg16_notop.h5")).unwrap();
    for (name, len) in [
        ("half.h5", full.len() / 2),
        ("one_short.h5", full.len() - 1),
        ("header.h5", 40),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, &full[..len]).unwrap();
        features_fails(&p, &["truncated"]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_weight_file_is_a_directory() {
    let dir = common::temp_dir("isdir");
    features_fails(&dir, &["is a directory"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_weight_file_missing() {
    features_fails(Path::new("/nonexistent/vgg16.h5"), &["No such file"]);
}

#[test]
fn bad_weights_another_network() {
    features_fails(
        &h5("other_network.h5"),
        &["not a VGG16/VGG19 weights file", "conv1_conv"],
    );
}

#[test]
fn bad_weights_wrong_kernel_shape() {
    features_fails(
        &h5("bad_kernel_shape.h5"),
        &["block3_conv1", "(3, 3, 5, 4)", "(3, 3, 3, Cout)"],
    );
}

#[test]
fn bad_weights_5x5_kernel() {
    features_fails(&h5("bad_kernel_5x5.h5"), &["block1_conv1", "(5, 5, 3, 2)"]);
}

#[test]
fn bad_weights_missing_layer() {
    features_fails(
        &h5("bad_missing_layer.h5"),
        &["layer block4_conv2 is missing"],
    );
}

#[test]
fn bad_weights_missing_bias() {
    features_fails(
        &h5("bad_missing_bias.h5"),
        &["block2_conv1", "the bias is missing"],
    );
}

#[test]
fn bad_weights_dangling_weight_name() {
    features_fails(
        &h5("bad_weight_names_dangling.h5"),
        &["weight_names lists", "no such dataset"],
    );
}

#[test]
fn bad_weights_nan() {
    features_fails(
        &h5("bad_nan.h5"),
        &["block3_conv2", "NaN", "must be finite"],
    );
}

#[test]
fn bad_weights_inf() {
    features_fails(&h5("bad_inf.h5"), &["inf", "must be finite"]);
}

#[test]
fn bad_weights_integer_kernel() {
    features_fails(
        &h5("bad_int_kernel.h5"),
        &["block2_conv1", "int32", "floating point"],
    );
}

#[test]
fn bad_weights_chunked_storage_is_named() {
    features_fails(&h5("chunked.h5"), &["chunked"]);
}

#[test]
fn bad_images_stop_with_their_path() {
    let weights = h5("micro_vgg16_notop.h5");
    for bad in [
        "bad_empty.png",
        "bad_truncated.png",
        "bad_truncated.jpg",
        "bad_garbage.jpg",
        "bad_text.txt",
    ] {
        let img = common::test_data(&format!("images/{bad}"));
        let dir = common::temp_dir(&format!("badimg-{bad}"));
        let f = dir.join("f.npy");
        let out = keel(&[
            "features",
            s(&img),
            "--weights",
            s(&weights),
            "--input",
            "32x32",
            "-o",
            s(&f),
        ]);
        assert_fails_with(&out, &[s(&img)]);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{bad}: output left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn output_path_that_is_a_directory_is_refused() {
    let dir = common::temp_dir("outdir");
    let img = common::test_data("images/rgb_17x23.png");
    let out = keel(&[
        "features",
        s(&img),
        "--weights",
        s(&h5("micro_vgg16_notop.h5")),
        "--input",
        "32x32",
        "-o",
        s(&dir),
    ]);
    assert_fails_with(&out, &[s(&dir), "is a directory"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let out = keel(&["convert", s(&h5("micro_vgg16_notop.h5")), "-o", s(&dir)]);
    assert_fails_with(&out, &["is a directory"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_refuses_bad_weights_without_writing() {
    let dir = common::temp_dir("convert-bad");
    let o = dir.join("out.safetensors");
    assert_fails_with(
        &keel(&["convert", s(&h5("bad_nan.h5")), "-o", s(&o)]),
        &["bad_nan.h5", "NaN"],
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_layer_lists_the_layers() {
    let img = common::test_data("images/rgb_17x23.png");
    let out = keel(&[
        "features",
        s(&img),
        "--weights",
        s(&h5("micro_vgg16_notop.h5")),
        "--layer",
        "block9_pool",
        "-o",
        "/tmp/never2.npy",
    ]);
    assert_fails_with(&out, &["no layer named 'block9_pool'", "block5_conv3"]);
}

/// A seeded random VGG16 with tiny widths and the 1000-class ImageNet top, as safetensors: the
/// real top file (528 MB) is not available to tests, but the decode path is the same.
fn random_imagenet_top(path: &Path) {
    use keel::nn::{LayerWeights, NamedTensor, WeightSet};
    use keel::tensor::{DType, Tensor};
    let mut rng = keel::rng::Rng::new(11);
    let mut layers = Vec::new();
    let mut add = |name: String, kshape: Vec<usize>, rng: &mut keel::rng::Rng| {
        let n: usize = kshape.iter().product();
        let out = *kshape.last().unwrap();
        let kernel = Tensor::from_vec(kshape, &rng.uniform_vec(n, -0.5, 0.5)).unwrap();
        let bias = Tensor::from_vec([out], &rng.uniform_vec(out, -0.1, 0.1)).unwrap();
        layers.push(LayerWeights {
            tensors: vec![
                NamedTensor {
                    name: format!("{name}.kernel"),
                    tensor: kernel,
                },
                NamedTensor {
                    name: format!("{name}.bias"),
                    tensor: bias,
                },
            ],
            layer: name,
        });
    };
    let mut cin = 3;
    for (b, convs) in [2, 2, 3, 3, 3].into_iter().enumerate() {
        for i in 1..=convs {
            add(
                format!("block{}_conv{i}", b + 1),
                vec![3, 3, cin, 4],
                &mut rng,
            );
            cin = 4;
        }
    }
    add("fc1".into(), vec![7 * 7 * 4, 8], &mut rng);
    add("fc2".into(), vec![8, 8], &mut rng);
    add("predictions".into(), vec![8, 1000], &mut rng);
    let set = WeightSet::new(path, "test", layers).unwrap();
    keel::io::safetensors::write_weights(path, &set, DType::F16).unwrap();
}

#[test]
fn classify_decodes_imagenet_labels() {
    let dir = common::temp_dir("imagenet-top");
    let weights = dir.join("tiny_top.safetensors");
    random_imagenet_top(&weights);
    let img = common::test_data("images/rgb_31x40.png");
    let out = keel(&[
        "classify",
        s(&img),
        "--weights",
        s(&weights),
        "--interpolation",
        "bilinear",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].ends_with("rgb_31x40.png"));
    // "   1. n01440764 tench   0.0123": a WordNet id, a label, and a probability; descending.
    let scores: Vec<f32> = lines[1..]
        .iter()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            assert!(fields[1].starts_with('n') && fields[1].len() == 9, "{l}");
            fields[3].parse().unwrap()
        })
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] > 0.0 && scores[0] < 1.0,
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
