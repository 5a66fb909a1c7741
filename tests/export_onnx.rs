//! `keel export --format onnx`: the exported graph, run by ONNX Runtime on the very inputs keel
//! sees, gives keel's probabilities (within 1e-4), for each kind of head and a fine-tuned
//! base; bad input fails cleanly without leaving a file.
//!
//! The inputs: the test preprocesses the training photos with keel's own loader
//! (`io::batch::load_preprocessed`, at the model's input size and resize filter: what
//! `keel predict` feeds the network), writes them as `.npy`, and writes keel's probabilities
//! from `keel predict --format json` beside them. `scripts/check_onnx_export.py` (with the
//! Python of `KEEL_TEST_PYTHON`) runs onnx.checker and ONNX Runtime on them and compares.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run::trained_model;
use common::run::{assert_fails_with, assert_ok, keel_in, s, stderr, stdout, test_python};
use keel::tensor::Tensor;
use keel::transfer::TrainedModel;

fn export(home: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["export", s(model), "--format", "onnx", "-o", s(out)];
    args.extend_from_slice(extra);
    keel_in(home, &args)
}

/// No file at `out`, and no temporary file of a write left beside it.
#[track_caller]
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let dir = out.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains("keel-tmp"), "temporary file left: {name}");
    }
}

/// keel's probabilities for every photo under `photos`, from `keel predict --format json`:
/// the paths in keel's order, and one row per path in the model's class order.
fn keel_predictions(
    home: &Path,
    model: &Path,
    photos: &Path,
    classes: &[String],
) -> (Vec<PathBuf>, Vec<f32>) {
    let n = classes.len().to_string();
    let out = keel_in(
        home,
        &[
            "predict",
            s(model),
            s(photos),
            "--format",
            "json",
            "--top",
            &n,
        ],
    );
    assert_ok(&out);
    let items: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (mut paths, mut probs) = (Vec::new(), Vec::new());
    for item in items.as_array().unwrap() {
        paths.push(PathBuf::from(item["path"].as_str().unwrap()));
        let preds = item["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), classes.len(), "{item}");
        for c in classes {
            let p = preds.iter().find(|p| p["class"] == c.as_str()).unwrap();
            probs.push(p["probability"].as_f64().unwrap() as f32);
        }
    }
    assert!(!paths.is_empty(), "keel predict found no photos");
    (paths, probs)
}

/// Train a micro model with `extra`, export it, and (with the test Python) check ONNX Runtime
/// against keel. Returns the test's folder, the model folder and the exported file.
fn exported(kind: &str, extra: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let home = common::temp_dir(&format!("onnx-{kind}"));
    let model = trained_model(&home, extra);
    let onnx = home.join("out").join("model.onnx");
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    let out = export(&home, &model, &onnx, &[]);
    assert_ok(&out);
    assert!(stderr(&out).contains("model.onnx"), "{}", stderr(&out));
    let bytes = std::fs::read(&onnx).unwrap();
    // ModelProto field 1 (ir_version) = 8 comes first.
    assert_eq!(&bytes[..2], [0x08, 0x08], "{kind}: not keel's ONNX header");
    let entries = std::fs::read_dir(onnx.parent().unwrap()).unwrap().count();
    assert_eq!(entries, 1, "{kind}: only model.onnx in the output folder");
    (home, model, onnx)
}

/// Run ONNX Runtime on keel's preprocessed photos and compare with `keel predict`.
fn check_with_ort(kind: &str, home: &Path, model: &Path, onnx: &Path) {
    let Some(python) = test_python(&format!("the ONNX Runtime check of the {kind} export")) else {
        return;
    };
    let card = TrainedModel::load(model).unwrap().card;
    let (paths, probs) = keel_predictions(home, model, &home.join("photos"), &card.classes);
    let interpolation = card.base.interpolation.parse().unwrap();
    let x = keel::io::batch::load_preprocessed(&paths, card.base.input, interpolation).unwrap();
    let keel_probs = Tensor::from_vec([paths.len(), card.classes.len()], &probs).unwrap();
    let (inputs, want) = (home.join("inputs.npy"), home.join("keel.npy"));
    keel::io::npy::write_f32(&inputs, &x).unwrap();
    keel::io::npy::write_f32(&want, &keel_probs).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx_export.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([onnx, &inputs, &want])
        .arg("--model-json")
        .arg(model.join("model.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{kind}: check_onnx_export.py failed\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("max |ort - keel|"));
    println!(
        "{kind}: {}",
        line.expect("the script prints the difference")
    );
}

// The micro base on 40x40 photos ends at block5_pool with a 1x1 map, over which global
// pooling and flattening cannot show a wrong axis or order; so the head tests read earlier
// layers, whose maps are 2x2 or 5x5 (`--layer`). The fine-tuned test keeps block5_pool.

/// The default head, on block5_conv3 (2x2x6): a base that ends at a conv layer.
#[test]
fn default_head() {
    let (home, model, onnx) = exported("gap", &["--layer", "block5_conv3"]);
    check_with_ort(
        "gap,dense256,relu,dropout0.5 on block5_conv3",
        &home,
        &model,
        &onnx,
    );
    std::fs::remove_dir_all(&home).unwrap();
}

/// Flatten of block3_pool (5x5x4, 100 features): the transpose back to Keras's NHWC order.
#[test]
fn flatten_head() {
    let head = "flatten,dense8,relu,dropout0.2";
    let (home, model, onnx) = exported("flatten", &["--layer", "block3_pool", "--head", head]);
    check_with_ort(&format!("{head} on block3_pool"), &home, &model, &onnx);
    std::fs::remove_dir_all(&home).unwrap();
}

/// Global max pooling of block4_pool (2x2x5, pooled from 5x5: the odd size floored). A head
/// of `gmp` alone saturates on the micro base (probabilities exactly 0 and 1, which would
/// agree whatever the graph computed), hence the dense layers.
#[test]
fn gmp_head() {
    let head = "gmp,dense256,relu,dropout0.5";
    let (home, model, onnx) = exported("gmp", &["--layer", "block4_pool", "--head", head]);
    check_with_ort(&format!("{head} on block4_pool"), &home, &model, &onnx);
    std::fs::remove_dir_all(&home).unwrap();
}

/// The default head on block5_pool, block5 fine-tuned (at a learning rate high enough that the
/// tuned weights move the probabilities well past the tolerance): the tuned conv weights are
/// the ones exported.
#[test]
fn fine_tuned() {
    let extra = ["--fine-tune", "block5", "--fine-tune-lr", "1e-3"];
    let (home, model, onnx) = exported("fine-tuned", &extra);
    let trained = TrainedModel::load(&model).unwrap();
    assert!(
        trained.card.fine_tune.as_ref().unwrap().kept,
        "fine-tuning was kept"
    );
    let tuned = trained.tuned.as_ref().unwrap();
    let (_, bias) = tuned
        .iter()
        .find(|(n, _)| n == "block5_conv3.bias")
        .unwrap();
    let bytes = std::fs::read(&onnx).unwrap();
    let raw: Vec<u8> = bias.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(
        bytes.windows(raw.len()).any(|w| w == raw),
        "the tuned block5_conv3 bias is in the file"
    );
    check_with_ort("fine-tuned block5", &home, &model, &onnx);

    // Damaged fine-tuned weights: refused, naming the file, nothing written.
    let tuned = model.join("tuned.safetensors");
    let mut damaged = std::fs::read(&tuned).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x40;
    std::fs::write(&tuned, &damaged).unwrap();
    let again = home.join("out").join("again.onnx");
    assert_fails_with(&export(&home, &model, &again, &[]), &["tuned.safetensors"]);
    assert_nothing_written(&again);
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn bad_input() {
    let home = common::temp_dir("onnx-bad");
    let out_dir = home.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let onnx = out_dir.join("m.onnx");

    // Not a model folder; an unknown format (clap's usage error, exit 2).
    let nope = home.join("nope");
    assert_fails_with(
        &export(&home, &nope, &onnx, &[]),
        &["nope", "not a model folder"],
    );
    assert_nothing_written(&onnx);
    let out = keel_in(
        &home,
        &["export", s(&nope), "--format", "tflite", "-o", s(&onnx)],
    );
    assert_fails_with(&out, &["tflite", "--format"]);
    assert_nothing_written(&onnx);

    let model = trained_model(&home, &[]);

    // Damaged model folders: a truncated head, a broken card.
    let broken = home.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(model.join("model.json"), broken.join("model.json")).unwrap();
    let head = std::fs::read(model.join("head.safetensors")).unwrap();
    std::fs::write(broken.join("head.safetensors"), &head[..head.len() / 2]).unwrap();
    assert_fails_with(&export(&home, &broken, &onnx, &[]), &["head.safetensors"]);
    assert_nothing_written(&onnx);
    std::fs::write(broken.join("model.json"), b"{\"format\": 1}").unwrap();
    assert_fails_with(&export(&home, &broken, &onnx, &[]), &["model.json"]);
    assert_nothing_written(&onnx);

    // Base weights other than the model's.
    let other = home.join("other.h5");
    std::fs::write(&other, b"not hdf5").unwrap();
    let out = export(&home, &model, &onnx, &["--weights", s(&other)]);
    assert_fails_with(&out, &["other.h5"]);
    assert_nothing_written(&onnx);

    // An existing output is kept unless --overwrite.
    std::fs::write(&onnx, b"keep me").unwrap();
    let out = export(&home, &model, &onnx, &[]);
    assert_fails_with(&out, &["m.onnx", "--overwrite"]);
    assert_eq!(std::fs::read(&onnx).unwrap(), b"keep me");
    assert_ok(&export(&home, &model, &onnx, &["--overwrite"]));
    assert_eq!(&std::fs::read(&onnx).unwrap()[..2], [0x08, 0x08]);

    // An output path that is a folder, or in a folder that does not exist.
    let out = export(&home, &model, &out_dir, &["--overwrite"]);
    assert_fails_with(&out, &["out", "directory"]);
    let missing = home.join("no/such/dir/m.onnx");
    assert_fails_with(&export(&home, &model, &missing, &[]), &["m.onnx"]);
    assert!(!home.join("no").exists());
    std::fs::remove_dir_all(&home).unwrap();
}
