//! Prefetch hints: ask for a cache line before the code that reads it gets there.
//!
//! A hint never faults and never changes a result, whatever the address, so callers may
//! point past the end of their data (the "next" tile after the last one). Where the
//! architecture has no stable prefetch intrinsic in Rust, they do nothing.

/// Ask for the line holding `p` into L1 (and the levels below it).
#[inline(always)]
pub fn l1(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask for the line holding `p` into L2, not L1: for data needed after what L1 holds now.
#[inline(always)]
pub fn l2(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask for the line holding `p` into L1 for writing (exclusive, so the store that follows
/// does not wait for ownership).
#[inline(always)]
pub fn l1_for_write(p: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_ET0>(p.cast_const().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hints on valid data, and past any allocation, change nothing and do not fault.
    #[test]
    fn hints_never_fault_or_write() {
        let v: Vec<f32> = (0..64).map(|i| i as f32).collect();
        for i in [0, 17, 63] {
            l1(&v[i]);
            l2(&v[i]);
        }
        l1_for_write(v.as_ptr().cast_mut().wrapping_add(5));
        let far = v.as_ptr().wrapping_add(1 << 40);
        l1(far);
        l2(far);
        l1_for_write(far.cast_mut());
        l1(std::ptr::null());
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
    }
}
