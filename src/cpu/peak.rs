//! This machine's FMA peak, measured rather than looked up: a loop of independent fused
//! multiply-adds with no memory traffic, on every thread of the rayon pool at once. The
//! benchmarks quote GFLOP/s as a percentage of it.

use std::time::Instant;

use crate::cpu::isa::Isa;

/// Independent accumulator chains: more than FMA latency times FMA ports (4 x 2 on Zen 5), so
/// the loop is bound by throughput.
const CHAINS: usize = 12;

/// GFLOP/s of `isa` FMAs on all threads of the current rayon pool, over about `seconds`.
pub fn fma_peak_gflops(isa: Isa, seconds: f64) -> f64 {
    gflops(seconds, CHAINS * lanes(isa) * 2, |iters| {
        fma_loop(isa, iters)
    })
}

/// GFLOP/s of `run(iters)`, which does `flops_per_iter` per iteration, on every thread of the
/// current rayon pool at once for about `seconds`: the iteration count is calibrated on one
/// short run first.
fn gflops(seconds: f64, flops_per_iter: usize, run: impl Fn(usize) -> f32 + Sync) -> f64 {
    let probe = 1 << 16;
    let t = Instant::now();
    std::hint::black_box(run(probe));
    let per_iter = t.elapsed().as_secs_f64() / probe as f64;
    let iters = ((seconds / per_iter.max(1e-12)) as usize).clamp(probe, 1 << 30);
    let t = Instant::now();
    rayon::broadcast(|_| std::hint::black_box(run(iters)));
    let secs = t.elapsed().as_secs_f64();
    let flops = rayon::current_num_threads() as f64 * iters as f64 * flops_per_iter as f64;
    flops / secs / 1e9
}

/// GFLOP/s of AVX512-BF16's `vdpbf16ps` (16 lanes, each two bf16 products summed into f32: 64
/// flops) on all threads of the current rayon pool, or `None` where keel's bf16 GEMM cannot
/// run it (no AVX512-BF16, or `KEEL_ISA` below avx512). Its ratio to the f32 FMA peak decides
/// whether `--precision bf16` buys speed or only memory where AMX is absent: a Zen 4 runs it at
/// twice the f32 FMA's flops, an Emerald Rapids whose AMX the hypervisor hides at half.
pub fn bf16_dot_peak_gflops(seconds: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::gemm::bf16::available() {
        return Some(gflops(seconds, CHAINS * 64, |iters| {
            // SAFETY: AVX-512F and AVX512-BF16 are available (bf16::available checks both).
            unsafe { x86::dpbf16(iters) }
        }));
    }
    let _ = seconds;
    None
}

/// `vdpbf16ps`'s flops over the AVX-512 f32 FMA's, each measured for `seconds` on the current
/// pool, where `--precision bf16` runs on the AVX512-BF16 rung; `None` where it runs on AMX
/// (whose tiles are many times f32's rate) or cannot run at all.
pub fn bf16_dot_over_f32(seconds: f64) -> Option<f64> {
    if crate::cpu::gemm::bf16_kernel() != crate::cpu::gemm::Kernel::Avx512Bf16 {
        return None;
    }
    let bf16 = bf16_dot_peak_gflops(seconds)?;
    Some(bf16 / fma_peak_gflops(Isa::Avx512, seconds))
}

fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Portable | Isa::Neon => 4,
        Isa::Avx2 => 8,
        Isa::Avx512 => 16,
    }
}

/// `iters` rounds of `CHAINS` FMAs of `isa`'s vector width; returns a value depending on all.
fn fma_loop(isa: Isa, iters: usize) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.available() => {
            // SAFETY: AVX-512F is available (checked in the guard).
            unsafe { x86::fma512(iters) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => {
            // SAFETY: AVX2 and FMA are available (checked in the guard).
            unsafe { x86::fma256(iters) }
        }
        _ => {
            let mut acc = [[1f32; 4]; CHAINS];
            let (m, a) = (
                std::hint::black_box(0.999_f32),
                std::hint::black_box(1e-3_f32),
            );
            for _ in 0..iters {
                for c in acc.iter_mut() {
                    for v in c.iter_mut() {
                        *v = *v * m + a;
                    }
                }
            }
            acc.iter().flatten().sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f32 {
        let m = _mm512_set1_ps(std::hint::black_box(0.999));
        let a = _mm512_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// `iters` rounds of `CHAINS` independent `vdpbf16ps` on fixed operands; returns their sum.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: usize) -> f32 {
        // Pairs of bf16 1.0 and 2^-10: each step adds 2^-9 per lane, so the sums stay normal
        // and finite however long the loop runs (no slow paths, nothing all-zero).
        let one = std::hint::black_box(_mm512_set1_epi32(0x3f80_3f80));
        let small = std::hint::black_box(_mm512_set1_epi32(0x3a80_3a80));
        // SAFETY: both are 64 bytes of plain bits; every pattern is a valid value of either.
        let (a, b) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(one),
                std::mem::transmute::<__m512i, __m512bh>(small),
            )
        };
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f32 {
        let m = _mm256_set1_ps(std::hint::black_box(0.999));
        let a = _mm256_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_loop_runs_and_reports_a_positive_rate() {
        for isa in Isa::all_available() {
            let r = fma_loop(isa, 1000);
            assert!(r.is_finite() && r > 0.0, "{isa}: {r}");
            let g = fma_peak_gflops(isa, 0.01);
            assert!(g.is_finite() && g > 0.0, "{isa}: {g} GFLOP/s");
        }
    }

    #[test]
    fn the_bf16_loop_runs_where_the_instruction_exists() {
        match bf16_dot_peak_gflops(0.01) {
            Some(g) => assert!(g.is_finite() && g > 0.0, "{g} GFLOP/s"),
            None => eprintln!("SKIPPED bf16 peak: this CPU has no AVX512-BF16"),
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::gemm::bf16::available() {
            // 1 + iters * 2^-9 per lane, 16 lanes, CHAINS chains: exact in f32 here.
            // SAFETY: AVX-512F and AVX512-BF16 are available (bf16::available checked them).
            let s = unsafe { x86::dpbf16(512) };
            assert_eq!(s, (CHAINS * 16) as f32 * 2.0);
        }
    }
}
