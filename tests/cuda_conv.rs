//! The convolution ladder (`kernels/conv.cu`) on the CPU build of its source, through keel's
//! own launch code: every rung on odd shapes against an f64 reference of the inputs as the rung
//! sees them, launches the launcher must refuse, NaN through the fused pool, and broken
//! kernels that the validation must catch. (The NVRTC compile and ptxas budgets of conv.cu are
//! checked with every other module by tests/cuda_kernels.rs.)
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use keel::cuda::check_conv::{self as check, ConvCase, QUICK_CASES};
use keel::cuda::conv::{self, ConvKind, ConvOperands};
use keel::cuda::gemm::Precision;
use keel::cuda::source::{self, ModuleSource};
use keel::cuda::{Gpu, nvrtc};

/// The CPU build, or None with a printed reason.
fn cpu_build() -> Option<Arc<Gpu>> {
    match Gpu::cpu_emulated() {
        Ok(g) => Some(g),
        Err(e) => {
            common::skip(format!("kernels cannot be built for the CPU here: {e}"));
            None
        }
    }
}

#[test]
fn every_rung_matches_the_reference_on_odd_shapes() {
    let Some(gpu) = cpu_build() else { return };
    let mut failed = Vec::new();
    for rung in conv::rungs() {
        let mut ran = 0;
        for (i, case) in QUICK_CASES.iter().enumerate() {
            if !case.fits(rung) {
                continue;
            }
            let v = check::validate(&gpu, rung, *case, 100 + i as u64).unwrap();
            eprintln!(
                "{:11} {:44} K {:4}: error {:.2e} (tolerance {:.0e}) {}",
                rung.rung,
                case.to_string(),
                v.k,
                v.error,
                v.tolerance,
                if v.passed { "ok" } else { "FAILED" }
            );
            if !v.passed {
                failed.push(format!("{} on {case}: {:.2e}", rung.rung, v.error));
            }
            ran += 1;
        }
        assert!(ran >= 5, "{} ran on only {ran} quick cases", rung.rung);
    }
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

#[test]
fn the_rung_table_matches_the_source() {
    let entries = source::CONV.entry_points();
    for r in conv::rungs() {
        assert!(
            entries.contains(&r.kernel),
            "{} is not in conv.cu",
            r.kernel
        );
        assert_eq!(r.block, [256, 1, 1], "{}", r.rung);
        assert_eq!(r.pool, r.kind == ConvKind::Igemm, "{}", r.rung);
    }
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        assert!(conv::rungs().iter().any(|r| r.precision == p && r.pool));
    }
    let err = conv::rung("winograd").unwrap_err().to_string();
    assert!(
        err.contains("igemm_tf32") && err.contains("direct"),
        "{err}"
    );
    // The first VGG layer goes to the direct kernel, everything else (and any pool) to the
    // implicit GEMM of the precision asked for.
    let first = check::VGG_CASES[0].geometry().unwrap();
    assert_eq!(conv::best(Precision::Tf32, &first, false).rung, "direct");
    assert_eq!(conv::best(Precision::Bf16, &first, true).rung, "igemm_bf16");
    let deep = check::VGG_CASES[5].geometry().unwrap();
    assert_eq!(conv::best(Precision::Fp32, &deep, false).rung, "igemm_fp32");
    // Weights per precision: f32 bytes, or bf16 bits.
    assert_eq!(conv::kernel_for(Precision::Tf32, &[1.0, -2.0]).len(), 8);
    assert_eq!(
        conv::kernel_for(Precision::Bf16, &[1.0, -2.0]),
        [0x80, 0x3f, 0x00, 0xc0]
    );
}

