//! 64-byte aligned f32 storage, and the reduced-precision types keel can store weights in.
//!
//! 64 bytes is one cache line and one AVX-512 register: kernels may use aligned loads and no
//! tensor ever straddles a line at its start. The alignment comes from the element type of the
//! backing `Vec` (a 64-byte aligned block of 16 floats), so the alignment needs no `unsafe`.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

const LANES: usize = 16;

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Block([f32; LANES]);

/// A growable-once buffer of `f32` whose first element is 64-byte aligned.
#[derive(Clone, Default)]
pub struct AlignedVec {
    /// At least `len` floats; a reused buffer may hold more (see [`AlignedVec::for_overwrite`]).
    blocks: Vec<Block>,
    len: usize,
}

/// Large freed buffers kept for reuse. Without it every big activation (118 MB for VGG16's first
/// layer at batch 8, 240x240) comes as fresh pages from the kernel, and the page faults and page
/// clears cost more than the layer's own memory traffic: zeroing a reused buffer is several times
/// cheaper. Small buffers are left to the allocator (see `cpu::alloc`).
mod pool {
    use std::sync::Mutex;

    use super::Block;

    /// Buffers of at least this many blocks (1 MB) are pooled. At 32 MB, VGG16's 29.5 MB
    /// activations (block3 at 240x240, batch 8) came fresh every pass, and their page faults
    /// made block3_conv2 take 22-31 ms from one pass to the next; at 16 MB the bf16 pass ran
    /// 6% faster (Xeon, 3 alternating runs: 0.188 s -> 0.177 s median), fp32 the same, and
    /// `keel features` on the 153 validation photos peaked lower (480 MB against 528). At batch
    /// 1 every activation is below 16 MB, and each came fresh: glibc hands a freed block back
    /// for the next one and clears it first, a pass over memory per layer. At 1 MB
    /// block1_conv1 at 240x240 took 2.1 ms instead of 3.5 (its 14.7 MB output was cleared
    /// before being written) and block2_conv1 4.2 instead of 6.6 at 8 MB (issue 14's eighth
    /// session, Xeon family 6 model 167, medians of 28 passes). Peak RSS: one 224x224 image
    /// 235 MB against 242 (bf16 174 against 172), the 153 validation photos 459 against 465.
    /// That needs [`give`] to keep the largest buffers: keeping the first two it was given,
    /// the small ones took the places, and batch 8's 118 MB block1_conv1 output came fresh
    /// again (17 ms -> 41 ms).
    pub const MIN_BLOCKS: usize = (1 << 20) / 64;
    /// At most this many buffers and this many blocks (1 GB) are kept. VGG needs two: a layer's
    /// input and output alternate between them (a third and fourth only raised peak memory:
    /// `--augment crop` at 224x224 peaked at 654 MB with four, 565 MB with two).
    const MAX_BUFFERS: usize = 2;
    const MAX_BLOCKS: usize = (1 << 30) / 64;

    static POOL: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

    /// A pooled buffer with room for `blocks`, not more than twice that, as it was given back:
    /// its length and values are those of the tensor that held it.
    pub fn take(blocks: usize) -> Option<Vec<Block>> {
        let mut pool = POOL.lock().ok()?;
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= blocks && v.capacity() <= 2 * blocks)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i)?;
        Some(pool.swap_remove(best))
    }

    /// Drop every pooled buffer.
    pub fn clear() {
        if let Ok(mut pool) = POOL.lock() {
            pool.clear();
        }
    }

    /// Keep `v` if it is large and the pool has room.
    pub fn give(v: Vec<Block>) {
        if v.capacity() < MIN_BLOCKS {
            return;
        }
        if let Ok(mut pool) = POOL.lock() {
            // Full: the largest buffers are the ones worth keeping (the cost of a fresh
            // buffer grows with its size), so a smaller pooled one makes room.
            if pool.len() == MAX_BUFFERS
                && let Some((i, _)) = pool
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.capacity())
                    .filter(|(_, p)| p.capacity() < v.capacity())
            {
                pool.swap_remove(i);
            }
            let held: usize = pool.iter().map(Vec::capacity).sum();
            if pool.len() < MAX_BUFFERS && held + v.capacity() <= MAX_BLOCKS {
                pool.push(v);
            }
        }
    }
}

/// Ask Linux to back a large buffer with 2 MB pages (it does so only when asked, with
/// `transparent_hugepage=madvise`, the setting here; numpy asks for every array of 4 MB or
/// more). Before the buffer is first touched, this turns 512 page faults into one and takes
/// most TLB misses out of the kernels' streaming: measured on VGG16 at 240x240 and on GEMMs
/// with a large C.
fn advise_huge_pages(v: &[Block]) {
    const MIN_BYTES: usize = 4 << 20;
    let bytes = std::mem::size_of_val(v);
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const MADV_HUGEPAGE: i32 = 14;
        const HUGE: usize = 2 << 20;
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        // The whole 2 MB pages inside the buffer.
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside `v`'s allocation, which stays alive for the
            // call; MADV_HUGEPAGE changes only how the kernel backs those pages, not their
            // contents, and a refusal (an error return) leaves everything as it was.
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
}

