//! `keel bench`: the contract `../shared/bench/compare_cpu.sh` relies on (stdout holds one line
//! per repetition with only its seconds; the report goes to stderr) and clean errors for bad
//! arguments. Small shapes only: this checks behaviour, not speed.

use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env_remove("REPS")
        .output()
        .unwrap()
}

/// The run succeeded and printed `reps` lines of seconds and nothing else on stdout.
#[track_caller]
fn assert_timings(out: &Output, reps: usize) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), reps, "stdout: {stdout}");
    for l in lines {
        let t: f64 = l
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not seconds: '{l}'"));
        assert!(t.is_finite() && t >= 0.0, "{t}");
    }
    stderr
}

#[track_caller]
fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    assert!(out.stdout.is_empty(), "no timings from a failed run");
}

#[test]
fn gemm_prints_one_time_per_repetition_and_checks_itself() {
    for kernel in ["naive", "blocked", "packed"] {
        let err = assert_timings(
            &keel(&[
                "bench", "gemm", "17", "33", "9", "--kernel", kernel, "--reps", "3",
            ]),
            3,
        );
        assert!(
            err.contains("ok, tolerance 1e-5") && err.contains("GFLOP/s"),
            "{err}"
        );
    }
    // REPS from the environment, as compare_cpu.sh exports it.
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--threads", "1", "bench", "gemm", "5", "7", "3"])
        .env("REPS", "2")
        .output()
        .unwrap();
    assert_timings(&out, 2);
}

/// `keel bench conv` of block2_conv1 at a small odd input, one repetition, with `extra`.
fn bench_block2_conv1(extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "conv",
        "--layer",
        "block2_conv1",
        "--input",
        "40x36",
        "--reps",
        "1",
    ];
    args.extend_from_slice(extra);
    keel(&args)
}

#[test]
fn conv_and_vgg16_run_every_algorithm() {
    for algo in [
        "reference",
        "direct",
        "implicit-gemm",
        "winograd2",
        "winograd4",
    ] {
        let err = assert_timings(&bench_block2_conv1(&["--algo", algo]), 1);
        assert!(err.contains("ok, tolerance"), "{algo}: {err}");
    }
    assert_timings(
        &keel(&[
            "bench", "vgg16", "--input", "32x32", "--batch", "2", "--reps", "2",
        ]),
        2,
    );
    assert_timings(
        &keel(&[
            "bench",
            "vgg16",
            "--input",
            "32x32",
            "--isa",
            "reference",
            "--reps",
            "1",
        ]),
        1,
    );
}

#[test]
fn conv_runs_in_bf16_where_the_cpu_can() {
    for pass in ["forward", "input-grad"] {
        let out = bench_block2_conv1(&["--pass", pass, "--precision", "bf16"]);
        if !out.status.success() {
            // Without AVX512-BF16 the run must say so, not fail otherwise.
            assert_fails_with(&out, "needs AVX512-BF16");
            eprintln!("SKIP bench conv --precision bf16 {pass}: this CPU lacks AVX512-BF16");
            continue;
        }
        let err = assert_timings(&out, 1);
        assert!(
            err.contains("in bf16") && err.contains("ok, tolerance"),
            "{pass}: {err}"
        );
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    assert_fails_with(
        &keel(&[
            "bench",
            "conv",
            "--layer",
            "block1_conv1",
            "--precision",
            "fp8",
        ]),
        "unknown --precision fp8",
    );
    assert_fails_with(
        &keel(&["bench", "gemm", "4", "4", "4", "--kernel", "fast"]),
        "unknown --kernel fast",
    );
    assert_fails_with(&keel(&["bench", "gemm", "0", "4", "4"]), "at least 1");
    assert_fails_with(
        &keel(&["bench", "gemm", "4", "4", "4", "--reps", "0"]),
        "--reps",
    );
    assert_fails_with(
        &keel(&["bench", "conv", "--layer", "block9_conv1"]),
        "no convolution 'block9_conv1'",
    );
    assert_fails_with(
        &keel(&["bench", "conv", "--layer", "block1_conv1", "--algo", "fft"]),
        "unknown --algo fft",
    );
    assert_fails_with(
        &keel(&["bench", "conv", "--layer", "block1_conv1", "--isa", "sse9"]),
        "unknown --isa sse9",
    );
    assert_fails_with(
        &keel(&["bench", "vgg16", "--weights", "/nonexistent/w.h5"]),
        "/nonexistent/w.h5",
    );
    assert_fails_with(&keel(&["bench", "vgg16", "--batch", "0"]), "--batch");
}
