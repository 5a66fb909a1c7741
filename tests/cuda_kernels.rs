//! The CUDA kernels without a GPU: every module compiled by NVRTC for the real targets with
//! ptxas's report held to budgets, and every kernel executed on the CPU from the same source
//! through keel's own launch code (grid, block, shared memory, argument order), compared with
//! the CPU reference. Tolerances are `Precision::tolerance` (fp32 1e-5, TF32 5e-4, BF16 1e-2
//! of max|ref|), against a reference that sees the same rounded inputs.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use keel::cuda::check::{self, QUICK_SIZES};
use keel::cuda::gemm::{self, Operands};
use keel::cuda::source::{self, ModuleSource};
use keel::cuda::{Args, Gpu, Launch, emu, nvrtc};

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

fn nvrtc_here() -> bool {
    if nvrtc::available() {
        return true;
    }
    common::skip(
        "libnvrtc.so.13 is not on LD_LIBRARY_PATH (`.ci/run` installs it); the kernels were \
         not compiled for sm_80/sm_90",
    );
    false
}

/// Per-block shared memory a GPU of `arch` allows with the opt-in attribute.
fn smem_limit(arch: &str) -> u32 {
    if arch.starts_with("sm_90") {
        227 * 1024
    } else {
        163 * 1024
    }
}

#[test]
fn every_module_compiles_for_the_real_targets_within_budgets() {
    if !nvrtc_here() {
        return;
    }
    let mut lines = Vec::new();
    for m in source::all() {
        let archs: &[&str] = if m.sm90a_only {
            &["sm_90a"]
        } else {
            &["sm_80", "sm_90"]
        };
        for arch in archs {
            let c = nvrtc::compile(m.file, &m.device_text(), arch)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", m.file));
            assert!(!c.cubin.is_empty());
            let entries = m.entry_points();
            for e in &entries {
                let r = c
                    .kernels
                    .iter()
                    .find(|r| &r.name == e)
                    .unwrap_or_else(|| panic!("no ptxas report for {e} ({arch}):\n{}", c.log));
                // Budgets: no spills anywhere; registers within the hardware's 255.
                assert_eq!(
                    (r.spill_stores, r.spill_loads),
                    (0, 0),
                    "{e} spills on {arch}:\n{}",
                    c.log
                );
                assert!(r.registers <= 255, "{e}: {} registers", r.registers);
                // A GEMM rung must fit one block on an SM: its static plus dynamic shared
                // memory within the limit (ptxas cannot see dynamic shared memory), and its
                // registers for every thread of the block within the 64K register file.
                if let Some(rung) = gemm::rungs().iter().find(|g| &g.kernel == e) {
                    let smem = r.smem_bytes + rung.dynamic_smem;
                    assert!(
                        smem <= smem_limit(arch),
                        "{e}: {smem} bytes of shared memory on {arch}"
                    );
                    let threads: u32 = rung.block.iter().product();
                    assert!(
                        r.registers * threads <= 65536,
                        "{e}: {} registers x {threads} threads",
                        r.registers
                    );
                }
                lines.push(format!(
                    "{arch:7} {e:28} {:3} regs {:6} B smem {:3} B stack",
                    r.registers, r.smem_bytes, r.stack_bytes
                ));
            }
        }
    }
    // Every rung's kernel exists in its module.
    for r in gemm::rungs() {
        let m = if r.needs_hopper() {
            &source::GEMM_SM90A
        } else {
            &source::GEMM
        };
        assert!(
            m.entry_points().contains(&r.kernel),
            "{} is not in {}",
            r.kernel,
            m.file
        );
    }
    eprintln!("ptxas report:\n{}", lines.join("\n"));
}