impl Drop for AlignedVec {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.blocks));
    }
}

impl AlignedVec {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let blocks = len.div_ceil(LANES);
        if blocks >= pool::MIN_BLOCKS
            && let Some(mut v) = pool::take(blocks)
        {
            if v.len() >= blocks {
                v[..blocks].fill(Block([0.0; LANES]));
            } else {
                v.clear();
                v.resize(blocks, Block([0.0; LANES]));
            }
            return AlignedVec { blocks: v, len };
        }
        Self::fresh(len)
    }

    /// `len` floats for a kernel that writes every one of them before anything reads them:
    /// a pooled buffer keeps the values of the tensor that held it (no pass over memory to
    /// clear it, which at VGG16's batch 8 was a 118 MB memset per layer before a layer that
    /// writes the 118 MB again); a fresh one is zeros, as from [`AlignedVec::zeros`].
    pub fn for_overwrite(len: usize) -> Self {
        let blocks = len.div_ceil(LANES);
        if blocks >= pool::MIN_BLOCKS
            && let Some(mut v) = pool::take(blocks)
        {
            // Long enough: kept whole (the blocks past `len` are simply not seen), so a
            // buffer never shrinks and never needs extending later. Shorter (within the
            // capacity): the new blocks are zeros. Every value is initialized, only
            // unspecified.
            if v.len() < blocks {
                v.resize(blocks, Block([0.0; LANES]));
            }
            return AlignedVec { blocks: v, len };
        }
        Self::fresh(len)
    }

    /// `len` zeros, newly allocated.
    fn fresh(len: usize) -> Self {
        let blocks = len.div_ceil(LANES);
        // alloc_zeroed: large buffers come as fresh zero pages, with no memset pass.
        let v: Vec<Block> = bytemuck::zeroed_vec(blocks);
        advise_huge_pages(&v);
        AlignedVec { blocks: v, len }
    }

    /// Give back the large freed buffers kept for reuse: after a phase whose activations were
    /// large (the whole base at 320x320) and before one whose are small (fine-tuning the top),
    /// they would only hold memory.
    pub fn release_pooled() {
        pool::clear();
    }

    /// A copy of `values`, aligned.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::for_overwrite(values.len());
        v.as_mut_slice().copy_from_slice(values);
        v
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[f32] {
        &bytemuck::cast_slice::<Block, f32>(&self.blocks)[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut::<Block, f32>(&mut self.blocks)[..self.len]
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len={})", self.len)
    }
}

/// Element types keel stores tensors in. Kernels compute in f32; f64 tensors exist for the
/// reference kernels, so that gradient checks against finite differences measure the backward
/// pass and not rounding; f16/bf16 halve the size of converted weight files (and will feed the
/// GPU's tensor cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Encode f32 values as little-endian bytes of this type (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F64 => values
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
            DType::F16 => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Decode little-endian bytes of this type to f32. `None` if the length is not a multiple
    /// of the element size.
    pub fn decode(self, bytes: &[u8]) -> Option<Vec<f32>> {
        let size = self.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return None;
        }
        let chunks = bytes.chunks_exact(size);
        Some(match self {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => chunks
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => chunks
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => chunks
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f64" | "float64" => Ok(DType::F64),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(format!(
                "unknown dtype '{s}': expected f32, f64, f16 or bf16"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_buffers_are_reused_and_come_back_zeroed() {
        let n = (40 << 20) / 4;
        let mut a = AlignedVec::zeros(n);
        a.as_mut_slice().fill(7.0);
        drop(a);
        let b = AlignedVec::zeros(n - 5);
        assert_eq!(b.len(), n - 5);
        assert!(b.as_slice().iter().all(|&v| v == 0.0));
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        let c = AlignedVec::zeros(n + 3);
        assert!(c.as_slice().iter().all(|&v| v == 0.0));
    }

    use super::*;

    #[test]
    fn storage_is_64_byte_aligned_for_odd_lengths() {
        for len in [1, 3, 17, 63, 1000] {
            let v = AlignedVec::zeros(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0, "len {len}");
        }
        assert!(AlignedVec::zeros(0).is_empty());
    }

    #[test]
    fn from_slice_round_trips() {
        let values: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        assert_eq!(
            AlignedVec::from_slice(&values).as_slice(),
            values.as_slice()
        );
    }

    #[test]
    fn half_precision_round_trip_is_within_half_an_ulp() {
        let values: Vec<f32> = (0..101).map(|i| (i as f32 - 50.0) * 0.137).collect();
        for (dtype, rel) in [
            (DType::F32, 0.0),
            (DType::F64, 0.0),
            (DType::F16, 1.0 / 2048.0),
            (DType::BF16, 1.0 / 256.0),
        ] {
            let back = dtype.decode(&dtype.encode(&values)).unwrap();
            for (a, b) in values.iter().zip(&back) {
                assert!((a - b).abs() <= rel * a.abs(), "{dtype}: {a} -> {b}");
            }
        }
        assert!(DType::F16.decode(&[0, 1, 2]).is_none());
    }
}
