//! Streaming (non-temporal) stores for outputs too large to stay in the caches.
//!
//! A plain store first reads its line into the cache (read for ownership), so writing a 118 MB
//! activation (block1_conv1 at batch 8) moves 236 MB through memory, and evicts everything
//! else on its way. Nothing reads the output until the next layer, which starts at its
//! beginning, long evicted by then: a streaming store writes the line straight to memory,
//! with no read and no eviction. Outputs that fit in the last-level cache are stored plainly,
//! as the next layer reads them from there.

use super::machine;

/// Whether a kernel writing `bytes` of output should stream it: more than this CPU's
/// last-level cache instance holds.
pub fn worth_streaming(bytes: usize) -> bool {
    bytes > machine::get().l3.size
}

/// `dst[..16] = v`, streamed past the caches when `stream` and `dst` starts a cache line
/// (where the four 16-byte stores fill one line of the write-combining buffer), else plain.
#[inline(always)]
pub fn store16(dst: &mut [f32], v: &[f32; 16], stream: bool) {
    let dst = &mut dst[..16];
    #[cfg(target_arch = "x86_64")]
    if stream && (dst.as_ptr() as usize).is_multiple_of(64) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        for q in 0..4 {
            // SAFETY: SSE is part of x86-64; `dst` holds 16 floats starting 64-byte aligned,
            // so each of the four 16-byte stores is aligned and inside it, and `v` holds 16.
            unsafe {
                _mm_stream_ps(
                    dst.as_mut_ptr().add(4 * q),
                    _mm_loadu_ps(v.as_ptr().add(4 * q)),
                )
            };
        }
        return;
    }
    let _ = stream;
    dst.copy_from_slice(v);
}

/// Orders this thread's streaming stores before whatever it does next (they are weakly
/// ordered): called at the end of a task that streamed, before another thread may read.
#[inline(always)]
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a fence has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streamed or not, aligned or not, the values land exactly, and nothing past the 16.
    #[test]
    fn store16_writes_the_sixteen_values() {
        let v: [f32; 16] = std::array::from_fn(|i| i as f32 * 1.5 - 7.0);
        let mut buf = crate::tensor::AlignedVec::zeros(64);
        for offset in [0, 1, 16, 17] {
            for stream in [false, true] {
                let b = buf.as_mut_slice();
                b.fill(f32::NAN);
                store16(&mut b[offset..], &v, stream);
                fence();
                assert_eq!(
                    &b[offset..offset + 16],
                    &v,
                    "offset {offset}, stream {stream}"
                );
                assert!(
                    b[..offset]
                        .iter()
                        .chain(&b[offset + 16..])
                        .all(|x| x.is_nan())
                );
            }
        }
    }
}