#[test]
fn a_source_that_does_not_compile_names_its_file_and_line() {
    let broken = "extern \"C\" __global__ void k(float* x) {\n  x[0] = undefined_thing;\n}\n";
    if nvrtc_here() {
        let e = nvrtc::compile(
            "broken.cu",
            &source::device_text("broken.cu", broken),
            "sm_90",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("broken.cu") && e.contains("(2)"), "{e}");
        assert!(e.contains("undefined_thing"), "{e}");
    }
    if emu::available() {
        let Err(e) = emu::module("broken_cpu.cu", broken) else {
            panic!("a broken source built for the CPU")
        };
        let e = e.to_string();
        assert!(e.contains("broken_cpu.cu:2"), "{e}");
    }
}

#[test]
fn every_rung_matches_the_reference_on_the_cpu() {
    let Some(gpu) = cpu_build() else { return };
    let mut report = Vec::new();
    for rung in check::runnable(&gpu) {
        for (i, &size) in QUICK_SIZES.iter().enumerate() {
            // Alternate the epilogue so every rung is checked with and without bias+ReLU.
            let v = check::validate(&gpu, rung, size, i % 2 == 1, 100 + i as u64)
                .unwrap_or_else(|e| panic!("{} at {size:?}: {e}", rung.rung));
            report.push(format!(
                "{:14} {:4} {:?} epilogue={} error {:.2e} (tolerance {:.0e})",
                v.rung, v.precision, size, v.epilogue, v.error, v.tolerance
            ));
            assert!(v.passed, "{}", report.last().unwrap());
        }
    }
    // The ladder has every precision, and the Hopper rung is not run here.
    for p in [
        gemm::Precision::Fp32,
        gemm::Precision::Tf32,
        gemm::Precision::Bf16,
    ] {
        assert!(check::runnable(&gpu).iter().any(|r| r.precision == p));
    }
    assert!(check::runnable(&gpu).iter().all(|r| !r.needs_hopper()));
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_backend_ops_match_the_cpu_reference_on_the_cpu_build() {
    let Some(gpu) = cpu_build() else { return };
    let mut ops = check::validate_backend(&gpu).unwrap();
    ops.extend(check::validate_training(&gpu).unwrap());
    assert!(ops.iter().any(|o| o.op == "conv backward: kernel"));
    for o in ops {
        eprintln!(
            "{:28} error {:.2e} (tolerance {:.0e})",
            o.op, o.error, o.tolerance
        );
        assert!(o.passed, "{o:?}");
    }
}

#[test]
fn bad_launches_are_refused_with_the_kernel_named() {
    let Some(gpu) = cpu_build() else { return };
    let f = gpu.function(&source::OPS, "relu_f32").unwrap();
    let x = gpu.upload(&[1.0f32, -2.0, f32::NAN]).unwrap();
    let y = gpu.alloc(12).unwrap();
    let args = || Args::new().mem(&x).mem(&y).value(3i64);
    let too_big = Launch {
        grid: [1, 1, 1],
        block: [1025, 1, 1],
        dynamic_smem: 0,
    };
    // SAFETY: relu_f32 takes (const float*, float*, long long); both buffers hold 3 floats.
    let e = unsafe { gpu.launch(&f, too_big, args()) }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("relu_f32") && e.contains("invalid launch"),
        "{e}"
    );
    let smem = Launch {
        dynamic_smem: 228 * 1024,
        ..Launch::linear(3, 32)
    };
    // SAFETY: as above.
    let e = unsafe { gpu.launch(&f, smem, args()) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("dynamic shared memory"), "{e}");
    // SAFETY: as above.
    unsafe { gpu.launch(&f, Launch::linear(3, 32), args()) }.unwrap();
    let got: Vec<f32> = gpu.to_vec(&y, 3).unwrap();
    assert_eq!(&got[..2], &[1.0, 0.0]);
    assert!(got[2].is_nan(), "ReLU keeps NaN");
    assert!(gpu.function(&source::OPS, "no_such_kernel").is_err());
    assert!(y.view(8, 8).is_err() && y.view(4, 8).is_ok());

    // The GEMM launcher checks buffer sizes before launching.
    let rung = gemm::rung("naive").unwrap();
    let small = gpu.alloc(4 * 6).unwrap();
    let ops = Operands {
        a: &small,
        b: &small,
        c: &small,
        bias: None,
        m: 3,
        n: 3,
        k: 3,
        relu: false,
    };
    let e = gemm::gemm(&gpu, rung, &ops).unwrap_err().to_string();
    assert!(e.contains("A holds 24 bytes, needs 36"), "{e}");
    assert!(
        gemm::rung("fastest")
            .unwrap_err()
            .to_string()
            .contains("naive")
    );
}

