//! One interface over the two places keel's kernels run: a real GPU (the CUDA driver, cubins
//! from NVRTC) and the CPU build of the same sources (tests and CI). Everything above it, the
//! GEMM launchers and the backend included, is the same code for both, so CI exercises the
//! grid and block sizes, argument order and shared-memory sizes a GPU will be given.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use super::driver::CudaDevice;
use super::emu::{self, EmuFunction};
use super::source::ModuleSource;
use super::{cache, nvrtc, source};
use crate::error::{Error, Result};

/// Where kernels run.
enum Engine {
    Cuda(CudaDevice),
    /// The CPU build: "device memory" is 256-byte aligned host memory.
    Cpu,
}

/// A kernel ready to launch.
#[derive(Clone)]
pub enum Function {
    Cuda(Arc<CudaKernel>),
    Cpu(EmuFunction),
}

impl Function {
    pub fn name(&self) -> &str {
        match self {
            Function::Cuda(k) => &k.name,
            Function::Cpu(f) => f.name(),
        }
    }
}

/// A kernel loaded on a GPU, with the dynamic shared memory it has been allowed so far (raising
/// the limit is a driver call, made once per new size rather than once per launch, so it stays
/// out of timed loops).
pub struct CudaKernel {
    f: cudarc::driver::CudaFunction,
    name: String,
    smem_allowed: std::sync::atomic::AtomicU32,
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem: u32,
}

impl Launch {
    /// A 1-D launch of `n` threads in blocks of `block`.
    pub fn linear(n: usize, block: u32) -> Launch {
        let blocks = n.div_ceil(block as usize).max(1);
        Launch {
            grid: [blocks.min(u32::MAX as usize) as u32, 1, 1],
            block: [block, 1, 1],
            dynamic_smem: 0,
        }
    }
}

/// Device memory, freed when the last clone is dropped.
#[derive(Clone)]
pub struct DevMem {
    ptr: u64,
    bytes: usize,
    _owner: Arc<dyn Any + Send + Sync>,
}

impl DevMem {
    /// The device address (a host address in the CPU build).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `bytes` bytes from `offset`, sharing this memory (it stays alive while the view does).
    pub fn view(&self, offset: usize, bytes: usize) -> Result<DevMem> {
        if offset.checked_add(bytes).is_none_or(|end| end > self.bytes) {
            return Err(Error::cuda(
                "memory view",
                format!("{bytes} bytes at {offset} of a buffer of {}", self.bytes),
            ));
        }
        Ok(DevMem {
            ptr: self.ptr + offset as u64,
            bytes,
            _owner: self._owner.clone(),
        })
    }
}

