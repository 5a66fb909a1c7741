//! The acceptance run of transfer learning: `keel train` with default settings on the
//! ants-vs-bees photos (244 train, 153 val, split kept) over the real ImageNet VGG16 base must
//! reach 95% validation accuracy.
//!
//! It runs the base over 397 photos (minutes on 2 cores the first time; the feature cache in
//! `$KEEL_HOME/features` makes later runs take seconds), so it is kept out of the default suite:
//!
//! ```text
//! cargo test --release --test hymenoptera -- --ignored --nocapture
//! ```

mod common;

use std::process::Command;

/// `keel train` on the shared ants-vs-bees photos with `extra` options: its report.json and the
/// wall time in seconds, or None (with a printed reason) where the data is absent.
fn train_hymenoptera(name: &str, extra: &[&str]) -> Option<(serde_json::Value, f64)> {
    let shared = common::shared("datasets/hymenoptera")?;
    let weights = shared.join("weights/vgg16_imagenet_notop.h5");
    if !weights.is_file() {
        common::skip(format!("{} is absent", weights.display()));
        return None;
    }
    let out_dir = common::temp_dir(name).join("ants_vs_bees");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("train")
        .arg(shared.join("datasets/hymenoptera"))
        .arg("--weights")
        .arg(&weights)
        .arg("-o")
        .arg(&out_dir)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "keel train failed:\n{stderr}");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let wall = started.elapsed().as_secs_f64();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(out_dir.parent().unwrap()).unwrap();
    Some((report, wall))
}

#[test]
#[ignore = "slow the first time (the VGG16 base over 397 photos); run with --ignored"]
fn default_training_reaches_95_percent_on_hymenoptera() {
    let Some((report, wall)) = train_hymenoptera("hymenoptera", &[]) else {
        return;
    };
    let val = &report["validation"];
    let accuracy = val["accuracy"].as_f64().unwrap();
    let t = &report["timings"];
    println!(
        "validation accuracy {accuracy:.4} on {} images; confusion {}; features {:.1} s \
         ({} computed, {} cached); training {:.2} s; wall {wall:.1} s",
        val["images"],
        val["confusion"],
        t["features_seconds"].as_f64().unwrap(),
        t["images_computed"],
        t["images_cached"],
        t["training_seconds"].as_f64().unwrap(),
    );
    assert_eq!(val["images"], 153);
    assert!(accuracy >= 0.95, "validation accuracy {accuracy} < 0.95");
}

/// The acceptance run of fine-tuning: `keel train --fine-tune block5`, other options default,
/// must reach 96% validation accuracy and finish within 8 minutes on 2 cores. It does not reach
/// 96% (94.12%: fine-tuning does not beat the head's validation loss there, so the head-only
/// model is kept; docs/fine-tune.md has what was measured and tried); the test states the
/// target as the issue set it.
///
/// ```text
/// cargo test --release --test hymenoptera fine_tune -- --ignored --nocapture
/// ```
#[test]
#[ignore = "minutes on 2 cores; run with --ignored"]
fn fine_tuning_block5_reaches_96_percent_on_hymenoptera() {
    let Some((report, wall)) = train_hymenoptera("hymenoptera-ft", &["--fine-tune", "block5"])
    else {
        return;
    };
    let accuracy = report["validation"]["accuracy"].as_f64().unwrap();
    let before = report["validation_before_fine_tune"]["accuracy"]
        .as_f64()
        .unwrap();
    println!(
        "validation accuracy {accuracy:.4} (head alone {before:.4}); fine-tuning {:.1} s; wall {wall:.1} s",
        report["timings"]["fine_tune_seconds"].as_f64().unwrap()
    );
    assert!(wall <= 480.0, "{wall} s > 8 minutes");
    assert!(accuracy >= 0.96, "validation accuracy {accuracy} < 0.96");
}