#[test]
fn without_a_gpu_cuda_says_so() {
    if keel::cuda::driver::driver_present() {
        common::skip("this machine has a CUDA driver; the no-GPU messages were not checked");
        return;
    }
    let e = Gpu::cuda(0).err().unwrap().to_string();
    assert!(e.contains("no CUDA device"), "{e}");
    let home = common::temp_dir("cuda-none");
    let out = common::run::keel_in(&home, &["gpu-check"]);
    common::run::assert_fails_with(&out, &["no CUDA device"]);
    let out = common::run::keel_in(&home, &["summary", "vgg16"]);
    common::run::assert_ok(&out);
    let photos = home.join("photos");
    common::run::photo_folder(&photos, 2);
    let npy = home.join("f.npy");
    let weights = common::run::weights();
    let out = common::run::keel_in(
        &home,
        &[
            "features",
            common::run::s(&photos),
            "--weights",
            common::run::s(&weights),
            "--device",
            "cuda:1",
            "-o",
            common::run::s(&npy),
        ],
    );
    common::run::assert_fails_with(&out, &["--device cuda:1", "no CUDA device"]);
    assert!(!npy.exists(), "no partial output");
}

/// A module from an edited source, for the mutation checks.
fn mutant(name: &'static str, text: String) -> &'static ModuleSource {
    Box::leak(Box::new(ModuleSource {
        name,
        file: "gemm.cu",
        text: Box::leak(text.into_boxed_str()),
        sm90a_only: false,
    }))
}

/// A whole (micro) VGG16 conv base through the CUDA backend's launch code, on the CPU build,
/// equals the CPU backend: activations stay on the "device" from the input to block5_pool.
#[test]
fn a_vgg16_base_runs_through_the_cuda_launch_code() {
    use keel::cuda::CudaBackend;
    use keel::tensor::{Backend, Device, Tensor};
    let Some(gpu) = cpu_build() else { return };
    let weights = keel::io::load_weights(&common::test_data("h5/micro_vgg16_notop.h5")).unwrap();
    let config = weights.identity().base_config([35, 33]);
    let vgg = keel::nn::Vgg::new(config, weights).unwrap();
    let mut rng = keel::rng::Rng::new(3);
    let x = Tensor::from_vec(
        [2, 35, 33, 3],
        &rng.uniform_vec(2 * 35 * 33 * 3, -100.0, 100.0),
    )
    .unwrap();
    let names = ["block1_conv2", "block3_pool", "block5_pool"];
    let cuda = CudaBackend::new(gpu);
    let got = vgg.forward_outputs(&cuda, &x, &names).unwrap();
    let want = vgg
        .forward_outputs(&keel::cpu::CpuReference, &x, &names)
        .unwrap();
    for ((name, g), w) in names.iter().zip(got).zip(want) {
        assert_eq!(g.device(), Device::Cuda(0), "{name} stays on the device");
        let g = cuda.to_host(g).unwrap();
        let wv: Vec<f64> = w.data().iter().map(|&v| v as f64).collect();
        let err = check::relative_error(g.data(), &wv);
        eprintln!("{name}: error {err:.2e}");
        assert!(err <= 1e-5, "{name}: {err}");
    }
}

/// `--precision tf32|bf16` on the (micro) VGG16 base through the CUDA launch code: the
/// tensor-core convolutions' error against the CPU's fp32, within the bounds `gpu-check`
/// holds the real base to on a GPU (and well above fp32's, or the rounding did not happen).
#[test]
fn tensor_core_precisions_round_the_base_as_documented() {
    use keel::cuda::CudaBackend;
    use keel::cuda::check_vgg::parity_tolerance;
    use keel::cuda::gemm::Precision;
    use keel::tensor::{Backend, Tensor};
    let Some(gpu) = cpu_build() else { return };
    let weights = keel::io::load_weights(&common::test_data("h5/micro_vgg16_notop.h5")).unwrap();
    let config = weights.identity().base_config([36, 34]);
    let mut rng = keel::rng::Rng::new(9);
    let x = Tensor::from_vec([1, 36, 34, 3], &rng.uniform_vec(36 * 34 * 3, -128.0, 128.0)).unwrap();
    let vgg = || keel::nn::Vgg::new(config.clone(), weights.clone()).unwrap();
    let want = vgg().forward(&keel::cpu::CpuReference, &x).unwrap();
    let wv: Vec<f64> = want.data().iter().map(|&v| v as f64).collect();
    let mut errors = Vec::new();
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let cuda = CudaBackend::new(gpu.clone()).with_precision(p);
        let got = cuda.to_host(vgg().forward(&cuda, &x).unwrap()).unwrap();
        let err = check::relative_error(got.data(), &wv);
        eprintln!(
            "micro VGG16 {}: error {err:.2e} (bound {:.0e})",
            p.name(),
            parity_tolerance(p)
        );
        assert!(err <= parity_tolerance(p), "{}: {err}", p.name());
        errors.push(err);
    }
    assert!(errors[1] > 10.0 * errors[0], "TF32 rounds: {errors:?}");
    assert!(
        errors[2] > errors[1],
        "BF16 rounds more than TF32: {errors:?}"
    );
}

