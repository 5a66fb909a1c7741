//! The f32 tensor every op consumes and produces.

use super::{AlignedVec, Device, Shape};
use crate::error::{Error, Result};

/// A dense, row-major f32 tensor on a device.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    data: AlignedVec,
}

impl Tensor {
    /// A tensor of zeros; refuses shapes whose element count overflows.
    pub fn zeros(shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let n = shape
            .checked_numel()
            .ok_or_else(|| Error::Shape(format!("shape {shape} has too many elements")))?;
        Ok(Tensor {
            shape,
            data: AlignedVec::zeros(n),
        })
    }

    /// A tensor holding `values`, which must have exactly as many elements as `shape`.
    pub fn from_vec(shape: impl Into<Shape>, values: &[f32]) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(values.len()) {
            return Err(Error::Shape(format!(
                "{} values do not fill shape {shape}",
                values.len()
            )));
        }
        Ok(Tensor {
            shape,
            data: AlignedVec::from_slice(values),
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn device(&self) -> Device {
        Device::Cpu
    }

    pub fn data(&self) -> &[f32] {
        self.data.as_slice()
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data.as_mut_slice()
    }

    /// The same data under another shape with the same number of elements (free: row-major
    /// data does not move).
    pub fn reshape(mut self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(self.numel()) {
            return Err(Error::Shape(format!(
                "cannot reshape {} into {shape}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Item `i` of the leading (batch) dimension, as a tensor of rank one less.
    pub fn index0(&self, i: usize) -> Result<Tensor> {
        let dims = self.dims();
        if dims.is_empty() || i >= dims[0] {
            return Err(Error::Shape(format!(
                "index {i} out of range for shape {}",
                self.shape
            )));
        }
        let inner = Shape::new(&dims[1..]);
        let n = inner.numel();
        Tensor::from_vec(inner, &self.data()[i * n..(i + 1) * n])
    }

    /// Stack equally shaped tensors along a new leading dimension.
    pub fn stack(items: &[Tensor]) -> Result<Tensor> {
        let first = items
            .first()
            .ok_or_else(|| Error::Shape("cannot stack zero tensors".into()))?;
        let mut dims = vec![items.len()];
        dims.extend_from_slice(first.dims());
        let mut out = Tensor::zeros(dims)?;
        let n = first.numel();
        for (i, t) in items.iter().enumerate() {
            if t.shape != first.shape {
                return Err(Error::Shape(format!(
                    "cannot stack {} with {}",
                    t.shape, first.shape
                )));
            }
            out.data_mut()[i * n..(i + 1) * n].copy_from_slice(t.data());
        }
        Ok(out)
    }

    /// Largest absolute value, NaN if any element is NaN (so comparisons built on it fail).
    pub fn max_abs(&self) -> f32 {
        self.data().iter().fold(0.0f32, |m, &v| {
            if v.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(v.abs())
            }
        })
    }

    /// Index of the first NaN or infinite element, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        self.data().iter().position(|v| !v.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_the_element_count() {
        assert!(Tensor::from_vec([2, 3], &[1.0; 6]).is_ok());
        let err = Tensor::from_vec([2, 3], &[1.0; 5]).unwrap_err();
        assert!(
            err.to_string()
                .contains("5 values do not fill shape (2, 3)"),
            "{err}"
        );
    }

    #[test]
    fn reshape_keeps_data_and_checks_size() {
        let t = Tensor::from_vec([2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let r = t.clone().reshape([3, 2]).unwrap();
        assert_eq!(r.data(), t.data());
        assert!(t.reshape([4, 2]).is_err());
    }

    #[test]
    fn stack_and_index_are_inverse() {
        let a = Tensor::from_vec([1, 3], &[1., 2., 3.]).unwrap();
        let b = Tensor::from_vec([1, 3], &[4., 5., 6.]).unwrap();
        let s = Tensor::stack(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(s.dims(), &[2, 1, 3]);
        assert_eq!(s.index0(1).unwrap().data(), b.data());
        assert!(s.index0(2).is_err());
        assert!(Tensor::stack(&[]).is_err());
    }

    #[test]
    fn max_abs_propagates_nan() {
        let t = Tensor::from_vec([3], &[1.0, -7.0, 2.0]).unwrap();
        assert_eq!(t.max_abs(), 7.0);
        let n = Tensor::from_vec([3], &[1.0, f32::NAN, 2.0]).unwrap();
        assert!(n.max_abs().is_nan());
        assert_eq!(n.first_non_finite(), Some(1));
        assert!(Tensor::zeros([usize::MAX, 4]).is_err());
    }
}
