//! Where a tensor's data lives.

use std::any::Any;
use std::sync::Arc;

use super::DType;
use crate::error::{Error, Result};

/// The device holding a tensor's data. `src/nn` passes tensors around without knowing which;
/// only a backend reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Device {
    /// Host memory, 64-byte aligned: what the CPU kernels read and every file is read into.
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        let bad = || {
            Error::Invalid(format!(
                "unknown device '{s}': expected cpu, cuda or cuda:N (N the GPU's ordinal)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            t => {
                let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        Device::parse(s)
    }
}

/// Memory owned by a device backend, opaque to everything else. The backend that made it
/// downcasts the handle to its own type (as it does with a `LayerCache`), so `tensor/` needs no
/// knowledge of any device API. Clones share the memory: a device tensor is written only
/// through the backend's ops, which make new buffers or take `&mut Tensor`.
#[derive(Clone)]
pub struct DeviceBuffer {
    device: Device,
    dtype: DType,
    len: usize,
    handle: Arc<dyn Any + Send + Sync>,
}

impl DeviceBuffer {
    /// Wrap a backend's buffer of `len` elements of `dtype` on `device`.
    pub fn new(
        device: Device,
        dtype: DType,
        len: usize,
        handle: Arc<dyn Any + Send + Sync>,
    ) -> DeviceBuffer {
        DeviceBuffer {
            device,
            dtype,
            len,
            handle,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backend's own buffer type, or None for another backend's buffer.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.handle.downcast_ref()
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({}, {} x {})",
            self.device, self.len, self.dtype
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("CUDA").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = Device::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn buffers_downcast_to_their_own_type_only() {
        let b = DeviceBuffer::new(Device::Cuda(0), DType::F32, 7, Arc::new(42u32));
        assert_eq!(b.downcast::<u32>(), Some(&42));
        assert!(b.downcast::<u64>().is_none());
        assert_eq!(
            (b.len(), b.dtype(), b.device()),
            (7, DType::F32, Device::Cuda(0))
        );
    }
}
