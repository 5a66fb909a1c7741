//! cuBLAS, only as the yardstick `keel gpu-check` measures the ladder against: the same
//! row-major GEMM in the same math mode (fp32 with TF32 off, TF32, BF16 inputs), on keel's
//! stream. keel never computes with it.

use cudarc::cublas::{result as blas, sys};

use super::gemm::Precision;
use super::gpu::{DevMem, Gpu};
use crate::error::{Error, Result};

pub struct Cublas {
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is used from one thread at a time (gpu-check is sequential); cuBLAS
// handles may move between threads.
unsafe impl Send for Cublas {}

impl Cublas {
    /// A handle on `gpu`'s stream, or why there is none (no GPU, no libcublas).
    pub fn new(gpu: &Gpu) -> Result<Cublas> {
        let dev = gpu
            .cuda_device()
            .ok_or_else(|| Error::cuda("cublasCreate", "cuBLAS needs a real GPU"))?;
        // SAFETY: only tries to dlopen the library by its known names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::cuda("cublasCreate", "libcublas.so not found"));
        }
        dev.ctx
            .bind_to_thread()
            .map_err(|e| Error::cuda("cuCtxSetCurrent", format!("{e:?}")))?;
        let handle =
            blas::create_handle().map_err(|e| Error::cuda("cublasCreate", format!("{e:?}")))?;
        // SAFETY: a fresh handle and the device's live stream.
        unsafe { blas::set_stream(handle, dev.stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| Error::cuda("cublasSetStream", format!("{e:?}")))?;
        Ok(Cublas { handle })
    }

    /// Row-major `C (m x n) = A (m x k) · B (k x n)` in `precision`: cuBLAS is column-major,
    /// so it computes `Cᵀ = Bᵀ · Aᵀ`, which has the same bytes. fp32 is `CUBLAS_COMPUTE_32F`
    /// in the handle's default math mode, which does not use TF32 (`scripts/gpu-check.sh`
    /// clears `NVIDIA_TF32_OVERRIDE`, so the environment cannot change what a mode means).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        precision: Precision,
        a: &DevMem,
        b: &DevMem,
        c: &DevMem,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let e = precision.input_bytes();
        if a.bytes() < m * k * e || b.bytes() < k * n * e || c.bytes() < m * n * 4 {
            return Err(Error::Shape(format!(
                "cuBLAS GEMM {m}x{n}x{k}: buffers too small"
            )));
        }
        let (in_ty, compute) = match precision {
            Precision::Fp32 => (
                sys::cudaDataType::CUDA_R_32F,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            Precision::Tf32 => (
                sys::cudaDataType::CUDA_R_32F,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            ),
            Precision::Bf16 => (
                sys::cudaDataType::CUDA_R_16BF,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the buffers hold the sizes checked above; alpha and beta are host f32s as
        // the 32F compute types read them; the handle is live.
        unsafe {
            blas::gemm_ex(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                b.ptr() as *const _,
                in_ty,
                n as i32,
                a.ptr() as *const _,
                in_ty,
                k as i32,
                &beta as *const f32 as *const _,
                c.ptr() as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                n as i32,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::cuda("cublasGemmEx", format!("{e:?}")))
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed only here.
        let _ = unsafe { blas::destroy_handle(self.handle) };
    }
}
