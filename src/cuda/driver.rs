//! A real GPU through the CUDA driver API (cudarc, loaded at run time): one context and one
//! stream per device, raw device pointers, modules from NVRTC cubins.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result as cu;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

fn err(call: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let call = call.into();
    move |e| Error::cuda(call, format!("{e:?}"))
}

/// Whether the CUDA driver library (libcuda.so.1) can be loaded at all.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its known names; no driver call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::cuda(
            "cuInit",
            "no CUDA device: the NVIDIA driver (libcuda.so.1) is not installed on this machine",
        ));
    }
    let n = CudaContext::device_count()
        .map_err(|e| Error::cuda("cuDeviceGetCount", format!("no CUDA device: {e:?}")))?;
    Ok(n.max(0) as usize)
}

pub struct CudaDevice {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    /// `sm_90a` on Hopper (so the wgmma module loads too), else `sm_XY`.
    pub arch: String,
    pub max_dynamic_smem: u32,
    pub sm_count: u32,
    /// The SMs' maximum clock, for the share of peak `gpu-check` prints.
    pub clock_khz: u32,
    pub l2_bytes: u32,
    pub compute_capability: (i32, i32),
}

impl CudaDevice {
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::cuda(
                "cuDeviceGet",
                format!("no CUDA device cuda:{ordinal} (this machine has {n})"),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(err(format!("cuCtxCreate cuda:{ordinal}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(err("cuDeviceGetAttribute compute capability"))?;
        let arch = match (major, minor) {
            (9, 0) => "sm_90a".to_string(),
            _ => format!("sm_{major}{minor}"),
        };
        let attr = |a, what: &str| {
            ctx.attribute(a)
                .map(|v| v.max(0) as u32)
                .map_err(err(format!("cuDeviceGetAttribute {what}")))
        };
        let max_dynamic_smem = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "max shared memory per block",
        )?;
        let sm_count = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            "multiprocessor count",
        )?;
        let clock_khz = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE,
            "clock rate",
        )?;
        let l2_bytes = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE,
            "L2 size",
        )?;
        let name = ctx.name().map_err(err("cuDeviceGetName"))?;
        let stream = ctx.default_stream();
        keep_freed_memory(&ctx)?;
        Ok(CudaDevice {
            ctx,
            stream,
            name,
            arch,
            max_dynamic_smem,
            sm_count,
            clock_khz,
            l2_bytes,
            compute_capability: (major, minor),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(err("cuCtxSetCurrent"))
    }

    /// Stream-ordered memory from the device's pool: an activation freed after the layer
    /// that read it was launched is reused by the next layer without waiting for the GPU
    /// (cuMemFree would synchronise the whole device at every layer).
    pub fn alloc(&self, bytes: usize) -> Result<CudaAlloc> {
        self.bind()?;
        // SAFETY: the context is current on this thread; the pointer is freed once, by
        // `CudaAlloc::drop`, on the same stream.
        let ptr = unsafe { cu::malloc_async(self.stream.cu_stream(), bytes.max(1)) }
            .map_err(err(format!("cuMemAllocAsync {bytes} bytes")))?;
        Ok(CudaAlloc {
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            ptr,
        })
    }

    /// Copy `src` to device address `dst`, which holds at least `src.len()` bytes.
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's `DevMem` holds at least `src.len()` bytes at `dst`; the copy
        // from pageable memory completes before the call returns.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(err("cuMemcpyHtoDAsync"))?;
        self.synchronize()
    }

    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` addresses at least `dst.len()` bytes; the stream is synchronised
        // before `dst` is read.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(err("cuMemcpyDtoHAsync"))?;
        self.synchronize()
    }

    pub fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` addresses at least `bytes` bytes of device memory.
        unsafe { cu::memset_d8_async(dst, byte, bytes, self.stream.cu_stream()) }
            .map_err(err("cuMemsetD8Async"))
    }

    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both addresses hold at least `bytes` bytes of device memory.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(err("cuMemcpyDtoDAsync"))
    }

    pub fn load(&self, module: &str, cubin: Vec<u8>) -> Result<Arc<cudarc::driver::CudaModule>> {
        self.ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(err(format!("cuModuleLoadData {module}")))
    }

    /// Allow `bytes` of dynamic shared memory (above the default 48 KiB needs opting in).
    pub fn allow_dynamic_smem(&self, f: &CudaFunction, name: &str, bytes: u32) -> Result<()> {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(err(format!(
            "cuFuncSetAttribute {name} dynamic shared memory {bytes}"
        )))
    }

    /// # Safety
    /// `params` must point at values of exactly `f`'s parameter types, device pointers
    /// addressing memory of the sizes the kernel uses.
    pub unsafe fn launch(
        &self,
        f: &CudaFunction,
        name: &str,
        params: &mut [*mut c_void],
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe {
            cu::launch_kernel(
                f.cu_function(),
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                smem,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(err(format!("cuLaunchKernel {name}")))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(err("cuStreamSynchronize"))
    }

    /// An event that records time.
    pub fn timing_event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(err("cuEventCreate"))
    }
}

/// The device's default memory pool keeps what is freed instead of handing it back to the
/// driver at the next synchronisation, so batch after batch reuses the same memory (what
/// PyTorch's caching allocator does).
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(err("cuDeviceGetDefaultMemPool"))?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a u64, which lives across
    // the call.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut c_void,
        )
    }
    .result()
    .map_err(err("cuMemPoolSetAttribute release threshold"))
}

/// Device memory from `cuMemAllocAsync`, freed on drop in stream order (after every kernel
/// launched before the drop has finished with it).
pub struct CudaAlloc {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub ptr: u64,
}

impl Drop for CudaAlloc {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemAllocAsync on this stream and is freed only here.
            let _ = unsafe { cu::free_async(self.ptr, self.stream.cu_stream()) };
        }
    }
}
