//! A Keras user's first hour (issue 12): each item that got in the way, as a test that failed
//! before the fix. The fetch item is in `fetch.rs`, the help/--threads item in `src/cli/mod.rs`.

mod common;

use std::path::Path;

use common::run::{assert_fails_with, assert_ok, keel_in, s, stderr, stdout, trained_model};

/// A trained micro model in a fresh home, shared by the items below (each test trains its
/// own: tests run in parallel and write their own folders).
fn setup(name: &str, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let home = common::temp_dir(name);
    let model = trained_model(&home, extra);
    (home, model)
}

/// Item 3: `evaluate` on a folder holding one of the model's classes.
#[test]
fn evaluate_takes_a_subset_of_the_classes() {
    let (home, model) = setup("fh-eval", &[]);
    let only_red = home.join("only_red");
    common::run::write_photo(&only_red.join("red/a.png"), [250, 20, 20], 77);
    common::run::write_photo(&only_red.join("red/b.png"), [250, 20, 20], 78);
    let out = keel_in(
        &home,
        &["evaluate", s(&model), s(&only_red), "--format", "json"],
    );
    assert_ok(&out);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["images"], 2, "{report}");
    // Training still needs two classes.
    let out = keel_in(&home, &["train", s(&only_red), "-o", s(&home.join("m2"))]);
    assert_fails_with(&out, &["single class folder"]);
}

/// Items 4 and 9: `--top` above the classes gives all of them; the wide CSV has one row per
/// image and a column per class; `classify` writes CSV and JSON.
#[test]
fn predict_and_classify_outputs_for_programs() {
    let (home, model) = setup("fh-predict", &[]);
    let photos = home.join("photos");
    let out = keel_in(&home, &["predict", s(&model), s(&photos), "--top", "9"]);
    assert_ok(&out);
    let csv = stdout(&out);
    assert_eq!(
        csv.lines().count(),
        1 + 6 * 2,
        "all classes per image:\n{csv}"
    );
    let out = keel_in(
        &home,
        &["predict", s(&model), s(&photos), "--format", "wide"],
    );
    assert_ok(&out);
    let wide = stdout(&out);
    let mut lines = wide.lines();
    assert_eq!(lines.next(), Some("path,predicted,blue,red"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 6, "{wide}");
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 4, "{row}");
        let (b, r): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert!((b + r - 1.0).abs() < 1e-5, "{row}");
        assert_eq!(f[1], if b > r { "blue" } else { "red" }, "{row}");
    }

    let top = common::test_data("h5/micro_vgg16_top.h5");
    let img = photos.join("red/r00.png");
    let classify = |extra: &[&str]| {
        let mut args = vec!["classify", s(&img), "--weights", s(&top)];
        args.extend_from_slice(extra);
        keel_in(&home, &args)
    };
    let out = classify(&["--format", "csv", "--top", "4000"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("path,rank,wnid,label,probability\n"),
        "{text}"
    );
    let classes = text.lines().count() - 1;
    assert!(classes > 1, "every class of the file: {text}");
    let out = classify(&["--format", "json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v[0]["predictions"].as_array().unwrap().len(),
        5.min(classes)
    );
}

/// Item 5: a model whose base weights moved names the recorded path, the checksum and
/// `--weights`, and downloads nothing.
#[test]
fn a_model_whose_base_weights_moved_says_where_it_looked() {
    let home = common::temp_dir("fh-moved");
    let weights = home.join("base.h5");
    std::fs::copy(common::run::weights(), &weights).unwrap();
    let model = common::run::trained_model_on(&home, &weights, &[]);
    let photos = home.join("photos");
    let moved = home.join("elsewhere.h5");
    std::fs::rename(&weights, &moved).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["predict", s(&model), s(&photos)])
        .env("KEEL_HOME", &home)
        // Nothing may be downloaded: a refused port stands for a machine without network.
        .env("KEEL_WEIGHTS_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_fails_with(
        &out,
        &[
            s(&weights),
            "checksum sha256:",
            "--weights FILE",
            "looked at",
        ],
    );
    assert!(
        !stderr(&out).contains("cannot download"),
        "{}",
        stderr(&out)
    );
    let out = keel_in(
        &home,
        &["predict", s(&model), s(&photos), "--weights", s(&moved)],
    );
    assert_ok(&out);
}