#[test]
fn bad_launches_are_refused_naming_the_kernel() {
    let Some(gpu) = cpu_build() else { return };
    let case = ConvCase::new(1, [5, 5], [8, 4], [3, 3], 1, true, false, true);
    let g = case.geometry().unwrap();
    let x = gpu.alloc(5 * 5 * 8 * 4).unwrap();
    let kernel = gpu.alloc(9 * 8 * 4 * 4).unwrap();
    let bias = gpu.alloc(4 * 4).unwrap();
    let out = gpu.alloc(5 * 5 * 4 * 4).unwrap();
    let small = gpu.alloc(5 * 5 * 4 * 4 - 4).unwrap();
    let ops = |out, pool| ConvOperands {
        x: &x,
        kernel: &kernel,
        bias: Some(&bias),
        out,
        geometry: g,
        relu: true,
        pool,
    };
    let tf32 = conv::rung("igemm_tf32").unwrap();
    conv::conv2d(&gpu, tf32, &ops(&out, false)).unwrap();
    let err = conv::conv2d(&gpu, tf32, &ops(&small, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv_igemm_tf32") && err.contains("output") && err.contains("396"),
        "{err}"
    );
    // K = 3*3*8 = 72 is beyond the direct kernel's shared memory.
    let direct = conv::rung("direct").unwrap();
    let err = conv::conv2d(&gpu, direct, &ops(&out, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv_direct_first") && err.contains("72") && err.contains("64"),
        "{err}"
    );
    let err = conv::conv2d(&gpu, direct, &ops(&out, true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv_direct_first") && err.contains("max pool"),
        "{err}"
    );
    // A pool over a 1-pixel-wide conv output has no window.
    let thin = ConvCase::new(1, [5, 1], [8, 4], [3, 3], 1, true, true, true);
    let err = conv::conv2d(
        &gpu,
        tf32,
        &ConvOperands {
            geometry: thin.geometry().unwrap(),
            ..ops(&out, true)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at least 2x2"), "{err}");
    // The bf16 rung reads 2-byte weights: a buffer of f32 weights is big enough, one of half
    // the bf16 size is not.
    let bf16 = conv::rung("igemm_bf16").unwrap();
    let short = gpu.alloc(9 * 8 * 4).unwrap();
    let err = conv::conv2d(
        &gpu,
        bf16,
        &ConvOperands {
            kernel: &short,
            ..ops(&out, false)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("conv_igemm_bf16") && err.contains("kernel"),
        "{err}"
    );
}

/// A NaN in the input makes NaN exactly the conv outputs whose window touches it (ReLU keeps
/// NaN) and then exactly the pooled outputs whose window holds one of those; the rest stays
/// finite and right.
#[test]
fn nan_propagates_through_the_fused_pool() {
    let Some(gpu) = cpu_build() else { return };
    let case = ConvCase::new(1, [7, 7], [8, 5], [3, 3], 1, true, true, true);
    let g = case.geometry().unwrap();
    let mut rng = keel::rng::Rng::new(3);
    let mut x = rng.uniform_vec(7 * 7 * 8, -1.0, 1.0);
    let kernel = rng.uniform_vec(9 * 8 * 5, -1.0, 1.0);
    let bias = rng.uniform_vec(5, -1.0, 1.0);
    x[(6 * 7 + 6) * 8 + 3] = f32::NAN; // bottom-right pixel: only pooled window (2, 2) sees it
    for rung in conv::rungs().iter().filter(|r| r.pool) {
        let got = check::run_case(&gpu, rung.module(), rung, &g, &x, &kernel, &bias, case).unwrap();
        let want = check::reference(&g, &x, &kernel, Some(&bias), true, true);
        assert_eq!(got.len(), 3 * 3 * 5);
        for (i, (&o, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(o.is_nan(), w.is_nan(), "{} at {i}: {o} vs {w}", rung.rung);
            if !w.is_nan() {
                assert!(
                    (o as f64 - w).abs() < 0.05,
                    "{} at {i}: {o} vs {w}",
                    rung.rung
                );
            }
        }
        let nans = got.iter().filter(|v| v.is_nan()).count();
        assert_eq!(nans, 5, "{}: one window, every channel", rung.rung);
        eprintln!("{}: NaN reaches exactly window (2, 2)", rung.rung);
    }
}

fn mutant(name: &'static str, text: String) -> &'static ModuleSource {
    Box::leak(Box::new(ModuleSource {
        name,
        file: "conv.cu",
        text: Box::leak(text.into_boxed_str()),
        sm90a_only: false,
    }))
}

fn mutate(text: &str, edits: &[(&str, &str)]) -> String {
    let mut s = text.to_string();
    for (from, to) in edits {
        assert!(s.contains(from), "mutation no longer applies: {from}");
        s = s.replacen(from, to, 1);
    }
    s
}

/// Broken kernels must fail the validation the real ones pass: the pool reduction one shuffle
/// short (only half a window), and the gather's padding test dropped (a tap left of the image
/// reads the previous row's last pixel instead of zero). Both in one build of the source (one
/// g++ run): each is checked on a case the other cannot touch ('valid' padding for the pool,
/// no pool for the padding).
#[test]
fn broken_kernels_fail_the_validation() {
    let Some(gpu) = cpu_build() else { return };
    let broken = mutant(
        "conv_broken",
        mutate(
            source::CONV.text,
            &[
                (
                    "v[i] = keel_max_nan(v[i], __shfl_xor_sync(0xffffffffu, v[i], 8));",
                    "",
                ),
                (
                    "if ((unsigned)iy >= (unsigned)h || (unsigned)ix >= (unsigned)w) return nullptr;",
                    "if ((unsigned)iy >= (unsigned)h) return nullptr;",
                ),
            ],
        ),
    );
    let case = ConvCase::new(2, [9, 9], [8, 64], [3, 3], 1, false, true, false);
    let v = check::validate_from(&gpu, broken, conv::rung("igemm_tf32").unwrap(), case, 5).unwrap();
    eprintln!("tf32 with half the pool reduction: error {:.2e}", v.error);
    assert!(!v.passed && v.error > 0.01, "{v:?}");

    let case = ConvCase::new(1, [7, 7], [17, 5], [3, 3], 1, true, false, false);
    let v = check::validate_from(&gpu, broken, conv::rung("igemm_fp32").unwrap(), case, 5).unwrap();
    eprintln!(
        "fp32 without the column padding test: error {:.2e}",
        v.error
    );
    assert!(!v.passed && v.error > 0.01, "{v:?}");
}

#[test]
fn conv_cu_compiles_for_the_real_targets() {
    // The budgets live in tests/cuda_kernels.rs; this prints conv.cu's own report.
    if !nvrtc::available() {
        common::skip("libnvrtc.so.13 is not on LD_LIBRARY_PATH; conv.cu was not compiled");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let c = nvrtc::compile(source::CONV.file, &source::CONV.device_text(), arch)
            .unwrap_or_else(|e| panic!("conv.cu for {arch}: {e}"));
        for r in &c.kernels {
            let rung = conv::rungs().iter().find(|g| g.kernel == r.name);
            let threads: u32 = rung.map_or(256, |g| g.block.iter().product());
            let smem = r.smem_bytes + rung.map_or(0, |g| g.dynamic_smem);
            eprintln!(
                "{arch} {:20} {:3} regs {:6} B smem (+dyn: {smem}) {} B stack spills {}/{}",
                r.name, r.registers, r.smem_bytes, r.stack_bytes, r.spill_stores, r.spill_loads
            );
            assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{} spills", r.name);
            assert!(r.registers * threads <= 65536, "{}", r.name);
            let limit = if arch == "sm_90" {
                227 * 1024
            } else {
                163 * 1024
            };
            assert!(smem <= limit, "{}: {smem} bytes of shared memory", r.name);
        }
    }
}