/// Features computed with TF32 or BF16 convolutions are cached apart from fp32's; fp32's are
/// shared between the CPU and the GPU (they agree to rounding).
#[test]
fn reduced_precision_features_are_cached_apart() {
    use keel::cuda::CudaBackend;
    use keel::cuda::gemm::Precision;
    use keel::io::image::Interpolation;
    use keel::tensor::Backend;
    use keel::transfer::FrozenBase;
    let Some(gpu) = cpu_build() else { return };
    let key = |backend: Arc<dyn Backend>| {
        let weights =
            keel::io::load_weights(&common::test_data("h5/micro_vgg16_notop.h5")).unwrap();
        FrozenBase::new(
            weights,
            "block5_pool",
            [32, 32],
            Interpolation::Bilinear,
            backend,
        )
        .unwrap()
        .cache_key(false)
    };
    let cuda =
        |p| -> Arc<dyn Backend> { Arc::new(CudaBackend::new(gpu.clone()).with_precision(p)) };
    let cpu = key(Arc::new(keel::cpu::CpuReference));
    assert_eq!(key(cuda(Precision::Fp32)), cpu);
    let (tf32, bf16) = (key(cuda(Precision::Tf32)), key(cuda(Precision::Bf16)));
    assert!(tf32.contains("precision=tf32") && bf16.contains("precision=bf16"));
    assert!(tf32 != cpu && bf16 != cpu && tf32 != bf16);
}

