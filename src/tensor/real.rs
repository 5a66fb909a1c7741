//! The element types kernels compute in: f32, and f64 for the checks.
//!
//! Training and inference run in f32. The reference kernels are written once over [`Real`], so
//! the gradient checks run the very same code in f64, where central finite differences are
//! accurate enough to catch a wrong backward pass rather than rounding.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use super::DType;

/// f32 or f64.
pub trait Real:
    bytemuck::Pod
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    /// The tensor element type this is.
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
}

macro_rules! impl_real {
    ($t:ty, $d:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: DType = $d;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

impl_real!(f32, DType::F32);
impl_real!(f64, DType::F64);

/// `max(v, 0)` that keeps NaN: `f32::max` would turn NaN into 0 and hide a broken input.
#[inline(always)]
pub fn relu<T: Real>(v: T) -> T {
    if v < T::ZERO { T::ZERO } else { v }
}

/// The larger of two values, except that NaN wins: a NaN in the input must reach the output
/// (`f32::max` would silently drop it). Every max in keel (pools, their backward, argmax)
/// goes through this one function, so forward and backward agree on the winner.
#[inline(always)]
pub fn max_nan<T: Real>(a: T, b: T) -> T {
    if beats(b, a) { b } else { a }
}

/// Whether `v` takes over from `best` as a running maximum: it is larger, or it is the first
/// NaN. Backward passes use it to find the element [`max_nan`] picked.
#[inline(always)]
pub fn beats<T: Real>(v: T, best: T) -> bool {
    !best.is_nan() && (v > best || v.is_nan())
}