impl std::fmt::Debug for DevMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevMem({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

/// 256-byte aligned host memory standing in for device memory (cudaMalloc's alignment, which
/// the vectorised kernels rely on).
struct HostAlloc {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the allocation is plain bytes owned by this value; kernels write it only during a
// launch, which the owner of the `DevMem` sequences.
unsafe impl Send for HostAlloc {}
// SAFETY: as above; `&HostAlloc` gives no access to the bytes.
unsafe impl Sync for HostAlloc {}

impl Drop for HostAlloc {
    fn drop(&mut self) {
        // SAFETY: allocated in `Gpu::alloc` with this layout, freed only here.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Kernel arguments in cuLaunchKernel's layout: each value in its own aligned slot, and an
/// array of pointers to the slots.
#[derive(Default)]
pub struct Args {
    slots: Vec<Slot>,
}

/// Room for any kernel parameter keel passes (the largest is a 128-byte TMA descriptor).
#[repr(C, align(128))]
struct Slot([u8; 128]);

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// A plain value (`int`, `float`, a struct of them) as the kernel declares it.
    pub fn value<T: bytemuck::Pod>(mut self, v: T) -> Args {
        let bytes = bytemuck::bytes_of(&v);
        assert!(
            bytes.len() <= 128,
            "kernel argument of {} bytes",
            bytes.len()
        );
        let mut slot = Slot([0; 128]);
        slot.0[..bytes.len()].copy_from_slice(bytes);
        self.slots.push(slot);
        self
    }

    /// A device pointer.
    pub fn mem(self, m: &DevMem) -> Args {
        self.value(m.ptr)
    }

    /// A device pointer that may be null.
    pub fn opt(self, m: Option<&DevMem>) -> Args {
        self.value(m.map_or(0u64, |m| m.ptr))
    }

    pub fn i32(self, v: i32) -> Args {
        self.value(v)
    }

    pub fn f32(self, v: f32) -> Args {
        self.value(v)
    }

    /// Several `int` arguments in order (sizes and strides: each must fit an `int`).
    pub fn i32s(self, vs: &[usize]) -> Args {
        vs.iter().fold(self, |a, &v| a.i32(v as i32))
    }

    fn params(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s.0.as_mut_ptr() as *mut c_void)
            .collect()
    }
}

/// A GPU, or the CPU build of the kernels standing in for one.
pub struct Gpu {
    engine: Engine,
    ordinal: usize,
    functions: Mutex<HashMap<(&'static str, String), Function>>,
    memory: Arc<MemoryUse>,
}

/// Bytes of device memory keel holds now and at most since the last reset: the number
/// `gpu-check` sets beside PyTorch's `max_memory_allocated`, which counts the same thing
/// (live tensors, not the driver's pool or the modules).
#[derive(Default)]
struct MemoryUse {
    live: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// An allocation counted in [`MemoryUse`] until it is freed.
struct Counted {
    _inner: Box<dyn Any + Send + Sync>,
    bytes: usize,
    memory: Arc<MemoryUse>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.memory
            .live
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Gpu {
    /// GPU `ordinal`, or a clear error when there is none ("no CUDA device: ...").
    pub fn cuda(ordinal: usize) -> Result<Arc<Gpu>> {
        let dev = CudaDevice::open(ordinal)?;
        Ok(Arc::new(Gpu {
            engine: Engine::Cuda(dev),
            ordinal,
            functions: Mutex::default(),
            memory: Arc::default(),
        }))
    }

    /// GPU `ordinal`, or the CPU build of the kernels when `KEEL_CUDA_CPU_BUILD=1` (slow; it
    /// lets the tests drive the command line through the CUDA launch code without a GPU).
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        if std::env::var("KEEL_CUDA_CPU_BUILD").is_ok_and(|v| v == "1") {
            Gpu::cpu_emulated()
        } else {
            Gpu::cuda(ordinal)
        }
    }

    /// The CPU build of the kernels (needs a C++ compiler).
    pub fn cpu_emulated() -> Result<Arc<Gpu>> {
        if !emu::available() {
            return Err(Error::cuda(
                "building kernels for the CPU",
                "no C++ compiler (g++, or $KEEL_CXX)",
            ));
        }
        Ok(Arc::new(Gpu {
            engine: Engine::Cpu,
            ordinal: 0,
            functions: Mutex::default(),
            memory: Arc::default(),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.engine, Engine::Cpu)
    }

    /// The device's name ("NVIDIA H200", or "CPU build").
    pub fn name(&self) -> String {
        match &self.engine {
            Engine::Cuda(d) => d.name.clone(),
            Engine::Cpu => "CPU build of the CUDA kernels".into(),
        }
    }

    /// The architecture kernels are compiled for (`sm_90a`, `sm_80`, or `cpu`).
    pub fn arch(&self) -> &str {
        match &self.engine {
            Engine::Cuda(d) => &d.arch,
            Engine::Cpu => "cpu",
        }
    }

    /// The most dynamic shared memory one block may have.
    pub fn max_dynamic_smem(&self) -> u32 {
        match &self.engine {
            Engine::Cuda(d) => d.max_dynamic_smem,
            // An H100/H200's opt-in limit, so the CPU build refuses what a GPU would.
            Engine::Cpu => 227 * 1024,
        }
    }

    /// The launch of a grid-stride kernel over `n` items: 256-thread blocks, as many as fill
    /// the device (16 per SM) and no more, since the kernel loops over the rest; two in the
    /// CPU build, where every block is 256 OS threads.
    pub fn grid_stride(&self, n: usize) -> Launch {
        let cap = if self.is_emulated() {
            2
        } else {
            self.sm_count().max(1) * 16
        };
        let mut l = Launch::linear(n, 256);
        l.grid[0] = l.grid[0].min(cap);
        l
    }

    pub fn sm_count(&self) -> u32 {
        match &self.engine {
            Engine::Cuda(d) => d.sm_count,
            Engine::Cpu => 1,
        }
    }

    /// The CUDA device, for what only a real GPU has (events, cuBLAS).
    pub fn cuda_device(&self) -> Option<&CudaDevice> {
        match &self.engine {
            Engine::Cuda(d) => Some(d),
            Engine::Cpu => None,
        }
    }

    /// `bytes` of device memory (contents undefined).
    pub fn alloc(&self, bytes: usize) -> Result<DevMem> {
        let (ptr, owner): (u64, Box<dyn Any + Send + Sync>) = match &self.engine {
            Engine::Cuda(d) => {
                let a = d.alloc(bytes)?;
                (a.ptr, Box::new(a))
            }
            Engine::Cpu => {
                let layout = std::alloc::Layout::from_size_align(bytes.max(1), 256)
                    .map_err(|e| Error::cuda(format!("allocating {bytes} bytes"), e))?;
                // SAFETY: the layout's size is non-zero.
                let ptr = unsafe { std::alloc::alloc(layout) };
                if ptr.is_null() {
                    return Err(Error::cuda(
                        format!("allocating {bytes} bytes"),
                        "out of memory",
                    ));
                }
                (ptr as u64, Box::new(HostAlloc { ptr, layout }))
            }
        };
        use std::sync::atomic::Ordering;
        let live = self.memory.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.memory.peak.fetch_max(live, Ordering::Relaxed);
        Ok(DevMem {
            ptr,
            bytes,
            _owner: Arc::new(Counted {
                _inner: owner,
                bytes,
                memory: self.memory.clone(),
            }),
        })
    }

    /// Bytes of device memory keel holds now.
    pub fn memory_in_use(&self) -> usize {
        self.memory.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most device memory keel has held at once since [`Gpu::reset_memory_peak`].
    pub fn memory_peak(&self) -> usize {
        self.memory.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Start a new peak from what is held now.
    pub fn reset_memory_peak(&self) {
        use std::sync::atomic::Ordering;
        self.memory
            .peak
            .store(self.memory.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A new device buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<DevMem> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let m = self.alloc(bytes.len())?;
        self.write(&m, bytes)?;
        Ok(m)
    }

    /// Copy `bytes` into the start of `m`.
    pub fn write(&self, m: &DevMem, bytes: &[u8]) -> Result<()> {
        check_len("write", m, bytes.len())?;
        match &self.engine {
            Engine::Cuda(d) => d.upload(m.ptr, bytes),
            Engine::Cpu => {
                // SAFETY: `m` owns at least `bytes.len()` bytes (checked above), and host
                // memory is not aliased by the slice.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.ptr as *mut u8, bytes.len())
                };
                Ok(())
            }
        }
    }

    /// The first `out.len()` elements of `m`.
    pub fn read<T: bytemuck::Pod>(&self, m: &DevMem, out: &mut [T]) -> Result<()> {
        let out: &mut [u8] = bytemuck::cast_slice_mut(out);
        check_len("read", m, out.len())?;
        match &self.engine {
            Engine::Cuda(d) => d.download(out, m.ptr),
            Engine::Cpu => {
                // SAFETY: `m` holds at least `out.len()` bytes (checked above).
                unsafe {
                    std::ptr::copy_nonoverlapping(m.ptr as *const u8, out.as_mut_ptr(), out.len())
                };
                Ok(())
            }
        }
    }

    /// `n` elements of `m`, as a vector.
    pub fn to_vec<T: bytemuck::Pod + Default>(&self, m: &DevMem, n: usize) -> Result<Vec<T>> {
        let mut v = vec![T::default(); n];
        self.read(m, &mut v)?;
        Ok(v)
    }

    /// Set every byte of `m` to `byte` (0xFF makes every f32 a NaN: the poison the tests
    /// write before a kernel must overwrite the output).
    pub fn fill_bytes(&self, m: &DevMem, byte: u8) -> Result<()> {
        match &self.engine {
            Engine::Cuda(d) => d.memset(m.ptr, byte, m.bytes),
            Engine::Cpu => {
                // SAFETY: `m` owns `m.bytes` bytes.
                unsafe { std::ptr::write_bytes(m.ptr as *mut u8, byte, m.bytes) };
                Ok(())
            }
        }
    }

    /// Copy `bytes` from `src` to `dst`, on the device.
    pub fn copy(&self, dst: &DevMem, src: &DevMem, bytes: usize) -> Result<()> {
        check_len("copy to", dst, bytes)?;
        check_len("copy from", src, bytes)?;
        match &self.engine {
            Engine::Cuda(d) => d.copy(dst.ptr, src.ptr, bytes),
            Engine::Cpu => {
                // SAFETY: both own at least `bytes` bytes (checked); `copy` allows overlap.
                unsafe { std::ptr::copy(src.ptr as *const u8, dst.ptr as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// The kernel `name` of `module`, compiled for this device on first use (NVRTC, with the
    /// cubin cached on disk by source digest and architecture; g++ for the CPU build).
    pub fn function(&self, module: &'static ModuleSource, name: &str) -> Result<Function> {
        let key = (module.name, name.to_string());
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let f = match &self.engine {
            Engine::Cuda(d) => {
                if module.sm90a_only && d.arch != "sm_90a" {
                    return Err(Error::cuda(
                        format!("loading {name}"),
                        format!(
                            "{} needs a Hopper GPU (sm_90a); this one is {}",
                            module.file, d.arch
                        ),
                    ));
                }
                let cubin = cubin(module, &d.arch)?;
                let m = d.load(module.file, cubin)?;
                let f = m.load_function(name).map_err(|e| {
                    Error::cuda(format!("cuModuleGetFunction {name}"), format!("{e:?}"))
                })?;
                Function::Cuda(Arc::new(CudaKernel {
                    f,
                    name: name.to_string(),
                    smem_allowed: (48 * 1024).into(),
                }))
            }
            Engine::Cpu => {
                if module.sm90a_only {
                    return Err(Error::cuda(
                        format!("loading {name}"),
                        format!("{} (wgmma, TMA) runs only on a Hopper GPU", module.file),
                    ));
                }
                Function::Cpu(emu::module(module.file, module.text)?.function(name)?)
            }
        };
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }

    /// Launch `f` on this device's one stream (in the CPU build: run it to completion).
    ///
    /// # Safety
    /// `args` must match `f`'s parameters in number, order and type, and every pointer must
    /// address device memory of the sizes the kernel reads and writes for this launch.
    pub unsafe fn launch(&self, f: &Function, launch: Launch, mut args: Args) -> Result<()> {
        let threads: u64 = launch.block.iter().map(|&b| b as u64).product();
        let what = || format!("cuLaunchKernel {}", f.name());
        if threads == 0 || threads > 1024 || launch.grid.contains(&0) {
            return Err(Error::cuda(
                what(),
                format!(
                    "invalid launch: grid {:?}, block {:?}",
                    launch.grid, launch.block
                ),
            ));
        }
        if launch.dynamic_smem > self.max_dynamic_smem() {
            return Err(Error::cuda(
                what(),
                format!(
                    "{} bytes of dynamic shared memory, more than the device's {}",
                    launch.dynamic_smem,
                    self.max_dynamic_smem()
                ),
            ));
        }
        let mut params = args.params();
        match (&self.engine, f) {
            (Engine::Cuda(d), Function::Cuda(k)) => {
                use std::sync::atomic::Ordering;
                if launch.dynamic_smem > k.smem_allowed.load(Ordering::Relaxed) {
                    d.allow_dynamic_smem(&k.f, &k.name, launch.dynamic_smem)?;
                    k.smem_allowed
                        .fetch_max(launch.dynamic_smem, Ordering::Relaxed);
                }
                // SAFETY: the caller's contract.
                unsafe {
                    d.launch(
                        &k.f,
                        &k.name,
                        &mut params,
                        launch.grid,
                        launch.block,
                        launch.dynamic_smem,
                    )
                }
            }
            (Engine::Cpu, Function::Cpu(ef)) => {
                // SAFETY: the caller's contract; CPU-build pointers are host addresses.
                unsafe { ef.launch(&mut params, launch.grid, launch.block, launch.dynamic_smem) }
            }
            _ => Err(Error::cuda(what(), "kernel loaded for another device")),
        }
    }

    /// Wait for everything launched so far.
    pub fn synchronize(&self) -> Result<()> {
        match &self.engine {
            Engine::Cuda(d) => d.synchronize(),
            Engine::Cpu => Ok(()),
        }
    }
}

fn check_len(what: &str, m: &DevMem, bytes: usize) -> Result<()> {
    if bytes > m.bytes {
        return Err(Error::cuda(
            format!("memory {what}"),
            format!("{bytes} bytes into a buffer of {}", m.bytes),
        ));
    }
    Ok(())
}

/// The cubin of `module` for `arch`, from the disk cache or NVRTC.
pub fn cubin(module: &ModuleSource, arch: &str) -> Result<Vec<u8>> {
    let text = module.device_text();
    let (major, minor) = nvrtc::version()?;
    let key = source::digest(&[&text, arch, &format!("nvrtc {major}.{minor}")]);
    cache::bytes(&format!("{}-{key}-{arch}.cubin", module.name), || {
        nvrtc::compile(module.file, &text, arch).map(|c| c.cubin)
    })
}
