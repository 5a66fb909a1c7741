//! Where a tensor's data lives.

/// The device holding a tensor's data. Only the CPU exists today; the CUDA backend adds its
/// variant here so that `src/nn` can keep passing tensors around without knowing where they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
