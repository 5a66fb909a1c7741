//! `keel tune`: a short search writes this CPU model's tuning file, and keel then reports and
//! uses it. The tuner itself fails if any block size changes a product's bits.

mod common;

use std::process::Command;

fn keel(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    keel_with(home, args, &[])
}

/// [`keel`] with variables set for this run only.
fn keel_with(home: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_HOME", home)
        .env_remove("KEEL_TUNING")
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

/// Where `keel info --format json` says `isa`'s block sizes come from.
fn blocking_source(info: &serde_json::Value, isa: &str) -> String {
    let row = info["blocking"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["isa"] == isa)
        .unwrap_or_else(|| panic!("no blocking row for {isa}: {info}"));
    row["source"].as_str().unwrap().to_string()
}

#[test]
fn tune_writes_a_file_that_info_then_reports() {
    let home = common::temp_dir("tune");
    // One round at a tiny input (about 10 s on 2 cores, nearly all of it the block-size
    // search), yet every candidate block size and every algorithm of every layer runs once.
    let quick = [
        "tune",
        "--rounds",
        "1",
        "--input",
        "32x32",
        "--threads",
        "2",
    ];
    let run = keel(&home, &quick);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "keel tune failed:\n{stderr}");
    let t: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        t["conv"].as_array().unwrap().len(),
        13,
        "VGG16's 13 convolutions"
    );
    let b = &t["blocking"][0];
    assert!(b["mc"].as_u64().unwrap() > 0 && b["kc"].as_u64().unwrap() > 0);
    assert!(b["gflops"].as_f64().unwrap() > 0.0);
    let files: Vec<_> = std::fs::read_dir(home.join("tune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    let info = keel(&home, &["info", "--format", "json"]);
    assert!(info.status.success());
    let i: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let tuning = i["tuning"].as_str().unwrap();
    assert!(tuning.contains("tune"), "{tuning}");
    let isa = b["isa"].as_str().unwrap();
    assert_eq!(blocking_source(&i, isa), "tuned");

    // Under KEEL_ISA's cap the tuner measures the capped kernel, and the block sizes tuned
    // before for the other kernel stay in the file.
    if isa == "avx512" {
        let capped = keel_with(&home, &quick, &[("KEEL_ISA", "avx2")]);
        let stderr = String::from_utf8_lossy(&capped.stderr);
        assert!(
            capped.status.success(),
            "keel tune under KEEL_ISA=avx2 failed:\n{stderr}"
        );
        assert!(stderr.contains("kernel avx2"), "{stderr}");
        let t: serde_json::Value = serde_json::from_slice(&capped.stdout).unwrap();
        let isas: Vec<&str> = t["blocking"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["isa"].as_str().unwrap())
            .collect();
        assert_eq!(isas, ["avx2", "avx512"]);
        let info = keel(&home, &["info", "--format", "json"]);
        let i: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        for isa in ["avx2", "avx512"] {
            assert_eq!(blocking_source(&i, isa), "tuned", "{isa}");
        }
    } else {
        common::skip(format!(
            "tune under KEEL_ISA=avx2 keeping the avx512 block sizes: this CPU's kernel is {isa}"
        ));
    }

    // KEEL_TUNING=off falls back to the model.
    let off = keel_with(
        &home,
        &["info", "--format", "json"],
        &[("KEEL_TUNING", "off")],
    );
    let o: serde_json::Value = serde_json::from_slice(&off.stdout).unwrap();
    assert!(
        o["blocking"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"] == "model")
    );

    // A damaged file is ignored, named, and does not stop a run.
    std::fs::write(&files[0], b"{ damaged").unwrap();
    let bad = keel(&home, &["info"]);
    assert!(bad.status.success());
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("ignored") && text.contains("not a keel tuning file"),
        "{text}"
    );
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn tune_refuses_bad_options() {
    let home = common::temp_dir("tune-bad");
    for args in [
        &["tune", "--rounds", "0"][..],
        &["tune", "--batch", "0"][..],
        &["tune", "--input", "8x8"][..],
    ] {
        let out = keel(&home, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    assert!(!home.join("tune").exists());
    std::fs::remove_dir_all(&home).unwrap();
}
