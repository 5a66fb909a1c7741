//! The tensor every op consumes and produces: a shape over storage in host memory (f32, or f64
//! for the checks) or on a device.

use super::{AlignedVec, DType, Device, DeviceBuffer, Real, Shape};
use crate::error::{Error, Result};

/// Where the elements are.
#[derive(Clone, Debug)]
enum Storage {
    /// f32 in host memory, 64-byte aligned: what the SIMD kernels read.
    F32(AlignedVec),
    /// f64 in host memory, for the reference kernels' gradient checks.
    F64(Vec<f64>),
    /// A device backend's buffer.
    Device(DeviceBuffer),
}

/// A dense, row-major tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
}

fn numel_of(shape: &Shape) -> Result<usize> {
    shape
        .checked_numel()
        .ok_or_else(|| Error::Shape(format!("shape {shape} has too many elements")))
}

impl Tensor {
    /// An f32 tensor of zeros in host memory; refuses shapes whose element count overflows.
    pub fn zeros(shape: impl Into<Shape>) -> Result<Self> {
        Tensor::zeros_of(shape, DType::F32)
    }

    /// An f32 host tensor whose values are unspecified (zeros, or those of a freed tensor
    /// whose buffer is reused), for a kernel that writes every element: the output of a
    /// convolution or a pool. It saves the pass that clears a large buffer.
    pub fn for_overwrite(shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape)?;
        Ok(Tensor {
            shape,
            storage: Storage::F32(AlignedVec::for_overwrite(n)),
        })
    }

    /// A host tensor of zeros of `dtype` (f32 or f64).
    pub fn zeros_of(shape: impl Into<Shape>, dtype: DType) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape)?;
        let storage = match dtype {
            DType::F32 => Storage::F32(AlignedVec::zeros(n)),
            DType::F64 => Storage::F64(vec![0.0; n]),
            other => {
                return Err(Error::Invalid(format!(
                    "tensors compute in f32 or f64, not {other} (that is a file format)"
                )));
            }
        };
        Ok(Tensor { shape, storage })
    }

    /// An f32 host tensor holding `values`, which must have exactly as many elements as `shape`.
    pub fn from_vec(shape: impl Into<Shape>, values: &[f32]) -> Result<Self> {
        Tensor::from_values(shape, values)
    }

    /// A host tensor of `T`'s dtype holding `values`.
    pub fn from_values<T: Real>(shape: impl Into<Shape>, values: &[T]) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(values.len()) {
            return Err(Error::Shape(format!(
                "{} values do not fill shape {shape}",
                values.len()
            )));
        }
        let mut t = Tensor::zeros_of(shape, T::DTYPE)?;
        t.values_mut::<T>()?.copy_from_slice(values);
        Ok(t)
    }

    /// A tensor over a device backend's buffer, which must hold as many elements as `shape`.
    pub fn from_device(shape: impl Into<Shape>, buffer: DeviceBuffer) -> Result<Self> {
        let shape = shape.into();
        if shape.checked_numel() != Some(buffer.len()) {
            return Err(Error::Shape(format!(
                "a device buffer of {} elements does not fill shape {shape}",
                buffer.len()
            )));
        }
        Ok(Tensor {
            shape,
            storage: Storage::Device(buffer),
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::Device(b) => b.len(),
        }
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::Device(b) => b.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Device(b) => b.device(),
            _ => Device::Cpu,
        }
    }

    /// The device buffer, for the backend that owns it; None in host memory.
    pub fn device_buffer(&self) -> Option<&DeviceBuffer> {
        match &self.storage {
            Storage::Device(b) => Some(b),
            _ => None,
        }
    }

    /// The elements as `T`, if they are host memory of `T`'s dtype.
    pub fn values<T: Real>(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::F32(v) if T::DTYPE == DType::F32 => Ok(bytemuck::cast_slice(v.as_slice())),
            Storage::F64(v) if T::DTYPE == DType::F64 => Ok(bytemuck::cast_slice(v)),
            _ => Err(self.not_host_of(T::DTYPE)),
        }
    }

    /// The elements as `T`, mutable, if they are host memory of `T`'s dtype.
    pub fn values_mut<T: Real>(&mut self) -> Result<&mut [T]> {
        let err = self.not_host_of(T::DTYPE);
        match &mut self.storage {
            Storage::F32(v) if T::DTYPE == DType::F32 => {
                Ok(bytemuck::cast_slice_mut(v.as_mut_slice()))
            }
            Storage::F64(v) if T::DTYPE == DType::F64 => Ok(bytemuck::cast_slice_mut(v)),
            _ => Err(err),
        }
    }

    fn not_host_of(&self, want: DType) -> Error {
        Error::Invalid(format!(
            "a {} tensor on {} was given where {want} values in host memory are needed \
             (a backend's to_host or cast makes them)",
            self.dtype(),
            self.device()
        ))
    }

    /// The f32 values of a host tensor: what the CPU kernels and the file writers read.
    ///
    /// # Panics
    /// On an f64 or device tensor. Every backend entry point checks its operands first
    /// ([`Tensor::values`] is the checked form), so this is a bug in keel, never bad input.
    pub fn data(&self) -> &[f32] {
        match self.values() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// The f32 values of a host tensor, mutable. Panics as [`Tensor::data`] does.
    pub fn data_mut(&mut self) -> &mut [f32] {
        match self.values_mut() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// The same values in host memory as another dtype (f32 or f64; rounding to nearest).
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        let mut out = Tensor::zeros_of(self.shape.clone(), dtype)?;
        match (&self.storage, &mut out.storage) {
            (Storage::F32(a), Storage::F32(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
            (Storage::F64(a), Storage::F64(b)) => b.copy_from_slice(a),
            (Storage::F32(a), Storage::F64(b)) => {
                for (o, &v) in b.iter_mut().zip(a.as_slice()) {
                    *o = f64::from(v);
                }
            }
            (Storage::F64(a), Storage::F32(b)) => {
                for (o, &v) in b.as_mut_slice().iter_mut().zip(a) {
                    *o = v as f32;
                }
            }
            _ => return Err(self.not_host_of(dtype)),
        }
        Ok(out)
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
        self.rows(i, 1)
            .and_then(|t| t.reshape(Shape::new(&self.dims()[1..])))
    }

    /// Items `start..start + count` of the leading (batch) dimension, copied.
    pub fn rows(&self, start: usize, count: usize) -> Result<Tensor> {
        let dims = self.dims();
        if dims.is_empty() || start + count > dims[0] {
            return Err(Error::Shape(format!(
                "rows {start}..{} out of range for shape {}",
                start + count,
                self.shape
            )));
        }
        let mut shape = dims.to_vec();
        shape[0] = count;
        let n = Shape::new(&dims[1..]).numel();
        let range = start * n..(start + count) * n;
        match self.dtype() {
            DType::F64 => Tensor::from_values(shape, &self.values::<f64>()?[range]),
            _ => Tensor::from_values(shape, &self.values::<f32>()?[range]),
        }
    }

    /// Stack equally shaped f32 host tensors along a new leading dimension.
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
            out.data_mut()[i * n..(i + 1) * n].copy_from_slice(t.values()?);
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
    use std::sync::Arc;

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
    fn stack_index_and_rows() {
        let a = Tensor::from_vec([1, 3], &[1., 2., 3.]).unwrap();
        let b = Tensor::from_vec([1, 3], &[4., 5., 6.]).unwrap();
        let s = Tensor::stack(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(s.dims(), &[2, 1, 3]);
        assert_eq!(s.index0(1).unwrap().data(), b.data());
        assert!(s.index0(2).is_err());
        assert!(Tensor::stack(&[]).is_err());
        let r = s.rows(1, 1).unwrap();
        assert_eq!((r.dims(), r.data()), (&[1, 1, 3][..], b.data()));
        assert!(s.rows(1, 2).is_err());
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

    #[test]
    fn f64_tensors_cast_and_refuse_f32_access() {
        let t = Tensor::from_values([2], &[0.1f64, -3.0]).unwrap();
        assert_eq!(t.dtype(), DType::F64);
        assert!(t.values::<f32>().is_err());
        let f = t.cast(DType::F32).unwrap();
        assert_eq!(f.data(), &[0.1f32, -3.0]);
        assert_eq!(
            f.cast(DType::F64).unwrap().values::<f64>().unwrap()[1],
            -3.0
        );
        assert!(Tensor::zeros_of([2], DType::BF16).is_err());
    }

    #[test]
    fn device_tensors_are_opaque() {
        let buf = DeviceBuffer::new(Device::Cuda(1), DType::F32, 6, Arc::new(()));
        let t = Tensor::from_device([2, 3], buf.clone()).unwrap();
        assert_eq!(
            (t.device(), t.numel(), t.dtype()),
            (Device::Cuda(1), 6, DType::F32)
        );
        let e = t.values::<f32>().unwrap_err().to_string();
        assert!(e.contains("on cuda:1"), "{e}");
        assert!(t.cast(DType::F32).is_err());
        assert!(Tensor::from_device([4], buf).is_err());
        assert!(t.device_buffer().is_some());
    }
}
