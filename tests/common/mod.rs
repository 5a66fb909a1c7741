//! Helpers shared by the integration tests: where the shared data lives, and comparisons.
#![allow(dead_code)]

pub mod run;

use std::path::PathBuf;

use keel::cpu::isa::Isa;
use keel::cpu::{Cpu, CpuReference};
use keel::io::npy::NpyArray;
use keel::tensor::{Backend, Tensor};

/// Say that a test did not run, and why, where the test command's output shows it: straight
/// to the process's stderr, past libtest's capture (which would hide an `eprintln!` of a test
/// that returns normally, so a skip would read as a pass).
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {reason}");
}

/// `../shared` next to the checkout, or `None` (with a printed reason) when it is absent, so
/// the suite still passes on a machine without the data.
pub fn shared(what: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let probe = dir.join(what);
    if probe.exists() {
        Some(dir)
    } else {
        skip(format!(
            "{} is absent (tests that need ../shared/{what} did not run)",
            probe.display()
        ));
        None
    }
}

/// keel's own test data.
pub fn test_data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// A fresh, empty temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `max|got - want| <= rel * max|want|`, element by element, with the shapes equal. NaN in
/// either fails (the comparison is written so that NaN is never "within tolerance").
/// Returns the measured max|diff| / max|want|.
pub fn assert_close(what: &str, got: &Tensor, want: &NpyArray, rel: f64) -> f64 {
    assert_eq!(got.dims(), want.shape.as_slice(), "{what}: shape");
    let scale = want.data.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    assert!(
        scale > 0.0,
        "{what}: reference is all zeros; the comparison would prove nothing"
    );
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.data().iter().zip(&want.data).enumerate() {
        let err = (g as f64 - w as f64).abs();
        assert!(
            err <= rel * scale,
            "{what}: element {i}: got {g}, want {w} (|diff| {err:e} > {rel:e} * {scale})"
        );
        worst = worst.max(err);
    }
    worst / scale
}

/// The reference backend, then the fast backend on every instruction set this CPU has: the
/// backends every parity test runs.
pub fn backends() -> Vec<Box<dyn Backend>> {
    let mut all: Vec<Box<dyn Backend>> = vec![Box::new(CpuReference)];
    for isa in Isa::all_available() {
        all.push(Box::new(Cpu::with_isa(isa).unwrap()));
    }
    all
}