/// `keel features --device cuda` end to end, on the CPU build of the kernels
/// (`KEEL_CUDA_CPU_BUILD=1`): the same .npy as the CPU backend within fp32 tolerance.
#[test]
fn features_on_the_cuda_backend_match_the_cpu() {
    if cpu_build().is_none() {
        return;
    }
    let home = common::temp_dir("cuda-features");
    let photos = home.join("photos");
    common::run::photo_folder(&photos, 2);
    let weights = common::run::weights();
    let run = |device: &str, out: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "features",
                common::run::s(&photos),
                "--weights",
                common::run::s(&weights),
                "--input",
                "36x36",
                "--device",
                device,
                "-o",
                common::run::s(out),
            ])
            .env("KEEL_HOME", &home)
            .env("KEEL_THREADS", "2")
            .env("KEEL_CUDA_CPU_BUILD", "1")
            .output()
            .unwrap();
        common::run::assert_ok(&o);
        keel::io::npy::read(out).unwrap()
    };
    let gpu = run("cuda", &home.join("gpu.npy"));
    let cpu = run("cpu", &home.join("cpu.npy"));
    assert_eq!(gpu.shape, cpu.shape);
    let want: Vec<f64> = cpu.data.iter().map(|&v| v as f64).collect();
    let err = check::relative_error(&gpu.data, &want);
    assert!(err <= 1e-5, "features differ by {err}");
}

/// `text` with every `(from, to)` replacement applied, each of which must match: a mutation
/// that silently stops applying (the source changed) must fail the test, not pass it.
fn mutate(text: &str, edits: &[(&str, &str)]) -> String {
    let mut s = text.to_string();
    for (from, to) in edits {
        assert!(s.contains(from), "mutation no longer applies: {from}");
        s = s.replacen(from, to, 1);
    }
    s
}

/// Broken kernels must fail the same validation the real ones pass: two tensor-core fragment
/// registers swapped (a wrong answer), and a `cp.async` wait one group short (the tile is
/// read before it lands: the CPU build defers copies to their wait, so it still holds NaN).
#[test]
fn broken_kernels_fail_the_validation() {
    let Some(gpu) = cpu_build() else { return };
    // The fragment loads live in the prelude's warp-tile step, which the TF32 GEMM and
    // convolution share: the mutant carries a broken copy of it and calls that instead.
    let start = source::PRELUDE
        .find("template <int BK, int APITCH, int BPITCH, int NT>\n__device__ __forceinline__ void keel_tf32_warp_tile")
        .expect("the TF32 warp-tile step is in the prelude");
    let end = start + source::PRELUDE[start..].find("\n}\n").unwrap() + 3;
    let broken_step = mutate(
        &source::PRELUDE[start..end],
        &[
            ("keel_tf32_warp_tile(", "keel_tf32_warp_tile_broken("),
            (
                "a[mt][1] = keel_f32_to_tf32(p[8 * APITCH]);",
                "a[mt][1] = keel_f32_to_tf32(p[4]);",
            ),
            (
                "a[mt][2] = keel_f32_to_tf32(p[4]);",
                "a[mt][2] = keel_f32_to_tf32(p[8 * APITCH]);",
            ),
        ],
    );
    let calls_it = mutate(
        source::GEMM.text,
        &[("keel_tf32_warp_tile<", "keel_tf32_warp_tile_broken<")],
    );
    let swap = mutant("gemm_swapped_fragment", broken_step + &calls_it);
    let v = check::validate_from(
        &gpu,
        swap,
        gemm::rung("tf32").unwrap(),
        [63, 47, 130],
        false,
        5,
    )
    .unwrap();
    eprintln!("tf32 with swapped fragments: error {:.2e}", v.error);
    assert!(!v.passed && v.error > 0.1, "{v:?}");

    let early = mutant(
        "gemm_early_read",
        mutate(
            source::GEMM.text,
            &[(
                "keel_cp_async_wait<STAGES - 2>();  // this thread",
                "keel_cp_async_wait<STAGES - 1>();  // this thread",
            )],
        ),
    );
    let v = check::validate_from(
        &gpu,
        early,
        gemm::rung("async").unwrap(),
        [63, 47, 130],
        false,
        5,
    )
    .unwrap();
    eprintln!(
        "async reading a tile before its copy landed: error {:.2e}",
        v.error
    );
    assert!(!v.passed, "{v:?}");
}