/// Item 6: messages. The OS error once; a skipped photo's line names it once; an unknown
/// KEEL_ISA is an error; a run that stops early says so after its epoch lines; converted files
/// are readable by others.
#[test]
fn messages_say_things_once_and_plainly() {
    let home = common::temp_dir("fh-messages");
    let photos = home.join("photos");
    common::run::photo_folder(&photos, 3);
    let out = keel_in(
        &home,
        &[
            "evaluate",
            s(&home.join("no_model")),
            s(&home.join("no_photos")),
        ],
    );
    let err = stderr(&out);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    std::fs::write(photos.join("red/zz_bad.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    let model = home.join("model");
    let w = common::run::weights();
    let train = |extra: &[&str], out_dir: &Path| {
        let mut args = vec![
            "train",
            s(&photos),
            "-o",
            s(out_dir),
            "--weights",
            s(&w),
            "--input",
            "40x40",
        ];
        args.extend_from_slice(extra);
        keel_in(&home, &args)
    };
    let out = train(
        &[
            "--skip-bad",
            "--epochs",
            "40",
            "--patience",
            "1",
            "--lr",
            "0.5",
        ],
        &model,
    );
    assert_ok(&out);
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("zz_bad.png"))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(line.matches("zz_bad.png").count(), 1, "{line}");
    assert!(
        err.contains("stopped early after epoch") && err.contains("of 40"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "features",
            s(&photos),
            "--weights",
            s(&w),
            "-o",
            s(&home.join("f.npy")),
        ])
        .env("KEEL_HOME", &home)
        .env("KEEL_ISA", "sse9")
        .output()
        .unwrap();
    assert_fails_with(&out, &["KEEL_ISA", "sse9"]);

    let st = home.join("w.safetensors");
    assert_ok(&keel_in(&home, &["convert", s(&w), "-o", s(&st)]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&st).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "mode {mode:o}: others cannot read it");
    }
}

/// Item 8: `keel summary MODEL_DIR` prints the base and the head.
#[test]
fn summary_prints_a_trained_model() {
    let (home, model) = setup("fh-summary", &[]);
    let out = keel_in(&home, &["summary", s(&model)]);
    assert_ok(&out);
    let text = stdout(&out);
    for needle in [
        "2 classes (blue, red)",
        "block5_pool",
        "Head (reads block5_pool",
        "dense256",
        "softmax",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let out = keel_in(&home, &["summary", "vgg17"]);
    assert_fails_with(&out, &["vgg17", "model folder"]);
}

/// Item 2: the README's synopsis gives every option's true default where it shows a value
/// for an option that has one, and every path in its layout table exists.
#[test]
fn the_readme_tells_the_truth() {
    use clap::CommandFactory;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let cli = keel::cli::Cli::command();
    let mut checked = 0;
    for line in readme.lines().filter(|l| l.starts_with("keel ")) {
        let mut words = line.split_whitespace().skip(1);
        let Some(mut cmd) = words.next().and_then(|w| cli.find_subcommand(w)) else {
            continue;
        };
        if let Some(sub) = words.clone().next().and_then(|w| cmd.find_subcommand(w)) {
            cmd = sub;
        }
        // `[--name VALUE]` with a concrete value (no placeholder, no alternatives).
        for part in line.split('[').skip(1) {
            let inner = part.split(']').next().unwrap();
            let mut it = inner.split_whitespace();
            let (Some(flag), Some(value), None) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Some(name) = flag.strip_prefix("--") else {
                continue;
            };
            if value.contains('|') || value.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                continue;
            }
            let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(name)) else {
                panic!("README: {} has no --{name}", cmd.get_name())
            };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if let [default] = &defaults[..] {
                let same = match (default.parse::<f64>(), value.parse::<f64>()) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => default == value,
                };
                assert!(
                    same,
                    "README: {} --{name} shows {value}, the default is {default}",
                    cmd.get_name()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} defaults found in the README's synopsis"
    );
    let layout = readme
        .split("## Layout")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    for path in layout
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
    {
        assert!(
            root.join(path).exists(),
            "README's layout names {path}, which does not exist"
        );
    }
}
