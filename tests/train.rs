//! `keel train`, `evaluate` and `predict` end to end on small generated photo folders and the
//! micro VGG16 fixture, and every kind of bad input: a clear message naming the problem, exit
//! code 1, no panic, and no model folder left behind.

mod common;

use std::path::Path;

use common::run::*;

/// The arguments of a quick training run on the micro model; `extra` adds options or
/// overrides these defaults.
fn train_args<'a>(data: &'a str, out: &'a str, w: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", data, "-o", out, "--weights", w];
    for (key, value) in [
        ("--input", "64x64"),
        ("--epochs", "8"),
        ("--batch-size", "4"),
        ("--head", "gap,dense8,relu,dropout0.25"),
        ("--seed", "3"),
    ] {
        if !extra.contains(&key) {
            v.extend([key, value]);
        }
    }
    v.extend_from_slice(extra);
    v
}

#[test]
fn train_evaluate_predict_end_to_end() {
    let dir = common::temp_dir("train-e2e");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 8);
    let w = weights();
    let model = dir.join("model");

    let out = keel_in(
        &home,
        &train_args(s(&data), s(&model), s(&w), &["--validation-split", "0.25"]),
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("2 classes (blue, red); 12 train, 4 validation"),
        "{err}"
    );
    assert!(
        err.contains(".DS_Store: hidden") && err.contains("notes.txt: not an image"),
        "{err}"
    );
    assert!(
        err.contains("16 computed, 0 from cache; base busy "),
        "{err}"
    );
    assert!(
        stdout(&out).contains("confusion matrix"),
        "{}",
        stdout(&out)
    );
    for f in [
        "head.safetensors",
        "model.json",
        "report.json",
        "curves.png",
        "confusion.png",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    for png in ["curves.png", "confusion.png"] {
        let img = image::open(model.join(png)).expect(png);
        assert!(img.width() > 100 && img.height() > 100, "{png}");
    }
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["classes"], serde_json::json!(["blue", "red"]));
    assert_eq!(card["head"]["spec"], "gap,dense8,relu,dropout0.25,dense2");
    assert_eq!(card["base"]["layer"], "block5_pool");
    assert_eq!(card["base"]["input"], serde_json::json!([64, 64]));
    assert!(
        card["base"]["weights_checksum"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(card["history"].as_array().unwrap().len(), 8);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["validation"]["images"], 4);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 2);

    // A second run with another head reads every feature from the cache.
    let model2 = dir.join("model2");
    let out = keel_in(
        &home,
        &train_args(
            s(&data),
            s(&model2),
            s(&w),
            &["--validation-split", "0.25", "--head", "gap"],
        ),
    );
    assert_ok(&out);
    assert!(
        stderr(&out).contains("0 computed, 16 from cache"),
        "{}",
        stderr(&out)
    );

    // Evaluate on the labeled folder; the f16 copy of the weights holds the same values, so
    // its checksum matches.
    let f16 = common::test_data("h5/micro_vgg16_notop_f16.h5");
    let out = keel_in(
        &home,
        &["evaluate", s(&model), s(&data), "--weights", s(&f16)],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("accuracy") && stdout(&out).contains("(16 images"),
        "{}",
        stdout(&out)
    );
    let out = keel_in(&home, &["evaluate", s(&model), s(&data), "--json"]);
    assert_ok(&out);
    let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(eval["images"], 16);
    assert_eq!(eval["confusion"].as_array().unwrap().len(), 2);

    // Predict: csv with the top 2 classes per photo, and json.
    let out = keel_in(
        &home,
        &["predict", s(&model), s(&data.join("red")), "--top", "2"],
    );
    assert_ok(&out);
    let csv = stdout(&out);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "path,class,probability");
    assert_eq!(lines.len(), 1 + 8 * 2, "{csv}");
    let p: f64 = lines[1].rsplit(',').next().unwrap().parse().unwrap();
    let q: f64 = lines[2].rsplit(',').next().unwrap().parse().unwrap();
    assert!(p >= q && (p + q - 1.0).abs() < 1e-4, "{csv}");
    let out_json = dir.join("pred.json");
    let out = keel_in(
        &home,
        &[
            "predict",
            s(&model),
            s(&data.join("blue/b00.png")),
            "--format",
            "json",
            "-o",
            s(&out_json),
        ],
    );
    assert_ok(&out);
    let pred: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(pred[0]["predictions"].as_array().unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seeded_training_is_reproducible_bit_for_bit() {
    let dir = common::temp_dir("train-repro");
    let data = dir.join("photos");
    photo_folder(&data, 5);
    let w = weights();
    let run = |name: &str, seed: &str, threads: &str| {
        let out_dir = dir.join(name);
        let mut args = train_args(
            s(&data),
            s(&out_dir),
            s(&w),
            &["--no-cache", "--seed", seed],
        );
        args.insert(0, threads);
        args.insert(0, "--threads");
        let home = dir.join("home");
        assert_ok(&keel_in(&home, &args));
        std::fs::read(out_dir.join("head.safetensors")).unwrap()
    };
    let a = run("a", "5", "2");
    let b = run("b", "5", "1");
    assert_eq!(
        a, b,
        "the same seed must give the same head, whatever the thread count"
    );
    let c = run("c", "6", "2");
    assert_ne!(a, c, "another seed gives another head");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kept_split_and_augmentation() {
    let dir = common::temp_dir("train-kept");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data.join("train"), 4);
    photo_folder_salted(&data.join("val"), 2, 1000);
    let w = weights();
    let out_dir = dir.join("flip");
    let out = keel_in(
        &home,
        &train_args(
            s(&data),
            s(&out_dir),
            s(&w),
            &["--augment", "flip", "--epochs", "3"],
        ),
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("8 train, 4 validation images (split kept"),
        "{err}"
    );
    // Plain train and val (12), then the mirrored training images (8).
    assert!(err.contains("20 computed"), "{err}");
    let out_dir = dir.join("crop");
    let out = keel_in(
        &home,
        &train_args(
            s(&data),
            s(&out_dir),
            s(&w),
            &["--augment", "flip,crop", "--epochs", "2"],
        ),
    );
    assert_ok(&out);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        card["training"]["augment"],
        serde_json::json!(["flip", "crop"])
    );
    let out = keel_in(
        &home,
        &train_args(
            s(&data),
            s(&dir.join("x")),
            s(&w),
            &["--validation-split", "0.2"],
        ),
    );
    assert_fails_with(&out, &["split is kept"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_datasets_fail_cleanly_without_a_model_folder() {
    let dir = common::temp_dir("train-bad");
    let home = dir.join("home");
    let w = weights();
    let out_dir = dir.join("model");
    let train = |data: &Path, extra: &[&str]| {
        keel_in(&home, &train_args(s(data), s(&out_dir), s(&w), extra))
    };

    let single = dir.join("single");
    write_photo(&single.join("red/a.png"), [250, 0, 0], 1);
    assert_fails_with(&train(&single, &[]), &["single class", "two classes"]);

    let empty = dir.join("empty");
    write_photo(&empty.join("red/a.png"), [250, 0, 0], 1);
    std::fs::create_dir_all(empty.join("blue")).unwrap();
    std::fs::write(empty.join("blue/readme.txt"), b"x").unwrap();
    assert_fails_with(&train(&empty, &[]), &["class 'blue' has no images"]);

    assert_fails_with(&train(&dir.join("missing"), &[]), &["missing"]);
    assert_fails_with(&train(&w, &[]), &["is not a folder"]);

    // An unreadable photo stops the run with its path, unless --skip-bad.
    let broken = dir.join("broken");
    photo_folder(&broken, 4);
    std::fs::write(broken.join("red/zz_truncated.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    let out = train(&broken, &[]);
    assert_fails_with(&out, &["zz_truncated.png", "--skip-bad"]);
    let out = train(&broken, &["--skip-bad"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("unreadable images left out"),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let skipped = report["skipped"].to_string();
    assert!(skipped.contains("zz_truncated.png"), "{skipped}");

    // The folder now exists: a second run refuses to replace it without --overwrite.
    assert_fails_with(
        &train(&broken, &["--skip-bad"]),
        &["already exists", "--overwrite"],
    );
    std::fs::remove_dir_all(&out_dir).unwrap();

    // Bad settings, each named.
    let good = dir.join("good");
    photo_folder(&good, 3);
    for (extra, needle) in [
        (&["--head", "gap,conv3"][..], "unknown layer 'conv3'"),
        (&["--head", "dense8"][..], "start the head with gap"),
        (&["--optimizer", "rmsprop"][..], "unknown optimizer"),
        (&["--schedule", "warm"][..], "unknown schedule"),
        (&["--lr", "0"][..], "--lr"),
        (&["--epochs", "0"][..], "--epochs"),
        (&["--layer", "fc1"][..], "is in VGG's top"),
        (
            &["--layer", "block9_pool"][..],
            "no layer named 'block9_pool'",
        ),
        (&["--validation-split", "1"][..], "--validation-split"),
        (&["--augment", "rotate"][..], "unknown augmentation"),
    ] {
        assert_fails_with(&train(&good, extra), &[needle]);
    }
    // A huge learning rate diverges: a clear error, no folder.
    assert_fails_with(
        &train(&good, &["--lr", "1e30", "--optimizer", "sgd", "--no-cache"]),
        &["diverged"],
    );
    assert!(!out_dir.exists(), "no model folder after a failure");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("keel-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn evaluate_and_predict_refuse_what_does_not_match() {
    let dir = common::temp_dir("train-mismatch");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 3);
    let w = weights();
    let model = dir.join("model");
    assert_ok(&keel_in(
        &home,
        &train_args(s(&data), s(&model), s(&w), &["--epochs", "2"]),
    ));

    // Other weights of the same architecture: bf16 rounding changes the values.
    let bf16 = dir.join("bf16.safetensors");
    assert_ok(&keel_in(
        &home,
        &["convert", s(&w), "-o", s(&bf16), "--dtype", "bf16"],
    ));
    for cmd in ["evaluate", "predict"] {
        let out = keel_in(&home, &[cmd, s(&model), s(&data), "--weights", s(&bf16)]);
        assert_fails_with(
            &out,
            &["not the ones the model", "was trained on", "sha256:"],
        );
    }
    let vgg19 = common::test_data("h5/micro_vgg19_notop.h5");
    let out = keel_in(
        &home,
        &["predict", s(&model), s(&data), "--weights", s(&vgg19)],
    );
    assert_fails_with(&out, &["vgg19"]);

    // Labeled folder with a class the model does not know.
    let other = dir.join("other");
    write_photo(&other.join("green/a.png"), [0, 250, 0], 1);
    write_photo(&other.join("red/a.png"), [250, 0, 0], 2);
    let out = keel_in(&home, &["evaluate", s(&model), s(&other)]);
    assert_fails_with(&out, &["'green' is not one of the model's classes"]);

    // --top beyond the model's classes gives them all (issue 12); 0 is refused.
    let out = keel_in(&home, &["predict", s(&model), s(&data), "--top", "0"]);
    assert_fails_with(&out, &["--top must be at least 1"]);

    // An unreadable photo: predict stops naming it, or with --skip-bad reports it and goes on.
    let mixed = dir.join("mixed");
    write_photo(&mixed.join("a.png"), [250, 0, 0], 9);
    std::fs::write(mixed.join("b.jpg"), b"\xff\xd8\xff").unwrap();
    let out = keel_in(&home, &["predict", s(&model), s(&mixed)]);
    assert_fails_with(&out, &["b.jpg", "--skip-bad"]);
    let out = keel_in(&home, &["predict", s(&model), s(&mixed), "--skip-bad"]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    assert!(stderr(&out).contains("b.jpg"), "{}", stderr(&out));

    // Damaged model folders.
    let out = keel_in(&home, &["predict", s(&dir.join("nope")), s(&data)]);
    assert_fails_with(&out, &["nope", "not a model folder"]);
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(model.join("model.json"), broken.join("model.json")).unwrap();
    let out = keel_in(&home, &["predict", s(&broken), s(&data)]);
    assert_fails_with(&out, &["head.safetensors"]);
    let head = std::fs::read(model.join("head.safetensors")).unwrap();
    std::fs::write(broken.join("head.safetensors"), &head[..head.len() / 2]).unwrap();
    let out = keel_in(&home, &["predict", s(&broken), s(&data)]);
    assert_fails_with(&out, &["head.safetensors", "not a safetensors file"]);
    std::fs::write(broken.join("model.json"), b"{\"format\": 1}").unwrap();
    let out = keel_in(&home, &["evaluate", s(&broken), s(&data)]);
    assert_fails_with(&out, &["model.json", "not a keel model card"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