/// ThreadSanitizer over the CPU build (a standalone driver, `kernels/emu/driver.cpp`, since
/// TSan's runtime must start with the process): the shared-memory rung reports no race, and
/// reports one once the `__syncthreads()` after its tile stores is removed.
#[test]
fn thread_sanitizer_catches_a_removed_syncthreads() {
    if !emu::available() {
        common::skip("no C++ compiler; the ThreadSanitizer check did not run");
        return;
    }
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let dir = common::temp_dir("tsan");
    let unsynced: String = source::GEMM
        .text
        .lines()
        .filter(|l| !l.contains("sync:smem-tiles-written"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        unsynced.len() < source::GEMM.text.len(),
        "the barrier was not found"
    );
    let variants = [
        ("gemm_synced.cu", source::GEMM.text.to_string()),
        ("gemm_unsynced.cu", unsynced),
    ];
    let mut stderrs = Vec::new();
    for (name, text) in variants {
        let src = dir.join(name);
        std::fs::write(&src, text).unwrap();
        let exe = dir.join(name.replace(".cu", ""));
        let cc = std::process::Command::new("g++")
            .args([
                "-std=c++20",
                "-O1",
                "-g",
                "-pthread",
                "-w",
                "-fsanitize=thread",
                "-I",
            ])
            .arg(&kernels)
            .arg(format!("-DKEEL_GEMM_CU=\"{}\"", src.display()))
            .arg(kernels.join("emu/driver.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap();
        if !cc.status.success() {
            let err = String::from_utf8_lossy(&cc.stderr);
            if err.contains("tsan") {
                common::skip(format!("ThreadSanitizer's runtime is not installed: {err}"));
                return;
            }
            panic!("building {name} with ThreadSanitizer: {err}");
        }
        let run = std::process::Command::new(&exe)
            .args(["smem", "40", "40", "40", "--bias"])
            .output()
            .unwrap();
        stderrs.push((
            run.status.success(),
            String::from_utf8_lossy(&run.stderr).into_owned(),
        ));
    }
    let (clean_ok, clean) = &stderrs[0];
    assert!(
        *clean_ok && !clean.contains("ThreadSanitizer"),
        "unmutated rung: {clean}"
    );
    let (_, racy) = &stderrs[1];
    assert!(
        racy.contains("ThreadSanitizer: data race"),
        "no race reported: {racy}"
    );
    assert!(racy.contains("gemm_smem"), "{racy}");
}

/// The Hopper rung's padding (TMA needs 16-byte row pitches): the matrix is kept, the new rows
/// and columns are zero.
#[test]
fn padding_for_tma_keeps_the_matrix_and_zero_fills() {
    let Some(gpu) = cpu_build() else { return };
    let (rows, cols) = (3, 5);
    let src: Vec<u16> = (1..=(rows * cols) as u16).collect();
    let m = gpu.upload(&src).unwrap();
    let p = gemm::pad_u16(&gpu, &m, [rows, cols], [4, 8]).unwrap();
    let got: Vec<u16> = gpu.to_vec(&p, 32).unwrap();
    for r in 0..4 {
        for c in 0..8 {
            let want = if r < rows && c < cols {
                src[r * cols + c]
            } else {
                0
            };
            assert_eq!(got[r * 8 + c], want, "({r}, {c})");
        }
    }
    assert!(gemm::pad_u16(&gpu, &m, [rows, cols], [2, 8]).is_err());
}

/// `keel train --device cuda` end to end on the CPU build of the kernels: a head and a
/// fine-tuned block5 trained through the CUDA backend's launch code, every op on the "device",
/// give the CPU's training history and validation numbers.
#[test]
fn training_on_the_cuda_backend_matches_the_cpu() {
    if cpu_build().is_none() {
        return;
    }
    let home = common::temp_dir("cuda-train");
    let photos = home.join("photos");
    common::run::photo_folder(&photos, 3);
    let weights = common::run::weights();
    let train = |device: &str| {
        let out_dir = home.join(format!("model-{device}"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "train",
                common::run::s(&photos),
                "--weights",
                common::run::s(&weights),
            ])
            .args(["--input", "40x40", "--epochs", "3", "--batch-size", "2"])
            .args(["--head", "gap,dense8,relu,dropout0.25", "--seed", "5"])
            .args(["--fine-tune", "block5", "--fine-tune-epochs", "2"])
            .args(["--fine-tune-lr", "1e-3", "--validation-split", "0.34"])
            .args(["--device", device, "-o", common::run::s(&out_dir)])
            .env("KEEL_HOME", &home)
            .env("KEEL_CUDA_CPU_BUILD", "1")
            .output()
            .unwrap();
        common::run::assert_ok(&o);
        let json = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(out_dir.join(f)).unwrap()).unwrap()
        };
        let mut report = json("report.json");
        report["history"] = json("model.json")["history"].clone();
        (report, common::run::stderr(&o))
    };
    let (gpu, gpu_log) = train("cuda");
    let (cpu, _) = train("cpu");
    assert!(
        gpu_log.contains("fine-tuning from block5_conv1"),
        "{gpu_log}"
    );
    // The two backends sum in different orders; over five epochs the loss may drift by a
    // few f32 roundings, no more.
    let history = |r: &serde_json::Value| r["history"].as_array().unwrap().clone();
    let (g, c) = (history(&gpu), history(&cpu));
    assert_eq!(g.len(), c.len(), "same number of epochs");
    assert_eq!(g.len(), 5);
    for (eg, ec) in g.iter().zip(&c) {
        for key in ["train_loss", "val_loss"] {
            let (a, b) = (eg[key].as_f64().unwrap(), ec[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "epoch {}: {key} {a} on the CUDA backend, {b} on the CPU",
                eg["epoch"]
            );
        }
    }
    assert_eq!(
        gpu["validation"]["accuracy"], cpu["validation"]["accuracy"],
        "validation accuracy"
    );
}

/// `keel gpu-check --quick --no-timing` on the CPU build: the command a GPU machine runs,
/// its table and JSON, without the timing half (which needs a GPU).
#[test]
fn gpu_check_validates_every_rung_on_the_cpu_build() {
    if cpu_build().is_none() {
        return;
    }
    let home = common::temp_dir("cuda-gpu-check");
    let json = home.join("check.json");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env("KEEL_HOME", &home)
            .env("KEEL_CUDA_CPU_BUILD", "1")
            .output()
            .unwrap()
    };
    let o = run(&[
        "gpu-check",
        "--quick",
        "--no-timing",
        "--json",
        common::run::s(&json),
    ]);
    common::run::assert_ok(&o);
    let text = common::run::stdout(&o);
    assert!(
        text.contains("all ") && text.contains("validations passed"),
        "{text}"
    );
    assert!(
        text.contains("bf16") && text.contains("conv 3x3 same relu"),
        "{text}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["validation"].as_array().unwrap();
    let rungs = check::runnable(&cpu_build().unwrap()).len();
    assert_eq!(rows.len(), rungs * QUICK_SIZES.len());
    assert!(rows.iter().all(|r| r["passed"] == true));
    // Every convolution rung, on the cases it takes.
    let convs = doc["conv"].as_array().unwrap();
    for r in keel::cuda::conv::rungs() {
        let mine = convs
            .iter()
            .filter(|v| v["rung"] == r.rung.as_str())
            .count();
        assert!(mine >= 6, "conv rung {} validated on {mine} cases", r.rung);
    }
    assert!(convs.iter().all(|r| r["passed"] == true));
    // Timing needs a GPU: the CPU build refuses it rather than print meaningless numbers.
    let o = run(&["gpu-check", "--quick"]);
    common::run::assert_fails_with(&o, &["runs only --quick --no-timing"]);
}
