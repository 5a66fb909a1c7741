//! `keel train --fine-tune` end to end on small generated photo folders and the micro VGG16
//! fixture: the model folder, evaluate / predict / features with the fine-tuned layers,
//! seeded bit-reproducibility (also when stored activations stream from disk), old model
//! folders, and every kind of bad input: a clear message, exit code 1, no folder left behind.

mod common;

use std::path::Path;

use common::run::*;

/// A quick two-phase run on the micro model; `extra` adds options or overrides these. The
/// head's phase barely trains (a tiny learning rate), so that fine-tuning clearly beats its
/// validation loss and its layers are kept.
fn ft_args<'a>(data: &'a str, out: &'a str, w: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", data, "-o", out, "--weights", w];
    for (key, value) in [
        ("--input", "64x64"),
        ("--epochs", "3"),
        ("--lr", "1e-5"),
        ("--batch-size", "4"),
        ("--head", "gap,dense8,relu,dropout0.25"),
        ("--seed", "3"),
        ("--fine-tune", "block4"),
        ("--fine-tune-epochs", "2"),
        ("--fine-tune-lr", "1e-3"),
        ("--validation-split", "0.25"),
    ] {
        if !extra.contains(&key) {
            v.extend([key, value]);
        }
    }
    v.extend_from_slice(extra);
    v
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn fine_tune_end_to_end() {
    let dir = common::temp_dir("ft-e2e");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 8);
    let w = weights();
    let model = dir.join("model");

    let out = keel_in(&home, &ft_args(s(&data), s(&model), s(&w), &[]));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("fine-tuning from block4_conv1"), "{err}");
    assert!(err.contains("fine-tune epoch   2/2"), "{err}");
    assert!(err.contains("with the head alone"), "{err}");
    for f in [
        "head.safetensors",
        "tuned.safetensors",
        "model.json",
        "curves.png",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let card = json(&model.join("model.json"));
    assert_eq!(card["version"], 2);
    let ft = &card["fine_tune"];
    assert_eq!(ft["block"], "block4");
    assert_eq!(ft["kept"], true, "{}", stderr(&out));
    assert_eq!(
        ft["layers"],
        serde_json::json!([
            "block4_conv1",
            "block4_conv2",
            "block4_conv3",
            "block5_conv1",
            "block5_conv2",
            "block5_conv3"
        ])
    );
    assert!(ft["checksum"].as_str().unwrap().starts_with("sha256:"));
    let history = card["history"].as_array().unwrap();
    assert_eq!(history.len(), 5, "3 head epochs, then 2 fine-tuning epochs");
    let phases: Vec<bool> = history
        .iter()
        .map(|m| m["fine_tune"].as_bool().unwrap())
        .collect();
    assert_eq!(phases, [false, false, false, true, true]);
    assert_eq!(history[4]["epoch"], 5);
    let report = json(&model.join("report.json"));
    assert!(report["validation_before_fine_tune"]["accuracy"].is_number());
    assert!(report["timings"]["fine_tune_seconds"].as_f64().unwrap() > 0.0);

    // Evaluate and predict run the fine-tuned layers.
    let out = keel_in(&home, &["evaluate", s(&model), s(&data), "--json"]);
    assert_ok(&out);
    let eval: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(eval["images"], 16);
    let out = keel_in(&home, &["predict", s(&model), s(&data.join("red"))]);
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().count(), 1 + 8, "{}", stdout(&out));

    // Features through the model's base: below the tuned layers they equal the plain base's,
    // above they differ.
    let feats = |from: bool, layer: &str, name: &str| {
        let npy = dir.join(name);
        let mut args = vec!["features", s(&data), "--layer", layer, "-o", s(&npy)];
        if from {
            args.extend(["--from", s(&model)]);
        } else {
            args.extend([
                "--weights",
                s(&w),
                "--input",
                "64x64",
                "--interpolation",
                "bilinear",
            ]);
        }
        assert_ok(&keel_in(&home, &args));
        keel::io::npy::read(&npy).unwrap()
    };
    let (a, b) = (
        feats(true, "block3_pool", "a.npy"),
        feats(false, "block3_pool", "b.npy"),
    );
    assert_eq!(a.shape, b.shape);
    assert_eq!(a.data, b.data, "block3 is below the fine-tuned layers");
    let (a, b) = (
        feats(true, "block5_pool", "c.npy"),
        feats(false, "block5_pool", "d.npy"),
    );
    assert_eq!(a.shape, [16, 2, 2, 6]);
    assert_ne!(
        a.data, b.data,
        "block5_pool comes out of the fine-tuned layers"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fine_tuning_is_reproducible_and_streams_within_its_budget() {
    let dir = common::temp_dir("ft-repro");
    let data = dir.join("photos");
    photo_folder(&data, 5);
    let w = weights();
    let run = |name: &str, threads: &str, extra: &[&str]| {
        let out_dir = dir.join(name);
        let mut args = vec!["--threads", threads];
        args.extend(ft_args(s(&data), s(&out_dir), s(&w), extra));
        let out = keel_in(&dir.join("home"), &args);
        assert_ok(&out);
        let read = |f: &str| std::fs::read(out_dir.join(f)).unwrap();
        (
            read("tuned.safetensors"),
            read("head.safetensors"),
            stderr(&out),
        )
    };
    let a = run("a", "2", &[]);
    let b = run("b", "1", &[]);
    assert_eq!(
        (&a.0, &a.1),
        (&b.0, &b.1),
        "same seed, same weights, any thread count"
    );
    // With no memory budget the stored activations stream from temporary files: the same
    // numbers, read from disk.
    let c = run("c", "2", &["--memory-budget", "0"]);
    assert!(c.2.contains("streamed from disk"), "{}", c.2);
    assert_eq!((&a.0, &a.1), (&c.0, &c.1), "streaming changes nothing");
    let d = run("d", "2", &["--seed", "4"]);
    assert_ne!(a.0, d.0, "another seed, other weights");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_fine_tuning_fails_cleanly_without_a_model_folder() {
    let dir = common::temp_dir("ft-bad");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 3);
    let w = weights();
    let out_dir = dir.join("model");
    let train = |extra: &[&str]| keel_in(&home, &ft_args(s(&data), s(&out_dir), s(&w), extra));
    for (extra, needle) in [
        (
            &["--fine-tune", "block7"][..],
            "VGG has blocks block1 to block5",
        ),
        (
            &["--fine-tune", "conv"][..],
            "VGG has blocks block1 to block5",
        ),
        (
            &["--augment", "crop"][..],
            "--augment crop cannot be combined with --fine-tune",
        ),
        (
            &["--layer", "block4_pool"][..],
            "--fine-tune needs the head to read the end",
        ),
        (
            &["--fine-tune-lr", "0"][..],
            "fine-tuning: the learning rate",
        ),
        (&["--fine-tune-epochs", "0"][..], "fine-tuning: --epochs"),
        (
            &["--fine-tune-optimizer", "lion"][..],
            "unknown optimizer 'lion'",
        ),
    ] {
        assert_fails_with(&train(extra), &[needle]);
    }
    // A fine-tuning phase that diverges: a clear error naming the phase, no folder.
    let out = train(&[
        "--fine-tune-lr",
        "1e30",
        "--fine-tune-optimizer",
        "sgd",
        "--no-cache",
    ]);
    assert_fails_with(&out, &["fine-tuning block4_conv1", "diverged"]);
    assert!(!out_dir.exists(), "no model folder after a failure");

    // Damaged fine-tuned weights in a model folder.
    assert_ok(&train(&[]));
    let tuned = out_dir.join("tuned.safetensors");
    let bytes = std::fs::read(&tuned).unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&tuned, &flipped).unwrap();
    let out = keel_in(&home, &["predict", s(&out_dir), s(&data)]);
    assert_fails_with(&out, &["tuned.safetensors", "checksum", "damaged"]);
    std::fs::write(&tuned, &bytes[..bytes.len() / 2]).unwrap();
    let out = keel_in(&home, &["evaluate", s(&out_dir), s(&data)]);
    assert_fails_with(&out, &["tuned.safetensors", "not a safetensors file"]);
    std::fs::remove_file(&tuned).unwrap();
    let out = keel_in(&home, &["predict", s(&out_dir), s(&data)]);
    assert_fails_with(&out, &["tuned.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Folders written before fine-tuning existed (version 1: no `fine_tune`, no phase in the
/// history) still evaluate and predict.
#[test]
fn version_1_model_folders_still_load() {
    let dir = common::temp_dir("ft-v1");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 3);
    let w = weights();
    let model = dir.join("model");
    // The same run without fine-tuning: every --fine-tune* option and its value left out.
    let args = ft_args(s(&data), s(&model), s(&w), &[]);
    let mut head_only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--fine-tune") {
            it.next();
        } else {
            head_only.push(*a);
        }
    }
    assert_ok(&keel_in(&home, &head_only));
    let mut card = json(&model.join("model.json"));
    card["version"] = 1.into();
    for m in card["history"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("fine_tune");
    }
    assert!(card.get("fine_tune").is_none());
    std::fs::write(model.join("model.json"), serde_json::to_vec(&card).unwrap()).unwrap();
    let out = keel_in(&home, &["predict", s(&model), s(&data)]);
    assert_ok(&out);
    card["version"] = 3.into();
    std::fs::write(model.join("model.json"), serde_json::to_vec(&card).unwrap()).unwrap();
    let out = keel_in(&home, &["predict", s(&model), s(&data)]);
    assert_fails_with(&out, &["version 3", "versions 1 to 2"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every block can be the first trained one: block1 stores the preprocessed images themselves.
#[test]
fn every_block_can_be_fine_tuned() {
    let dir = common::temp_dir("ft-blocks");
    let home = dir.join("home");
    let data = dir.join("photos");
    photo_folder(&data, 3);
    let w = weights();
    for block in ["block1", "block2", "block3", "block4", "block5"] {
        let out_dir = dir.join(block);
        let args = ft_args(
            s(&data),
            s(&out_dir),
            s(&w),
            &[
                "--fine-tune",
                block,
                "--epochs",
                "1",
                "--fine-tune-epochs",
                "1",
            ],
        );
        let out = keel_in(&home, &args);
        assert_ok(&out);
        let card = json(&out_dir.join("model.json"));
        assert_eq!(card["fine_tune"]["block"], block);
        let first = card["fine_tune"]["layers"][0].as_str().unwrap().to_string();
        assert_eq!(first, format!("{block}_conv1"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
