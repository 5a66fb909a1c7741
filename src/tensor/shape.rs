//! Tensor shapes and the checks that turn a mismatch into a readable error.

use crate::error::{Error, Result};

/// A row-major (C-order) shape. The last dimension is contiguous.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements; `None` when it does not fit in `usize` (a corrupt file can declare
    /// such a shape, and we must refuse it rather than wrap around).
    pub fn checked_numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Number of elements. Shapes built by keel always fit, so this saturates rather than fails.
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// The dimensions as a fixed-size array, or an error naming `what` when the rank differs.
    pub fn dims_n<const N: usize>(&self, what: &str) -> Result<[usize; N]> {
        <[usize; N]>::try_from(self.0.as_slice())
            .map_err(|_| Error::Shape(format!("{what} must have rank {N}, got shape {self}")))
    }

    /// Shape `(n, h, w, c)` of an NHWC activation.
    pub fn nhwc(&self, what: &str) -> Result<[usize; 4]> {
        self.dims_n::<4>(what)
    }
}

impl std::fmt::Display for Shape {
    /// Printed like a Python tuple, `(1, 224, 224, 3)`, as Keras and numpy print shapes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() == 1 {
            f.write_str(",")?;
        }
        f.write_str(")")
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_python_tuple() {
        assert_eq!(Shape::new([1, 7, 7, 512]).to_string(), "(1, 7, 7, 512)");
        assert_eq!(Shape::new([4]).to_string(), "(4,)");
        assert_eq!(Shape::new(Vec::new()).to_string(), "()");
    }

    #[test]
    fn numel_overflow_is_detected() {
        assert_eq!(Shape::new([3, 5, 7]).checked_numel(), Some(105));
        assert_eq!(Shape::new([usize::MAX, 2]).checked_numel(), None);
        assert_eq!(Shape::new(Vec::new()).checked_numel(), Some(1));
    }

    #[test]
    fn rank_errors_name_the_operand() {
        let err = Shape::new([2, 3]).nhwc("conv2d input").unwrap_err();
        assert!(
            err.to_string().contains("conv2d input must have rank 4"),
            "{err}"
        );
    }
}
