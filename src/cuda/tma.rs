//! Tensor Memory Accelerator descriptors (Hopper): the host describes a 2-D tensor in global
//! memory and the tile ("box") one TMA copy moves; the kernel then loads whole tiles with one
//! instruction, zero-filling what lies outside the tensor (the ragged edges of any M, N, K).

use super::gpu::{DevMem, Gpu};
use crate::error::{Error, Result};

/// `CUtensorMap`: 128 opaque bytes, 128-byte aligned, passed to the kernel by value as a
/// `const __grid_constant__` parameter.
#[repr(C, align(128))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TensorMap {
    pub opaque: [u64; 16],
}

/// Element types keel's TMA tiles hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmaType {
    Bf16,
    F32,
}

impl TmaType {
    fn bytes(self) -> usize {
        match self {
            TmaType::Bf16 => 2,
            TmaType::F32 => 4,
        }
    }
}

/// A row-major `rows x cols` matrix of `ty` at `mem`, moved in boxes of `box_rows x box_cols`
/// with the given shared-memory swizzle (0 none, else 32, 64 or 128 bytes).
#[derive(Clone, Copy, Debug)]
pub struct Tile2d {
    pub ty: TmaType,
    pub rows: usize,
    pub cols: usize,
    pub box_rows: u32,
    pub box_cols: u32,
    pub swizzle_bytes: u32,
}

impl Tile2d {
    /// Check what `cuTensorMapEncodeTiled` would refuse, with a message keel can show: a row
    /// pitch that is a multiple of 16 bytes, boxes of at most 256 per side whose inner side
    /// fits the swizzle span.
    pub fn check(&self) -> Result<()> {
        let pitch = self.cols * self.ty.bytes();
        let inner = self.box_cols as usize * self.ty.bytes();
        let bad = |why: String| Err(Error::Invalid(format!("TMA tile {self:?}: {why}")));
        if !pitch.is_multiple_of(16) {
            return bad(format!("row pitch {pitch} bytes is not a multiple of 16"));
        }
        if self.box_rows == 0 || self.box_cols == 0 || self.box_rows > 256 || self.box_cols > 256 {
            return bad("box sides must be 1..=256".into());
        }
        if self.swizzle_bytes != 0 && inner > self.swizzle_bytes as usize {
            return bad(format!(
                "box row of {inner} bytes exceeds the {}-byte swizzle",
                self.swizzle_bytes
            ));
        }
        if !matches!(self.swizzle_bytes, 0 | 32 | 64 | 128) {
            return bad("swizzle must be 0, 32, 64 or 128 bytes".into());
        }
        Ok(())
    }
}

/// The descriptor of `tile` over `mem` (a real GPU only).
pub fn encode(gpu: &Gpu, mem: &DevMem, tile: &Tile2d) -> Result<TensorMap> {
    use cudarc::driver::sys::{
        CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
        CUtensorMapL2promotion, CUtensorMapSwizzle,
    };
    tile.check()?;
    if gpu.cuda_device().is_none() {
        return Err(Error::cuda(
            "cuTensorMapEncodeTiled",
            "TMA needs a real Hopper GPU; the CPU build has none",
        ));
    }
    let need = tile.rows * tile.cols * tile.ty.bytes();
    if mem.bytes() < need {
        return Err(Error::Shape(format!(
            "TMA tile {tile:?} over a buffer of {} bytes (needs {need})",
            mem.bytes()
        )));
    }
    let ty = match tile.ty {
        TmaType::Bf16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        TmaType::F32 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    };
    let swizzle = match tile.swizzle_bytes {
        0 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        32 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
        64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        _ => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    let dims = [tile.cols as u64, tile.rows as u64];
    let strides = [(tile.cols * tile.ty.bytes()) as u64];
    let boxes = [tile.box_cols, tile.box_rows];
    let elem_strides = [1u32, 1];
    let mut map = TensorMap { opaque: [0; 16] };
    // SAFETY: `map` is a 128-byte, 128-aligned CUtensorMap; the arrays have the lengths a
    // rank-2 map reads (dims 2, strides 1, box 2, element strides 2); `mem` holds the whole
    // tensor (checked above) and outlives every launch that uses the map (the caller keeps it).
    let rc = unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            &mut map as *mut TensorMap as *mut CUtensorMap,
            ty,
            2,
            mem.ptr() as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    rc.result()
        .map_err(|e| Error::cuda("cuTensorMapEncodeTiled", format!("{e:?} for {tile:?}")))?;
    Ok(map)
}

/// See `kernels/gemm_sm90a.cu`'s header.
pub fn gemm_tile_a(m: usize, k: usize) -> Tile2d {
    Tile2d {
        ty: TmaType::Bf16,
        rows: m,
        cols: k,
        box_rows: 128,
        box_cols: 64,
        swizzle_bytes: 128,
    }
}

/// See `kernels/gemm_sm90a.cu`'s header.
pub fn gemm_tile_b(k: usize, n: usize) -> Tile2d {
    Tile2d {
        ty: TmaType::Bf16,
        rows: k,
        cols: n,
        box_rows: 64,
        box_cols: 64,
        swizzle_bytes: 128,
    }
}
