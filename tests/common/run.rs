//! Running the `keel` binary in tests, and the small generated photo folders they train on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel::rng::Rng;

pub fn keel_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_HOME", home)
        .env("KEEL_THREADS", "2")
        .output()
        .unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        stderr(out),
        stdout(out)
    );
}

#[track_caller]
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    // 1 for keel's errors, 2 for clap's usage errors; never 101 (a panic).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "exit code; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
}

pub fn weights() -> PathBuf {
    super::test_data("h5/micro_vgg16_notop.h5")
}

/// A 40x40 PNG that is mostly `tint` with seeded noise, so the two classes differ.
pub fn write_photo(path: &Path, tint: [u8; 3], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut img = image::RgbImage::new(40, 40);
    for px in img.pixels_mut() {
        for (c, t) in px.0.iter_mut().zip(tint) {
            *c = (t as f32 * 0.7 + rng.uniform(0.0, 76.0)) as u8;
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `root/red/*.png` and `root/blue/*.png`, `n` of each, plus a hidden file and a text file.
pub fn photo_folder(root: &Path, n: usize) {
    photo_folder_salted(root, n, 0);
}

/// As [`photo_folder`], with the noise drawn from other seeds (other file contents).
pub fn photo_folder_salted(root: &Path, n: usize, salt: u64) {
    for i in 0..n as u64 {
        write_photo(
            &root.join(format!("red/r{i:02}.png")),
            [250, 20, 20],
            salt + i,
        );
        write_photo(
            &root.join(format!("blue/b{i:02}.png")),
            [20, 20, 250],
            salt + 100 + i,
        );
    }
    std::fs::write(root.join("red/.DS_Store"), b"junk").unwrap();
    std::fs::write(root.join("blue/notes.txt"), b"not a photo").unwrap();
}

/// A trained model folder `home/model` on the micro VGG16 base (`photo_folder` photos in
/// `home/photos`, 3 per class, 40x40 inputs, 2 epochs): what the export tests start from.
/// `extra` goes to `keel train` as is (`--fine-tune block5`, `--head ...`).
pub fn trained_model(home: &Path, extra: &[&str]) -> PathBuf {
    trained_model_on(home, &weights(), extra)
}

/// [`trained_model`] on the base weights at `weights`.
pub fn trained_model_on(home: &Path, weights: &Path, extra: &[&str]) -> PathBuf {
    let photos = home.join("photos");
    photo_folder(&photos, 3);
    let model = home.join("model");
    let mut args = vec![
        "train",
        s(&photos),
        "-o",
        s(&model),
        "--weights",
        s(weights),
        "--input",
        "40x40",
        "--epochs",
        "2",
        "--validation-split",
        "0.34",
    ];
    args.extend_from_slice(extra);
    assert_ok(&keel_in(home, &args));
    model
}

/// The Python that runs the interop checks (`KEEL_TEST_PYTHON`, set by `.ci/run` to a venv
/// with numpy, h5py and onnxruntime), or None after printing why the check is skipped.
pub fn test_python(what: &str) -> Option<PathBuf> {
    match std::env::var_os("KEEL_TEST_PYTHON") {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        _ => {
            super::skip(format!(
                "KEEL_TEST_PYTHON is not set to a Python with numpy, h5py and onnxruntime \
                 (`.ci/run` makes one); {what} did not run"
            ));
            None
        }
    }
}
