//! The aarch64 micro-kernel: NEON (always present on aarch64), a 6 x 16 tile.
//!
//! 24 accumulators of 4 lanes, 4 B vectors and a broadcast A value: 29 of NEON's 32 registers.
//! Tested under qemu (`docs/cpu-kernels.md`); not yet timed on an ARM machine.

use std::arch::aarch64::*;

use super::micro::Micro;
use crate::cpu::isa::Isa;

pub struct Neon;

impl Micro for Neon {
    const MR: usize = 6;
    const NR: usize = 16;
    const ISA: Isa = Isa::Neon;

    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
        relu: bool,
    ) {
        // SAFETY: NEON is part of aarch64; the caller guarantees the sizes (see `Micro::tile`).
        unsafe { tile_neon(kc, a, lda, b, c, ldc, accumulate, bias, relu) }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn tile_neon(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    relu: bool,
) {
    const MR: usize = 6;
    // SAFETY (whole function): every pointer offset stays inside the operands the caller
    // vouched for: A's MR rows of kc values (packed: `p * MR + r`; in place: `r * lda + p`),
    // B's kc rows of 16, C's MR rows of 16 at stride ldc, and 16 bias values.
    unsafe {
        // With `accumulate`, the sum continues from C's values: one FMA chain per element in
        // k order, so how K is cut into blocks never changes a bit of the result.
        let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (q, v) in acc.iter_mut().enumerate() {
                    *v = vld1q_f32(c.add(r * ldc + 4 * q));
                }
            }
        }
        for p in 0..kc {
            let bp = b.add(p * 16);
            let bv = [
                vld1q_f32(bp),
                vld1q_f32(bp.add(4)),
                vld1q_f32(bp.add(8)),
                vld1q_f32(bp.add(12)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = vdupq_n_f32(if lda == 0 {
                    *a.add(p * MR + r)
                } else {
                    *a.add(r * lda + p)
                });
                for (x, &bq) in acc.iter_mut().zip(&bv) {
                    *x = vfmaq_f32(*x, bq, av);
                }
            }
        }
        let zero = vdupq_n_f32(0.0);
        for (r, acc) in acc.iter().enumerate() {
            for (q, &v) in acc.iter().enumerate() {
                let dst = c.add(r * ldc + 4 * q);
                let mut v = v;
                if !bias.is_null() {
                    v = vaddq_f32(v, vld1q_f32(bias.add(4 * q)));
                }
                if relu {
                    // Exactly the reference's `if v < 0 { 0 } else { v }`: NaN and -0.0 stay.
                    v = vbslq_f32(vcltq_f32(v, zero), zero, v);
                }
                vst1q_f32(dst, v);
            }
        }
    }
}
