//! AMX-BF16 GEMM: the product of [`super::bf16`] (same reference, same tolerance, same packed
//! B) on Intel's tile unit, `tdpbf16ps`, for Sapphire Rapids and later.
//!
//! # Why AMX
//!
//! One `vdpbf16ps` does 32 bfloat16 multiply-adds; one `tdpbf16ps` does 16 x 16 x 32 = 8192.
//! Intel quotes 1024 bfloat16 operations per cycle and core for the tile unit; two ports of
//! `vdpbf16ps` give 128 (2 x 32 multiply-adds). On a CPU that has it, this is the rung that
//! beats the AVX-512 one by several times (see "On hardware"), and the convolutions' GEMMs are
//! where keel spends its time.
//!
//! # Tiles and layout
//!
//! Palette 1 gives 8 tile registers of up to 16 rows of 64 bytes. The loop nest is BLIS's (as
//! in `bf16.rs`: K blocks of [`KC`], B packed per block in panels of [`NR`] = 32 columns, A
//! packed per block of rows), and the register block is a 32 x 32 block of C:
//!
//! ```text
//! tmm0 = C[0..16,  0..16]   tmm1 = C[0..16,  16..32]    A: tmm4 = rows 0..16, tmm5 = rows 16..32
//! tmm2 = C[16..32, 0..16]   tmm3 = C[16..32, 16..32]    B: tmm6 = cols 0..16, tmm7 = cols 16..32
//! ```
//!
//! each step of 16 k-pairs (32 values of k) loading A and B once for four `tdpbf16ps`. Every
//! tile is configured 16 rows x 64 bytes, once per task; nothing is ever reconfigured (loading
//! a configuration zeroes every tile).
//!
//! - **B** is [`PackedBBf16`] unchanged. A panel's pair row `p` is 32 u32 (128 bytes), `(B[2p][j],
//!   B[2p+1][j])` for its 32 columns: with a row stride of 128 bytes, 16 pair rows starting at
//!   byte 0 are the "VNNI" tile `tdpbf16ps` takes as its second source for columns 0..16, and
//!   starting at byte 64 for columns 16..32. A K block's pairs rarely come in multiples of 16,
//!   and a tile load past the panel's end would read the next panel (whose NaNs times the zero
//!   pairs of A give NaN) or past the buffer: the last partial step reads a copy of the
//!   panel's last pair rows, zero-padded to 16, made once per panel and K block.
//! - **A** is packed as `bf16.rs` packs it (the same AVX-512 code): row by row, `(A[r][2p],
//!   A[r][2p+1])`, rows `a_stride` pairs apart (a multiple of 16 pairs plus 16, so 64-byte
//!   aligned and off the 4 KB aliasing stride), zero past `kc`, so that a tile of 16 rows x 16
//!   pairs is a plain strided load. Rows are zero-padded to a multiple of 32: a block of C at
//!   the bottom edge computes zero rows and never writes them.
//! - **C** goes through a 32 x 32 scratch block (4 KB, in L1): loaded into the tiles from there
//!   when the sum starts from C (`accumulate`, or a second K block), stored there after the
//!   block's last step, then written to C with the bias and ReLU on the last K block, only the
//!   rows and columns inside C. Edge blocks need no other code, and the epilogue stays the
//!   scalar one of the reference.
//!
//! # What `tdpbf16ps` computes
//!
//! Per the Intel SDM (and Bochs, which follows it), for each row `m` of the destination: two
//! f32 sums start from zero, the even elements' products accumulated into one and the odd
//! elements' into the other (each step a fused multiply-add, rounded to nearest even), over
//! the 16 pairs `k`; then `dst[m][n] += even + odd`, two more roundings. Inputs below f32's
//! normal range (bfloat16 subnormals, a subnormal accumulator) count as zero, results below it
//! are flushed to zero, MXCSR is neither read nor written. Intel's intrinsics guide describes
//! instead one running sum per element, the even product then the odd, pair by pair.
//!
//! `Emu` implements the SDM's order, and the tolerance does not depend on which is right:
//! either sums the same exact products (a product of two bfloat16 values has 16 significant
//! bits) in f32, in some order, so both fall within `1e-5 * (sum_k |a_k b_k| + |bias| + |C
//! before|)` of the reference for the reasons `bf16.rs`'s tests give, and a wrong, missing or
//! doubled product is off by far more. Dropping subnormal operands and flushing subnormal
//! partial sums costs at most 2^-126 a step, covered by the tests' absolute `1e-30`.
//!
//! # The emulator as the specification
//!
//! The loop nest is generic over `Tiles`, the six tile instructions it uses, with two
//! implementations: `Hw`, the instructions themselves (`core::arch::asm!`, Intel syntax, no
//! target feature needed), and `Emu`, those instructions written out in plain Rust from the
//! SDM's pseudocode, checks and all (a shape that would raise #UD panics). The same driver
//! code, addressing, padding and tail handling included, runs on both, so everything but the
//! silicon is tested on any machine: against the reference within the tolerance, and bit for
//! bit against a scalar model of the SDM's sequence of operations.
//!
//! # Enabling it
//!
//! [`status`] says whether `Hw` may run here and if not why, worked out once per process: the
//! CPU must report AMX-TILE and AMX-BF16, the OS must save the tile state (XCR0), AVX-512F and
//! AVX512-BF16 must be usable with `KEEL_ISA` not below `avx512` (the packing is `bf16.rs`'s
//! AVX-512 code, and [`PackedBBf16::new`] then works too), Linux must grant this process the
//! tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; without it the first
//! tile instruction faults), and a self-check must pass: two small odd-shaped products on
//! `Hw` that must agree with `Emu` and with the reference within the tolerance. A tile
//! instruction the CPU rejects kills the process (SIGILL), so the checks before the self-check
//! are what keep it from running where it cannot.
//!
//! # On hardware
//!
//! Written on an AMD Zen 4 without AMX, where the `Hw` path assembled but never ran. It first
//! ran on a 2-CPU KVM guest of an Intel Xeon with AMX (issue 14's sixth session, `keel info`:
//! family 6 model 167 as the hypervisor reports it, L2 2 MiB, AMX-TILE, AMX-BF16): every
//! `hw_` test passed as written (each instruction against the emulator, the whole product
//! against the emulator and the reference, the self-check). `keel bench gemm 1024 1024 1024
//! --kernel amxbf16` on one thread: 860-950 GFLOP/s, against 109 for `avx512bf16` and 140-150
//! for f32 `avx512`. The block sizes (`MC`, the K and N blocks shared with `bf16.rs`) are
//! still untuned guesses. On a CPU with AMX, `cargo test --release --lib gemm::amx --
//! --nocapture` runs the `hw_` tests, which skip elsewhere with the reason.

use std::cell::Cell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::Epilogue;
use super::bf16::{
    self, BSrc, KC, Line, NR, PackedBBf16, check_operands, gemm_bf16_reference, pairs_mut,
    round_bf16, to_bf16_f32,
};
use super::driver::CPtr;

#[cfg(target_arch = "x86_64")]
pub(crate) use hw::Hw;

/// Rows of the block of C held in tiles: two tiles of 16 rows.
const TM: usize = 32;
/// Pairs of `k` per `tdpbf16ps`: a tile row of 64 bytes.
const TK: usize = 16;
/// Rows of A per packed block: four blocks of C. With `KC` = 2304 a block is 600 KB, which
/// stays in Sapphire Rapids' 2 MB L2 while the B panels (147 KB each) stream past it. A guess,
/// never measured.
const MC: usize = 128;
/// Columns of B per block packed during the product (B given as a matrix), as in `bf16.rs`.
const NC: usize = 4096;
/// Bytes between rows of the C scratch block, and between pair rows of a B panel.
const ROW_BYTES: usize = NR * 4;

const _: () = assert!(NR == 32, "a B panel must be two tiles of 16 columns");

/// A tile configuration as `ldtilecfg` reads it: 64 bytes, 64-byte aligned. Byte 0 is the
/// palette, byte 1 the start row, bytes 16 + 2t the bytes per row of tile t (little-endian
/// u16), byte 48 + t its rows; everything else reserved and zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct TileConfig(pub(crate) [u8; 64]);

impl TileConfig {
    /// Palette 1 with tile t holding `shapes[t] = (rows, bytes per row)`; `(0, 0)` leaves it
    /// unconfigured.
    pub(crate) const fn palette1(shapes: [(u8, u16); 8]) -> TileConfig {
        let mut b = [0u8; 64];
        b[0] = 1;
        let mut t = 0;
        while t < 8 {
            let (rows, colsb) = shapes[t];
            let le = colsb.to_le_bytes();
            b[16 + 2 * t] = le[0];
            b[17 + 2 * t] = le[1];
            b[48 + t] = rows;
            t += 1;
        }
        TileConfig(b)
    }
}

/// Every tile 16 rows of 64 bytes: the only configuration the product uses.
const GEMM_CONFIG: TileConfig = TileConfig::palette1([(16, 64); 8]);

/// The tile instructions the product uses, one method each, tile registers named by const
/// parameters (the hardware encodes them in the instruction).
///
/// # Safety
///
/// Every method but `new` is unsafe. For [`Hw`], the instructions run: AMX must be usable here
/// ([`hardware`] said so), a configuration loaded on this thread (`config`) before any other
/// method but `release`, every tile used must be configured and `dpbf16` shapes compatible
/// (else #UD, which kills the process). For both, `load` and `store` access `rows` rows of
/// `colsb` bytes (the tile's configuration) at `base + r * stride`, which must be valid to read
/// (load) or write (store) and not otherwise borrowed for the duration.
pub(crate) trait Tiles {
    fn new() -> Self;
    /// `ldtilecfg`: load `cfg` and zero every tile.
    unsafe fn config(&mut self, cfg: &TileConfig);
    /// `tilezero tmmT`.
    unsafe fn zero<const T: u8>(&mut self);
    /// `tileloadd tmmT, [base + stride]`: the configured rows, zero beyond.
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize);
    /// `tilestored [base + stride], tmmT`: the configured rows and bytes, nothing else.
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize);
    /// `tdpbf16ps tmmD, tmmA, tmmB`.
    unsafe fn dpbf16<const D: u8, const A: u8, const B: u8>(&mut self);
    /// `tilerelease`: back to the initial state (no configuration, tiles zero), so that the
    /// OS need not save 8 KB of tiles on every context switch of this thread.
    unsafe fn release(&mut self);
}

#[cfg(target_arch = "x86_64")]
mod hw {
    //! Each method is one instruction in `asm!`, Intel syntax (Rust's default; destination
    //! first, as in the SDM). Options: `nostack` (nothing is pushed) and `preserves_flags` (no
    //! tile instruction writes RFLAGS). None is `nomem` or `readonly`: the compiler then keeps
    //! them in program order and orders each against keel's own reads and writes of the
    //! buffers the tiles move to and from. The instructions that write tile state declare all
    //! eight tile registers clobbered. keel's Rust code never holds values in them (LLVM
    //! allocates tmm registers only for AMX intrinsics and `__tile1024i`, which keel does not
    //! use, and no keel function enables the `amx-tile` target feature), which is also why the
    //! tiles keep their values from one `asm!` block to the next: nothing else on this thread
    //! touches them, and the OS saves them across context switches once permission is
    //! granted.

    use std::arch::asm;

    use super::{TileConfig, Tiles};

    /// The tile instructions themselves.
    pub(crate) struct Hw;

    impl Tiles for Hw {
        fn new() -> Hw {
            Hw
        }

        unsafe fn config(&mut self, cfg: &TileConfig) {
            // SAFETY: AMX usable (the trait's contract); `cfg` is 64 readable bytes, 64-byte
            // aligned. Operand: the configuration's address; writes every tile (zeroed).
            unsafe {
                asm!(
                    "ldtilecfg [{cfg}]",
                    cfg = in(reg) std::ptr::from_ref(cfg),
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack, preserves_flags),
                )
            }
        }

        unsafe fn zero<const T: u8>(&mut self) {
            const { assert!(T < 8) };
            // SAFETY: a configuration is loaded and tile T configured (the contract). Operand:
            // the tile number, an immediate; writes tile T.
            unsafe {
                asm!(
                    "tilezero tmm{t}",
                    t = const T,
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack, preserves_flags),
                )
            }
        }

        unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
            const { assert!(T < 8) };
            // SAFETY: as for `zero`, and the configured rows at `base + r * stride` are
            // readable (the contract). Operands: base and stride in general registers, the
            // stride as the SIB index with scale 1 (the only form `tileloadd` takes); reads
            // memory, writes tile T.
            unsafe {
                asm!(
                    "tileloadd tmm{t}, [{base} + {stride} * 1]",
                    t = const T,
                    base = in(reg) base,
                    stride = in(reg) stride,
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack, preserves_flags),
                )
            }
        }

        unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
            const { assert!(T < 8) };
            // SAFETY: as for `load`, with the configured rows writable. Operands as for
            // `load`; writes memory, reads tile T only (no clobbers).
            unsafe {
                asm!(
                    "tilestored [{base} + {stride} * 1], tmm{t}",
                    t = const T,
                    base = in(reg) base,
                    stride = in(reg) stride,
                    options(nostack, preserves_flags),
                )
            }
        }

        unsafe fn dpbf16<const D: u8, const A: u8, const B: u8>(&mut self) {
            const { assert!(D < 8 && A < 8 && B < 8 && D != A && D != B && A != B) };
            // SAFETY: a configuration is loaded with compatible shapes for the three tiles
            // (the contract); distinct tiles, checked above. Operands: three tile numbers,
            // immediates (destination, first source, second source); writes tile D.
            unsafe {
                asm!(
                    "tdpbf16ps tmm{d}, tmm{a}, tmm{b}",
                    d = const D,
                    a = const A,
                    b = const B,
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack, preserves_flags),
                )
            }
        }

        unsafe fn release(&mut self) {
            // SAFETY: AMX usable (the contract); `tilerelease` is valid with or without a
            // configuration. No operands; resets every tile.
            unsafe {
                asm!(
                    "tilerelease",
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack, preserves_flags),
                )
            }
        }
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: asks Linux to let this process
    /// use the tile data state (per process, for every thread, present and future). Raw
    /// `syscall`, keel having no libc dependency.
    #[cfg(target_os = "linux")]
    pub(super) fn request_tile_permission() -> Result<(), String> {
        const SYS_ARCH_PRCTL: isize = 158;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        let ret: isize;
        // SAFETY: this request only changes which extended states the kernel lets this
        // process use; it reads and writes none of our memory. Operands: the syscall number
        // in rax (the result comes back there), the two arguments in rdi and rsi; `syscall`
        // overwrites rcx (return address) and r11 (saved RFLAGS), declared, and Linux
        // preserves every other register. Flags are not preserved (no `preserves_flags`).
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            )
        };
        match ret {
            0 => Ok(()),
            -22 => Err(
                "Linux refused the tile state: arch_prctl(ARCH_REQ_XCOMP_PERM) gave \
                        EINVAL (a kernel older than 5.16, or one without AMX support)"
                    .to_string(),
            ),
            -28 => Err(
                "Linux refused the tile state: arch_prctl(ARCH_REQ_XCOMP_PERM) gave \
                        ENOSPC (a signal stack too small for the tile state)"
                    .to_string(),
            ),
            e => Err(format!(
                "Linux refused the tile state: arch_prctl(ARCH_REQ_XCOMP_PERM) gave errno {}",
                -e
            )),
        }
    }
}

/// The tile instructions in plain Rust, from the SDM's pseudocode: palette 1 (8 tiles of up to
/// 16 rows x 64 bytes, start row 0), with the #UD and #GP checks as panics (an error in
/// keel, never in its input).
#[derive(Clone)]
pub(crate) struct Emu {
    /// `(rows, bytes per row)` of each tile; `None` before a configuration is loaded.
    shape: Option<[(usize, usize); 8]>,
    /// Every byte beyond a tile's configured rows and bytes per row is zero.
    tiles: [[[u8; 64]; 16]; 8],
}

/// An f32 below the normal range read as zero of its sign (DAZ).
fn daz(x: f32) -> f32 {
    if x.is_subnormal() {
        0f32.copysign(x)
    } else {
        x
    }
}

/// A result below the normal range flushed to zero of its sign (FTZ).
fn ftz(x: f32) -> f32 {
    daz(x)
}

impl Emu {
    /// `ldtilecfg`, or why it would raise #GP.
    pub(crate) fn try_config(&mut self, cfg: &TileConfig) -> Result<(), String> {
        let b = &cfg.0;
        match b[0] {
            0 => {
                *self = Emu::new();
                return Ok(());
            }
            1 => {}
            p => return Err(format!("palette {p} (only 0 and 1 exist)")),
        }
        if b[1] != 0 {
            return Err("a start row other than 0 (not modelled)".to_string());
        }
        let reserved = b[2..16].iter().chain(&b[32..48]).chain(&b[56..64]);
        if reserved.into_iter().any(|&v| v != 0) {
            return Err("reserved bytes set".to_string());
        }
        let mut shape = [(0, 0); 8];
        for (t, s) in shape.iter_mut().enumerate() {
            let colsb = usize::from(u16::from_le_bytes([b[16 + 2 * t], b[17 + 2 * t]]));
            let rows = usize::from(b[48 + t]);
            if rows > 16 || colsb > 64 || (rows == 0) != (colsb == 0) {
                return Err(format!("tile {t}: {rows} rows of {colsb} bytes"));
            }
            *s = (rows, colsb);
        }
        *self = Emu {
            shape: Some(shape),
            tiles: [[[0; 64]; 16]; 8],
        };
        Ok(())
    }

    /// `sttilecfg`: the configuration loaded, all zero when none is.
    #[cfg(test)]
    fn stored_config(&self) -> TileConfig {
        match self.shape {
            None => TileConfig([0; 64]),
            Some(shape) => TileConfig::palette1(shape.map(|(r, c)| (r as u8, c as u16))),
        }
    }

    /// Tile t's bytes, for tests.
    #[cfg(test)]
    fn tile(&self, t: usize) -> &[[u8; 64]; 16] {
        &self.tiles[t]
    }

    /// Tile t's `(rows, bytes per row)`; #UD if there is no configuration or t is not in it.
    fn shape_of(&self, t: u8) -> (usize, usize) {
        let shape = self
            .shape
            .expect("#UD: tile instruction with no tile configuration");
        let (rows, colsb) = shape[usize::from(t)];
        assert!(rows > 0, "#UD: tile {t} is not configured");
        assert!(colsb % 4 == 0, "#UD: tile {t} has {colsb} bytes per row");
        (rows, colsb)
    }

    fn bf16_at(tile: &[[u8; 64]; 16], row: usize, i: usize) -> f32 {
        let h = u16::from_le_bytes([tile[row][2 * i], tile[row][2 * i + 1]]);
        daz(bf16::bf16_to_f32(h))
    }

    fn tdpbf16ps(&mut self, d: u8, a: u8, b: u8) {
        assert!(
            d != a && d != b && a != b,
            "#UD: tdpbf16ps with a tile named twice"
        );
        let (drows, dcolsb) = self.shape_of(d);
        let (arows, acolsb) = self.shape_of(a);
        let (brows, bcolsb) = self.shape_of(b);
        // C = m x n (dst), A = m x k (src1), B = k x n (src2), in f32 elements and pairs.
        let (m, n, k) = (drows, dcolsb / 4, acolsb / 4);
        assert!(
            arows == m && brows == k && bcolsb == dcolsb,
            "#UD: tdpbf16ps shapes {drows}x{dcolsb}, {arows}x{acolsb}, {brows}x{bcolsb}"
        );
        let (ta, tb) = (self.tiles[usize::from(a)], self.tiles[usize::from(b)]);
        // B decoded once: bv[kk][i] is bf16 element i of pair row kk.
        let mut bv = [[0f32; 32]; 16];
        for (kk, row) in bv.iter_mut().enumerate().take(k) {
            for (i, v) in row.iter_mut().enumerate().take(2 * n) {
                *v = Emu::bf16_at(&tb, kk, i);
            }
        }
        let dst = &mut self.tiles[usize::from(d)];
        for (mm, drow) in dst.iter_mut().enumerate().take(m) {
            // The even and the odd products' sums, per column.
            let mut temp = [0f32; 32];
            for (kk, brow) in bv.iter().enumerate().take(k) {
                let (a0, a1) = (
                    Emu::bf16_at(&ta, mm, 2 * kk),
                    Emu::bf16_at(&ta, mm, 2 * kk + 1),
                );
                for nn in 0..n {
                    temp[2 * nn] = ftz(a0.mul_add(brow[2 * nn], temp[2 * nn]));
                    temp[2 * nn + 1] = ftz(a1.mul_add(brow[2 * nn + 1], temp[2 * nn + 1]));
                }
            }
            for nn in 0..n {
                let at = 4 * nn..4 * nn + 4;
                let c = daz(f32::from_le_bytes(drow[at.clone()].try_into().unwrap()));
                let sum = ftz(temp[2 * nn] + temp[2 * nn + 1]);
                drow[at].copy_from_slice(&ftz(c + sum).to_le_bytes());
            }
            drow[dcolsb..].fill(0);
        }
        for drow in &mut dst[m..] {
            drow.fill(0);
        }
    }
}

impl Tiles for Emu {
    fn new() -> Emu {
        Emu {
            shape: None,
            tiles: [[[0; 64]; 16]; 8],
        }
    }

    unsafe fn config(&mut self, cfg: &TileConfig) {
        if let Err(e) = self.try_config(cfg) {
            panic!("#GP: ldtilecfg with {e}");
        }
    }

    unsafe fn zero<const T: u8>(&mut self) {
        self.shape_of(T);
        self.tiles[usize::from(T)] = [[0; 64]; 16];
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape_of(T);
        let tile = &mut self.tiles[usize::from(T)];
        *tile = [[0; 64]; 16];
        for (r, row) in tile.iter_mut().enumerate().take(rows) {
            // SAFETY: the configured rows at `base + r * stride` are readable (the contract),
            // and `row` holds 64 >= colsb bytes.
            unsafe { std::ptr::copy_nonoverlapping(base.add(r * stride), row.as_mut_ptr(), colsb) };
        }
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape_of(T);
        for (r, row) in self.tiles[usize::from(T)].iter().enumerate().take(rows) {
            // SAFETY: the configured rows at `base + r * stride` are writable and not borrowed
            // (the contract); `row` is the emulator's own.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(r * stride), colsb) };
        }
    }

    unsafe fn dpbf16<const D: u8, const A: u8, const B: u8>(&mut self) {
        self.tdpbf16ps(D, A, B);
    }

    unsafe fn release(&mut self) {
        *self = Emu::new();
    }
}

/// Whether [`gemm_amx`] can run here: [`status`] is `Ok`.
pub fn available() -> bool {
    status().is_ok()
}

/// `Ok` if AMX-BF16 is usable in this process, else why not (see the module documentation).
/// Worked out on the first call (the permission request and the self-check), then cached; an
/// invalid `KEEL_ISA` counts as a cap here, the backend reports that error itself.
pub fn status() -> Result<(), String> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    STATUS
        .get_or_init(|| {
            hardware()?;
            self_check()
        })
        .clone()
}

/// Everything [`status`] checks but the self-check: whether [`Hw`]'s instructions can run.
fn hardware() -> Result<(), String> {
    static HARDWARE: OnceLock<Result<(), String>> = OnceLock::new();
    HARDWARE.get_or_init(probe_hardware).clone()
}

#[cfg(not(target_arch = "x86_64"))]
fn probe_hardware() -> Result<(), String> {
    Err(format!(
        "AMX is an x86-64 extension; this is {}",
        std::env::consts::ARCH
    ))
}

#[cfg(target_arch = "x86_64")]
fn probe_hardware() -> Result<(), String> {
    let f = &crate::cpu::machine::get().features;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    if !(f.amx_tile && f.amx_bf16) {
        return Err(format!(
            "this CPU has no AMX-BF16 (CPUID: amx_tile {}, amx_bf16 {})",
            yes_no(f.amx_tile),
            yes_no(f.amx_bf16)
        ));
    }
    if !f.os_amx {
        return Err("the OS does not enable the AMX tile state (XCR0 bits 17 and 18)".to_string());
    }
    if !bf16::available() {
        return Err(
            "AMX's packing needs AVX-512F and AVX512-BF16, with KEEL_ISA not below avx512"
                .to_string(),
        );
    }
    #[cfg(target_os = "linux")]
    {
        hw::request_tile_permission()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("keel asks for the tile state only on Linux (arch_prctl)".to_string())
    }
}

/// Two small odd-shaped products (two row blocks, two column panels, a partial last K step,
/// bias and ReLU, then accumulate and bias) on [`Hw`], which must agree with [`Emu`] and with
/// the reference within the tolerance: catches what the flags cannot (a hypervisor that
/// reports AMX and mishandles it, an error in this file that only the silicon shows).
fn self_check() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let (m, n, k) = (37, 45, 83);
        let mut rng = crate::rng::Rng::new(0x616d78);
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b = rng.uniform_vec(k * n, -1.0, 1.0);
        let bias = rng.uniform_vec(n, -0.5, 0.5);
        let c0 = rng.uniform_vec(m * n, -2.0, 2.0);
        let accumulate = Epilogue {
            bias: Some(&bias),
            relu: false,
            accumulate: true,
        };
        for ep in [Epilogue::new(Some(&bias), true), accumulate] {
            let start = if ep.accumulate {
                c0.clone()
            } else {
                vec![f32::NAN; m * n]
            };
            let (mut hw, mut emu, mut want) = (start.clone(), start.clone(), start);
            gemm_with_tiles::<Hw>(m, n, k, &a, k, &b, n, &mut hw, n, ep, false);
            gemm_with_tiles::<Emu>(m, n, k, &a, k, &b, n, &mut emu, n, ep, false);
            gemm_bf16_reference(m, n, k, &a, k, &b, n, &mut want, n, ep);
            for i in 0..m {
                for j in 0..n {
                    let mut scale = (0..k)
                        .map(|p| {
                            f64::from(to_bf16_f32(a[i * k + p]) * to_bf16_f32(b[p * n + j])).abs()
                        })
                        .sum::<f64>();
                    scale += f64::from(bias[j].abs());
                    if ep.accumulate {
                        scale += f64::from(c0[i * n + j].abs());
                    }
                    let at = i * n + j;
                    let close = |x: f32| {
                        hw[at].is_finite()
                            && (f64::from(hw[at]) - f64::from(x)).abs() <= 1e-5 * scale + 1e-30
                    };
                    if !close(emu[at]) || !close(want[at]) {
                        return Err(format!(
                            "the self-check failed: {m}x{n}x{k} {ep:?}, C[{i},{j}] = {} on the \
                             tiles, {} emulated, {} by the reference",
                            hw[at], emu[at], want[at]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err("AMX is an x86-64 extension".to_string())
    }
}

fn assert_available() {
    if let Err(why) = status() {
        panic!("gemm_amx needs AMX-BF16, not usable here: {why}; check amx::available() first");
    }
}

/// `C[m x n] = epilogue(A[m x k] * B[k x n])` with A and B rounded to bfloat16, on the tile
/// unit; row-major with leading dimensions. The contract of [`bf16::gemm_bf16`]: matches
/// [`gemm_bf16_reference`] within its tolerance, and `parallel` runs it on the rayon pool with
/// results that do not depend on the number of threads.
///
/// # Panics
/// If [`available`] is false, or a slice is too short for its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm_amx(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    assert_available();
    #[cfg(target_arch = "x86_64")]
    gemm_with_tiles::<Hw>(m, n, k, a, lda, b, ldb, c, ldc, ep, parallel);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, n, k, a, lda, b, ldb, c, ldc, ep, parallel);
}

/// [`gemm_amx`] with B packed beforehand by [`PackedBBf16::new`] (the same packed B serves
/// [`bf16::gemm_bf16_packed`]): `n` and `k` are B's.
///
/// # Panics
/// As [`gemm_amx`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_amx_packed(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedBBf16,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    assert_available();
    #[cfg(target_arch = "x86_64")]
    gemm_packed_with_tiles::<Hw>(m, a, lda, b, c, ldc, ep, parallel);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, a, lda, b, c, ldc, ep, parallel);
}

/// Whether [`gemm_amx_pairs`] takes a K of `k`: even, within one K block, and whole tile
/// rows of 16 pairs, so that no tile load reads past a row's `k / 2` pairs (in Winograd's V
/// the next pairs belong to another element; times B's zero padding they would add nothing,
/// unless they held an infinity or a NaN).
pub fn pairs_fit(k: usize) -> bool {
    k > 0 && k <= KC && k.is_multiple_of(2 * TK)
}

/// `C[m x n] = A * B` on one thread, with A already rounded to bfloat16 as pairs in place:
/// row `i` is `a[i * ks .. i * ks + k / 2]`, the layout [`bf16::gemm_bf16_pairs`] reads.
/// Winograd's bf16 input transform writes V this way; the tiles load it straight from there
/// (16 rows `ks` pairs apart) instead of from a packed copy. The rows past the last whole
/// block of 32 are copied, zero-padded. C is written, not accumulated; no bias or ReLU. The
/// products are [`gemm_amx_packed`]'s on the same rounded A, in the same order: identical bits.
///
/// # Panics
/// If [`available`] is false, `!pairs_fit(k)`, `ks < k / 2`, or a slice is too short.
pub fn gemm_amx_pairs(m: usize, a: &[u32], ks: usize, b: &PackedBBf16, c: &mut [f32], ldc: usize) {
    assert_available();
    #[cfg(target_arch = "x86_64")]
    pairs_with_tiles::<Hw>(m, a, ks, b, c, ldc);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, a, ks, b, c, ldc);
}

/// [`gemm_amx_pairs`] on any [`Tiles`].
fn pairs_with_tiles<T: Tiles>(
    m: usize,
    a: &[u32],
    ks: usize,
    b: &PackedBBf16,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (b.k(), b.n());
    assert!(
        pairs_fit(k),
        "gemm_amx_pairs: K = {k} is not a multiple of 32 up to {KC}"
    );
    let kp = bf16::check_pairs("gemm_amx_pairs", m, a, ks, b, c, ldc);
    if m == 0 || n == 0 {
        return;
    }
    let full = m / TM * TM;
    let cp = CPtr(c.as_mut_ptr());
    // SAFETY: this function is reached with `T = Hw` only through `gemm_amx_pairs` (after
    // `status()`) or in the tests after `hardware()`.
    let mut session = unsafe { Session::<T>::start() };
    let mut abuf = A_BUF.take();
    let rest = m - full;
    // The last rows, zero-padded to a block of 32: their own stride, a whole tile row.
    let tail = pairs_mut(&mut abuf, if rest > 0 { TM * kp } else { 0 });
    for r in 0..rest {
        tail[r * kp..][..kp].copy_from_slice(&a[(full + r) * ks..][..kp]);
    }
    tail[rest * kp..].fill(0);
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let bpanels = b.panels(0, jc / NR, nc.div_ceil(NR));
        // SAFETY: the tiles hold GEMM_CONFIG; the whole blocks' rows are `ks` pairs apart
        // in `a`, each with kp (a multiple of 16) pairs, the tail's TM rows kp apart; the
        // B panels are whole; C's m x n (checked above) is this call's alone.
        unsafe {
            if full > 0 {
                macro_kernel(
                    &mut session.0,
                    a,
                    ks,
                    bpanels,
                    kp,
                    full,
                    nc,
                    cp.add(jc),
                    ldc,
                    false,
                    Epilogue::NONE,
                );
            }
            if rest > 0 {
                macro_kernel(
                    &mut session.0,
                    tail,
                    kp,
                    bpanels,
                    kp,
                    rest,
                    nc,
                    cp.add(full * ldc + jc),
                    ldc,
                    false,
                    Epilogue::NONE,
                );
            }
        }
    }
    A_BUF.set(abuf);
}

/// [`gemm_amx`] on any [`Tiles`], after the checks.
#[allow(clippy::too_many_arguments)]
fn gemm_with_tiles<T: Tiles>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    check_operands(m, n, k, a.len(), lda, b.len(), ldb, c.len(), ldc, ep);
    let b = BSrc::Matrix { data: b, ld: ldb };
    product::<T>(m, n, k, a, lda, b, c, ldc, ep, parallel);
}

/// [`gemm_amx_packed`] on any [`Tiles`], after the checks.
#[allow(clippy::too_many_arguments)]
fn gemm_packed_with_tiles<T: Tiles>(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedBBf16,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    let (n, k) = (b.n(), b.k());
    // B's shape is its own: only A, C and the bias can disagree with it.
    check_operands(m, n, k, a.len(), lda, k * n, n, c.len(), ldc, ep);
    let b = BSrc::Packed {
        packed: b,
        first_panel: 0,
    };
    product::<T>(m, n, k, a, lda, b, c, ldc, ep, parallel);
}

/// The product after the checks, split over threads as `bf16.rs` splits it: one task per
/// thread, each on its own rectangle of C (rows in whole blocks of [`TM`], or columns in whole
/// panels when M is small) with its own tile session, so that every element is summed by one
/// task in the same order whatever the number of threads.
#[allow(clippy::too_many_arguments)]
fn product<T: Tiles>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: BSrc,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No products: the reference's epilogue of an empty sum is the definition.
        gemm_bf16_reference(m, n, 0, a, lda, &[], n, c, ldc, ep);
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let cp = CPtr(c.as_mut_ptr());
    if threads == 1 {
        run::<T>(a, lda, m, k, b, n, cp, ldc, ep);
        return;
    }
    let panels = n.div_ceil(NR);
    if m <= MC * threads && panels > 1 {
        let chunks = threads.min(panels);
        let per = panels.div_ceil(chunks) * NR;
        (0..chunks).into_par_iter().for_each(|ch| {
            let j0 = ch * per;
            if j0 >= n {
                return;
            }
            let b = match b {
                BSrc::Matrix { data, ld } => BSrc::Matrix {
                    data: &data[j0..],
                    ld,
                },
                BSrc::Packed {
                    packed,
                    first_panel,
                } => BSrc::Packed {
                    packed,
                    first_panel: first_panel + j0 / NR,
                },
            };
            let ep = Epilogue {
                bias: ep.bias.map(|bias| &bias[j0..]),
                ..ep
            };
            // SAFETY: column j0 < n is inside C's first row; this task writes only columns
            // j0..j0+per of C's rows.
            let c = unsafe { cp.add(j0) };
            run::<T>(a, lda, m, k, b, per.min(n - j0), c, ldc, ep);
        });
    } else {
        let per = m.div_ceil(TM).div_ceil(threads) * TM;
        (0..threads).into_par_iter().for_each(|t| {
            let i0 = t * per;
            if i0 >= m {
                return;
            }
            // SAFETY: row i0 < m is inside C; this task writes only rows i0..i0+per.
            let c = unsafe { cp.add(i0 * ldc) };
            run::<T>(&a[i0 * lda..], lda, per.min(m - i0), k, b, n, c, ldc, ep);
        });
    }
}

thread_local! {
    /// This thread's packed A block, reused from call to call.
    static A_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// This thread's packed B block, reused from call to call.
    static B_BUF: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// A tile session: the configuration loaded on this thread, released when dropped (also when
/// unwinding), so that no thread is left holding the tile state. The tiles are per thread, and
/// a session makes no rayon call, so no other task can be run on this thread (work stealing
/// happens only inside rayon calls) and overwrite them midway.
struct Session<T: Tiles>(T);

impl<T: Tiles> Session<T> {
    /// # Safety
    /// As [`Tiles::config`].
    unsafe fn start() -> Session<T> {
        let mut tiles = T::new();
        // SAFETY: the caller's.
        unsafe { tiles.config(&GEMM_CONFIG) };
        Session(tiles)
    }
}

impl<T: Tiles> Drop for Session<T> {
    fn drop(&mut self) {
        // SAFETY: a session exists only after `start`, whose caller vouched for AMX.
        unsafe { self.0.release() };
    }
}

/// The 32 x 32 block of C in memory, where the tiles load it from and store it to.
#[repr(C, align(64))]
struct CBlock([f32; TM * NR]);

/// The loop nest for `m` rows of A (from `a`'s start) and columns `0..n` of B and of C at `c`,
/// on this thread, in one tile session.
#[allow(clippy::too_many_arguments)]
fn run<T: Tiles>(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    b: BSrc,
    n: usize,
    c: CPtr,
    ldc: usize,
    ep: Epilogue,
) {
    // SAFETY: `run` is reached with `T = Hw` only through `gemm_amx`, `gemm_amx_packed` (both
    // after `status()`), the self-check and the `hw_` tests (both after `hardware()`).
    let mut session = unsafe { Session::<T>::start() };
    let mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(TM).max(TM);
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2);
            let last = pc + kc == k;
            let mut bbuf = B_BUF.take();
            let bpanels: &[u32] = match b {
                BSrc::Packed {
                    packed,
                    first_panel,
                } => packed.panels(pc, first_panel + jc / NR, panels),
                BSrc::Matrix { data, ld } => {
                    let dst = pairs_mut(&mut bbuf, panels * kp * NR);
                    pack_b(&data[pc * ld + jc..], ld, nc, kc, panels, dst);
                    dst
                }
            };
            let mut abuf = A_BUF.take();
            for ic in (0..m).step_by(mc) {
                let mcb = mc.min(m - ic);
                let ks = a_stride(kp);
                let apanel = pairs_mut(&mut abuf, a_rows(mcb) * ks);
                pack_a(&a[ic * lda + pc..], lda, mcb, kc, apanel);
                let bias = ep.bias.filter(|_| last).map(|b| &b[jc..]);
                // SAFETY: rows ic..ic+mcb and columns jc..jc+nc are inside this task's
                // rectangle of C, which only this task writes; the packed blocks have the
                // sizes `macro_kernel` needs, and the bias (n values from this task's first
                // column) covers them.
                unsafe {
                    macro_kernel(
                        &mut session.0,
                        apanel,
                        ks,
                        bpanels,
                        kp,
                        mcb,
                        nc,
                        c.add(ic * ldc + jc),
                        ldc,
                        pc > 0 || ep.accumulate,
                        Epilogue::new(bias, last && ep.relu),
                    )
                };
            }
            A_BUF.set(abuf);
            B_BUF.set(bbuf);
        }
    }
}

/// The blocks of C over one packed A block (`mc` rows) and the B panels covering `nc`
/// columns of C at `c`. `load_c` starts the sums from what C holds (`ep.accumulate` is not
/// read); `ep`'s bias (from C's first column here) and ReLU are set on the last K block only.
///
/// # Safety
/// `tiles` holds [`GEMM_CONFIG`] on this thread (for [`Hw`]: AMX usable); `c` points to `mc`
/// rows of `nc` writable floats, `ldc` apart, that no other thread touches; `apanel` holds
/// `mc` rounded up to 32 rows, row `r` at `r * ks`, each with `kp` rounded up to 16 pairs
/// readable from there and zero past `kp` (packed A: `a_rows(mc)` rows of `a_stride(kp)`;
/// pairs in place: `kp` a multiple of 16, whole blocks of 32 rows); `bpanels` holds
/// `nc.div_ceil(NR)` panels of `kp * NR`; `ep.bias`, if any, has at least `nc` values.
#[allow(clippy::too_many_arguments)]
unsafe fn macro_kernel<T: Tiles>(
    tiles: &mut T,
    apanel: &[u32],
    ks: usize,
    bpanels: &[u32],
    kp: usize,
    mc: usize,
    nc: usize,
    c: CPtr,
    ldc: usize,
    load_c: bool,
    ep: Epilogue,
) {
    let mut cblock = CBlock([0.0; TM * NR]);
    // The last partial step's pair rows, zero past the panel: 16 rows of NR pairs.
    let mut tail = [Line([0; 16]); TK * NR / 16];
    let full = kp / TK * TK;
    for (jp, bp) in bpanels.chunks_exact(kp * NR).enumerate() {
        let j0 = jp * NR;
        let nrb = NR.min(nc - j0);
        if full < kp {
            let t: &mut [u32] = bytemuck::cast_slice_mut(&mut tail);
            t[..(kp - full) * NR].copy_from_slice(&bp[full * NR..]);
            t[(kp - full) * NR..].fill(0);
        }
        for i0 in (0..mc).step_by(TM) {
            let mrb = TM.min(mc - i0);
            // SAFETY: (i0, j0) is inside the caller's mc x nc block of C.
            let ctile = unsafe { c.0.add(i0 * ldc + j0) };
            // SAFETY (for both calls of `block`): the tiles hold GEMM_CONFIG (the caller's);
            // rows i0..i0+32 of the A block exist (the caller's 32-row blocks) with kp rounded
            // up to 16 pairs each; `bp` is a whole panel of kp * NR pairs and `tail` 16 * NR; the
            // C block is either `cblock` (ours) or, when whole, 32 rows of 32 floats of the
            // caller's block of C, `ldc` apart.
            let ab = apanel[i0 * ks..].as_ptr();
            let tailp = bytemuck::cast_slice::<Line, u32>(&tail).as_ptr();
            if mrb == TM && nrb == NR {
                // A whole block goes between the tiles and C directly, with C's row stride,
                // instead of through the scratch block (measured within noise on the Xeon of
                // issue 14's sixth session; the simpler data path). The epilogue, if any, then
                // runs on C.
                unsafe {
                    block(
                        tiles,
                        ab,
                        ks,
                        bp.as_ptr(),
                        kp,
                        tailp,
                        ctile.cast(),
                        ldc * 4,
                        load_c,
                    )
                };
                if ep.bias.is_some() || ep.relu {
                    for r in 0..TM {
                        // SAFETY: row i0 + r < mc holds NR floats from column j0, ours alone.
                        let row = unsafe { std::slice::from_raw_parts_mut(ctile.add(r * ldc), NR) };
                        ep.apply_row(row, j0);
                    }
                }
                continue;
            }
            if load_c {
                cblock.0.fill(0.0);
                for r in 0..mrb {
                    // SAFETY: row i0 + r < mc holds nrb <= nc - j0 floats from column j0.
                    let row = unsafe { std::slice::from_raw_parts(ctile.add(r * ldc), nrb) };
                    cblock.0[r * NR..][..nrb].copy_from_slice(row);
                }
            }
            let cb = cblock.0.as_mut_ptr().cast::<u8>();
            unsafe { block(tiles, ab, ks, bp.as_ptr(), kp, tailp, cb, ROW_BYTES, load_c) };
            for r in 0..mrb {
                let row = &mut cblock.0[r * NR..][..nrb];
                ep.apply_row(row, j0);
                // SAFETY: row i0 + r < mc holds nrb <= nc - j0 floats from column j0, ours.
                let dst = unsafe { std::slice::from_raw_parts_mut(ctile.add(r * ldc), nrb) };
                dst.copy_from_slice(row);
            }
        }
    }
}

/// One 32 x 32 block of C over `kp` pairs: the tiles start from the block at `c` (rows
/// `c_stride` bytes apart; `load_c`) or zero, and end stored there.
///
/// # Safety
/// `tiles` holds [`GEMM_CONFIG`] on this thread (for [`Hw`]: AMX usable); `a` points to 32 rows
/// `ks` pairs apart, each with at least `kp` rounded up to 16 pairs, zero past `kp`; `b` to a B
/// panel of `kp * NR` pairs; `tail` to `16 * NR` pairs: the panel's pair rows from
/// `kp / 16 * 16` on, then zeros; `c` to 32 rows of 32 floats, `c_stride` bytes apart, readable
/// and writable and touched by nobody else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Tiles>(
    tiles: &mut T,
    a: *const u32,
    ks: usize,
    b: *const u32,
    kp: usize,
    tail: *const u32,
    c: *mut u8,
    c_stride: usize,
    load_c: bool,
) {
    let a_bytes = ks * 4;
    // SAFETY: every load reads 16 rows of 64 bytes: of C at rows 0/16 and byte 0/64 of the
    // 32 rows of 128 bytes; of A at rows 0/16 and pairs kk..kk+16 (within each row's padded
    // pairs); of B at pair rows kk..kk+16 and byte 0/64 of a 128-byte row, inside the panel
    // when kk + 16 <= kp, else inside `tail`. Stores write the C block likewise.
    unsafe {
        let c1 = c.add(64);
        let c2 = c.add(16 * c_stride);
        let c3 = c.add(16 * c_stride + 64);
        if load_c {
            tiles.load::<0>(c, c_stride);
            tiles.load::<1>(c1, c_stride);
            tiles.load::<2>(c2, c_stride);
            tiles.load::<3>(c3, c_stride);
        } else {
            tiles.zero::<0>();
            tiles.zero::<1>();
            tiles.zero::<2>();
            tiles.zero::<3>();
        }
        for kk in (0..kp).step_by(TK) {
            let bk = if kk + TK <= kp { b.add(kk * NR) } else { tail };
            tiles.load::<4>(a.add(kk).cast(), a_bytes);
            tiles.load::<5>(a.add(16 * ks + kk).cast(), a_bytes);
            tiles.load::<6>(bk.cast(), ROW_BYTES);
            tiles.load::<7>(bk.add(16).cast(), ROW_BYTES);
            tiles.dpbf16::<0, 4, 6>();
            tiles.dpbf16::<1, 4, 7>();
            tiles.dpbf16::<2, 5, 6>();
            tiles.dpbf16::<3, 5, 7>();
        }
        tiles.store::<0>(c, c_stride);
        tiles.store::<1>(c1, c_stride);
        tiles.store::<2>(c2, c_stride);
        tiles.store::<3>(c3, c_stride);
    }
}

/// Pairs between the starts of two rows of packed A: `bf16.rs`'s `a_stride` (the same packing
/// code writes them), a multiple of 16 pairs, so that every 16-pair tile row is inside it.
fn a_stride(kp: usize) -> usize {
    kp.next_multiple_of(16) + 16
}

/// Rows of a packed A block of `rows` rows: padded to whole blocks of C, and to what
/// `bf16.rs`'s packing writes (whole panels of its 12 rows).
fn a_rows(rows: usize) -> usize {
    rows.next_multiple_of(TM)
        .max(rows.div_ceil(bf16::MR) * bf16::MR)
}

/// Round and pack `rows` rows and `kc` columns of row-major `a` into `dst`: row `r` at
/// `r * a_stride(kp)`, `(A[r][2p], A[r][2p+1])`, zero past `kc` and past `rows`. With AVX-512F
/// `bf16.rs`'s packing (what [`Hw`] always gets); without it a scalar one with the same result,
/// so that the emulated product runs on any machine.
fn pack_a(a: &[f32], lda: usize, rows: usize, kc: usize, dst: &mut [u32]) {
    let ks = a_stride(kc.div_ceil(2));
    assert_eq!(dst.len(), a_rows(rows) * ks);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let written = rows.div_ceil(bf16::MR) * bf16::MR * ks;
        // SAFETY: AVX-512F, checked just above.
        unsafe { bf16::x86::pack_a(a, lda, rows, kc, &mut dst[..written]) };
        dst[written..].fill(0);
        return;
    }
    pack_a_scalar(a, lda, rows, kc, dst);
}

fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(round_bf16(lo)) | u32::from(round_bf16(hi)) << 16
}

fn pack_a_scalar(a: &[f32], lda: usize, rows: usize, kc: usize, dst: &mut [u32]) {
    let ks = a_stride(kc.div_ceil(2));
    for (r, out) in dst.chunks_exact_mut(ks).enumerate() {
        for (p, v) in out.iter_mut().enumerate() {
            let at = |col: usize| {
                if r < rows && col < kc {
                    a[r * lda + col]
                } else {
                    0.0
                }
            };
            *v = pair(at(2 * p), at(2 * p + 1));
        }
    }
}

/// Round and pack `kc` rows and `n` columns of row-major `b` into `panels` panels of [`NR`]
/// columns: the layout of [`PackedBBf16`], by `bf16.rs`'s code with AVX-512F, else by a scalar
/// one with the same result.
fn pack_b(b: &[f32], ldb: usize, n: usize, kc: usize, panels: usize, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F, checked just above.
        unsafe { bf16::x86::pack_b(b, ldb, n, kc, panels, dst) };
        return;
    }
    pack_b_scalar(b, ldb, n, kc, panels, dst);
}

fn pack_b_scalar(b: &[f32], ldb: usize, n: usize, kc: usize, panels: usize, dst: &mut [u32]) {
    let kp = kc.div_ceil(2);
    assert_eq!(dst.len(), panels * kp * NR);
    for (i, v) in dst.iter_mut().enumerate() {
        let (q, p, jj) = (i / (kp * NR), i / NR % kp, i % NR);
        let j = q * NR + jj;
        let at = |row: usize| {
            if row < kc && j < n {
                b[row * ldb + j]
            } else {
                0.0
            }
        };
        *v = pair(at(2 * p), at(2 * p + 1));
    }
}

#[cfg(test)]
mod tests {
    //! The emulator against hand-computed cases, the whole product on the emulator against the
    //! reference (within `bf16.rs`'s tolerance) and against a scalar model of the SDM's
    //! sequence of operations (bit for bit); and, where AMX runs, the instructions and the
    //! product on the tiles against the emulator.

    use super::*;
    use crate::cpu::gemm::bf16_cases::{Case, epilogues};
    use crate::rng::Rng;

    /// Whether a test of the real tile instructions must be skipped here, with the line saying
    /// so.
    #[cfg(target_arch = "x86_64")]
    fn skip_hw(test: &str) -> bool {
        match hardware() {
            Ok(()) => false,
            Err(why) => {
                eprintln!("SKIP {test}: AMX cannot run here: {why}");
                true
            }
        }
    }

    fn bf(x: f32) -> u16 {
        round_bf16(x)
    }

    /// Tile rows as bytes: 16-bit values little-endian, side by side.
    fn bytes16(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// C (2x2) += A (2x4) * B (4x2), one `tdpbf16ps` on tiles configured to those shapes:
    /// returns the stored C rows (8 bytes each, stride 8) and what a store with stride 16 left
    /// of a sentinel-filled buffer.
    fn two_by_two<T: Tiles>() -> (Vec<f32>, Vec<u8>) {
        // dst: 2 rows of 2 f32; src1: 2 rows of 2 pairs; src2: 2 pair rows of 2 columns.
        let cfg = TileConfig::palette1([
            (2, 8),
            (2, 8),
            (2, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let a = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]];
        let b = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
        let src1: Vec<u16> = a.iter().flatten().map(|&v| bf(v)).collect();
        // Pair row p: (B[2p][0], B[2p+1][0]), (B[2p][1], B[2p+1][1]).
        let src2: Vec<u16> = (0..2)
            .flat_map(|p| (0..2).flat_map(move |j| [bf(b[2 * p][j]), bf(b[2 * p + 1][j])]))
            .collect();
        let c: Vec<u8> = [0.5f32, -1.0, 100.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (src1, src2) = (bytes16(&src1), bytes16(&src2));
        let mut out = vec![0u8; 16];
        let mut sentinel = vec![0xaau8; 40];
        let mut t = T::new();
        // SAFETY: only reached with Hw after `hardware()` said yes; every buffer holds the
        // configured 2 rows of 8 bytes at its stride.
        unsafe {
            t.config(&cfg);
            t.load::<0>(c.as_ptr(), 8);
            t.load::<1>(src1.as_ptr(), 8);
            t.load::<2>(src2.as_ptr(), 8);
            t.dpbf16::<0, 1, 2>();
            t.store::<0>(out.as_mut_ptr(), 8);
            t.store::<0>(sentinel.as_mut_ptr(), 16);
            t.release();
        }
        (f32s(&out), sentinel)
    }

    /// One `tdpbf16ps` on 1 x 1 tiles over `pairs` (A's pairs, B's column all ones) added to
    /// `c`.
    fn one_by_one<T: Tiles>(c: f32, pairs: &[(f32, f32)], b: &[(f32, f32)]) -> f32 {
        let k = pairs.len() as u16;
        let cfg = TileConfig::palette1([
            (1, 4),
            (1, 4 * k),
            (k as u8, 4),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        let src1: Vec<u16> = pairs.iter().flat_map(|&(x, y)| [bf(x), bf(y)]).collect();
        let src2: Vec<u16> = b.iter().flat_map(|&(x, y)| [bf(x), bf(y)]).collect();
        let (src1, src2) = (bytes16(&src1), bytes16(&src2));
        let mut out = c.to_le_bytes();
        let mut t = T::new();
        // SAFETY: as in `two_by_two`; one row of 4 or 4k bytes, k rows of 4 bytes.
        unsafe {
            t.config(&cfg);
            t.load::<0>(out.as_ptr(), 4);
            t.load::<1>(src1.as_ptr(), 4 * usize::from(k));
            t.load::<2>(src2.as_ptr(), 4);
            t.dpbf16::<0, 1, 2>();
            t.store::<0>(out.as_mut_ptr(), 4);
            t.release();
        }
        f32::from_le_bytes(out)
    }

    /// The order-sensitive case: A = (2^24, 1, -2^24, 1), B all ones. The SDM's order (even
    /// products 2^24 - 2^24 = 0, odd ones 1 + 1 = 2) gives 2; one running sum (2^24 + 1 rounds
    /// to 2^24) gives 1.
    fn order_case<T: Tiles>() -> f32 {
        let big = 2f32.powi(24);
        one_by_one::<T>(0.0, &[(big, 1.0), (-big, 1.0)], &[(1.0, 1.0), (1.0, 1.0)])
    }

    #[test]
    fn emulator_hand_computed_2x2() {
        let (c, sentinel) = two_by_two::<Emu>();
        // A * B = [[50, 60], [114, 140]], added to [[0.5, -1], [100, 0]].
        assert_eq!(c, [50.5, 59.0, 214.0, 140.0]);
        // A store writes the configured rows and bytes only.
        for (i, &v) in sentinel.iter().enumerate() {
            let inside = i % 16 < 8 && i < 24;
            assert_eq!(v == 0xaa, !inside, "byte {i}");
        }
    }

    #[test]
    fn emulator_follows_the_sdm_order_daz_and_ftz() {
        assert_eq!(order_case::<Emu>(), 2.0);
        // A bfloat16 subnormal input counts as zero (the product would be 2^-27).
        let sub = 2f32.powi(-127);
        assert_eq!(
            one_by_one::<Emu>(0.0, &[(sub, 0.0)], &[(2f32.powi(100), 0.0)]),
            0.0
        );
        // A subnormal product is flushed: 2^-63 * 2^-64 = 2^-127.
        let (x, y) = (2f32.powi(-63), 2f32.powi(-64));
        assert_eq!(one_by_one::<Emu>(0.0, &[(x, 0.0)], &[(y, 0.0)]), 0.0);
        // A subnormal accumulator reads as zero.
        assert_eq!(
            one_by_one::<Emu>(2f32.powi(-130), &[(0.0, 0.0)], &[(1.0, 1.0)]),
            0.0
        );
        // Normal values: 3 + (1 * 2 + 3 * 4).
        assert_eq!(one_by_one::<Emu>(3.0, &[(1.0, 3.0)], &[(2.0, 4.0)]), 17.0);
        // NaN and infinity go through.
        assert!(one_by_one::<Emu>(0.0, &[(f32::NAN, 1.0)], &[(1.0, 1.0)]).is_nan());
        assert_eq!(
            one_by_one::<Emu>(0.0, &[(f32::INFINITY, 1.0)], &[(1.0, 1.0)]),
            f32::INFINITY
        );
    }

    #[test]
    fn tile_config_round_trip() {
        let cfg = TileConfig::palette1([
            (16, 64),
            (1, 4),
            (5, 12),
            (0, 0),
            (16, 64),
            (2, 8),
            (0, 0),
            (9, 40),
        ]);
        // The documented byte layout.
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
        assert_eq!(std::mem::align_of::<TileConfig>(), 64);
        assert_eq!((cfg.0[0], cfg.0[1]), (1, 0));
        assert_eq!(&cfg.0[16..20], &[64, 0, 4, 0]);
        assert_eq!(&cfg.0[48..56], &[16, 1, 5, 0, 16, 2, 0, 9]);
        assert_eq!(GEMM_CONFIG.0[16..32], [64, 0].repeat(8)[..]);
        let mut emu = Emu::new();
        assert_eq!(emu.stored_config(), TileConfig([0; 64]), "unconfigured");
        emu.try_config(&cfg).unwrap();
        assert_eq!(emu.stored_config(), cfg);
        // A load then a store through a 5 x 12-byte tile, strides 20 and 16.
        let src: Vec<u8> = (0..100).collect();
        let mut dst = vec![0xffu8; 80];
        // SAFETY: 5 rows of 12 bytes at stride 20 in 100 bytes, at stride 16 in 80.
        unsafe {
            emu.load::<2>(src.as_ptr(), 20);
            emu.store::<2>(dst.as_mut_ptr(), 16);
        }
        for r in 0..5 {
            assert_eq!(dst[r * 16..][..12], src[r * 20..][..12], "row {r}");
            assert!(dst[r * 16 + 12..][..4].iter().all(|&v| v == 0xff));
        }
        // Beyond the configured rows and bytes the tile reads as zero.
        let tile = emu.tile(2);
        assert!(
            tile[..5]
                .iter()
                .all(|row| row[12..].iter().all(|&v| v == 0))
        );
        assert!(tile[5..].iter().all(|row| row.iter().all(|&v| v == 0)));
        // Loading a configuration zeroes every tile; palette 0 is the initial state.
        emu.try_config(&cfg).unwrap();
        assert!(emu.tile(2).iter().all(|row| row.iter().all(|&v| v == 0)));
        emu.try_config(&TileConfig([0; 64])).unwrap();
        assert_eq!(emu.stored_config(), TileConfig([0; 64]));
        // What ldtilecfg rejects (#GP).
        let bad = |edit: &dyn Fn(&mut [u8; 64])| {
            let mut c = cfg;
            edit(&mut c.0);
            Emu::new().try_config(&c).is_err()
        };
        assert!(bad(&|b| b[0] = 2), "palette 2");
        assert!(bad(&|b| b[5] = 1), "reserved byte");
        assert!(bad(&|b| b[40] = 1), "reserved colsb of tile 12");
        assert!(bad(&|b| b[48] = 17), "17 rows");
        assert!(bad(&|b| b[16] = 65), "65 bytes per row");
        assert!(bad(&|b| b[51] = 3), "rows without bytes");
        assert!(!bad(&|b| b[49] = 16), "a valid change");
    }

    #[test]
    #[should_panic(expected = "#UD")]
    fn emulator_rejects_mismatched_shapes() {
        let mut emu = Emu::new();
        // src1 has 2 pairs a row, src2 3 pair rows.
        let cfg = TileConfig::palette1([
            (2, 8),
            (2, 8),
            (3, 8),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        emu.try_config(&cfg).unwrap();
        // SAFETY: the emulator touches no memory here.
        unsafe { emu.dpbf16::<0, 1, 2>() };
    }

    impl Case {
        fn on<T: Tiles>(&self, ep: Epilogue, parallel: bool) -> Vec<f32> {
            let mut c = self.c_start(ep);
            gemm_with_tiles::<T>(
                self.m, self.n, self.k, &self.a, self.lda, &self.b, self.ldb, &mut c, self.ldc, ep,
                parallel,
            );
            c
        }
    }

    const DIMS: [usize; 6] = [1, 3, 17, 33, 63, 100];

    /// Several K blocks with an odd last one, a column split when parallel (small m, wide n),
    /// N past NC, M past MC and not a multiple of 32.
    const BIG: [(usize, usize, usize); 6] = [
        (197, 131, 301),
        (40, 70, KC + 13),
        (19, 37, 2 * KC + 1),
        (20, 300, 700),
        (13, 4200, 37),
        (290, 40, 20),
    ];

    #[test]
    fn emulated_product_matches_the_reference() {
        let mut shapes = Vec::new();
        for m in DIMS {
            for n in DIMS {
                for k in DIMS {
                    shapes.push((m, n, k));
                }
            }
        }
        shapes.extend(BIG);
        let mut worst = 0f64;
        for (s, (m, n, k)) in shapes.into_iter().enumerate() {
            let case = Case::new(m, n, k, s % 3, 5000 + s as u64);
            for ep in epilogues(&case.bias) {
                let want = case.reference(ep);
                for parallel in [false, true] {
                    let got = case.on::<Emu>(ep, parallel);
                    let what = format!("{m}x{n}x{k} parallel={parallel} {ep:?}");
                    worst = worst.max(case.check(&got, &want, ep, &what));
                }
            }
        }
        eprintln!("emulated AMX vs reference: largest |error| / S = {worst:.3e} (tolerance 1e-5)");
    }

    /// The product's exact sequence of operations per the SDM, in scalar f32: per K block,
    /// per step of 16 pairs (zero past K), an even and an odd chain of fused multiply-adds
    /// from zero, their sum added to the running value (from zero, or from C when
    /// accumulating or past the first block), subnormal inputs read as zero and subnormal
    /// results flushed; then the bias and ReLU.
    fn model(case: &Case, ep: Epilogue) -> Vec<f32> {
        let a = |i: usize, p: usize| daz(to_bf16_f32(case.a[i * case.lda + p]));
        let b = |p: usize, j: usize| daz(to_bf16_f32(case.b[p * case.ldb + j]));
        let mut c = case.c_start(ep);
        for i in 0..case.m {
            for j in 0..case.n {
                let at = i * case.ldc + j;
                let mut v = if ep.accumulate { c[at] } else { 0.0 };
                for pc in (0..case.k).step_by(KC) {
                    let kc = KC.min(case.k - pc);
                    for kk in (0..kc.div_ceil(2)).step_by(TK) {
                        let (mut even, mut odd) = (0f32, 0f32);
                        for p in kk..kk + TK {
                            let (e, o) = (pc + 2 * p, pc + 2 * p + 1);
                            let (ae, be) = if 2 * p < kc {
                                (a(i, e), b(e, j))
                            } else {
                                (0.0, 0.0)
                            };
                            let (ao, bo) = if 2 * p + 1 < kc {
                                (a(i, o), b(o, j))
                            } else {
                                (0.0, 0.0)
                            };
                            even = ftz(ae.mul_add(be, even));
                            odd = ftz(ao.mul_add(bo, odd));
                        }
                        v = ftz(daz(v) + ftz(even + odd));
                    }
                }
                if let Some(bias) = ep.bias {
                    v += bias[j];
                }
                if ep.relu && v < 0.0 {
                    v = 0.0;
                }
                c[at] = v;
            }
        }
        c
    }

    /// Bit for bit against [`model`], on data with subnormal values sprinkled in and K
    /// spanning several blocks with an odd last one: pins the driver's addressing, padding,
    /// tail copy and order of operations exactly, not just within the tolerance.
    #[test]
    fn emulated_product_is_bit_exact_against_a_model_of_the_sdm() {
        let mut rng = Rng::new(6);
        for (s, &(m, n, k)) in [
            (5, 3, 1),
            (13, 70, 9),
            (37, 45, KC + 13),
            (100, 33, 513),
            (7, 40, 2 * KC + 3),
            (64, 64, 64),
        ]
        .iter()
        .enumerate()
        {
            let mut case = Case::new(m, n, k, 1, 6000 + s as u64);
            for v in case.a.iter_mut().chain(case.b.iter_mut()) {
                if rng.below(30) == 0 {
                    *v = f32::from_bits(1 + rng.below(0x007f_ffff) as u32);
                }
            }
            for ep in epilogues(&case.bias) {
                let want = model(&case, ep);
                for parallel in [false, true] {
                    let got = case.on::<Emu>(ep, parallel);
                    for i in 0..m {
                        for j in 0..n {
                            let (g, w) = (got[i * case.ldc + j], want[i * case.ldc + j]);
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{m}x{n}x{k} {ep:?}: C[{i},{j}] = {g}, modelled {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// 1, 2 or 3 threads give the same bits, whether the work splits by rows or by columns.
    #[test]
    fn emulated_product_is_identical_across_thread_counts() {
        for (s, &(m, n, k)) in [(300, 64, 700), (20, 300, 700), (37, 33, KC + 13)]
            .iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, 1, 7000 + s as u64);
            let ep = Epilogue::new(Some(&case.bias), true);
            let runs: Vec<Vec<u32>> = [1, 2, 3]
                .into_iter()
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool");
                    let c = pool.install(|| case.on::<Emu>(ep, true));
                    c.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(
                runs[1] == runs[0] && runs[2] == runs[0],
                "{m}x{n}x{k}: results differ between thread counts"
            );
        }
    }

    /// B packed once by `PackedBBf16` gives the same bits as B packed during the product.
    #[test]
    fn packed_b_gives_the_same_bits() {
        if !bf16::available() {
            eprintln!(
                "SKIP packed_b_gives_the_same_bits: PackedBBf16::new needs avx512bf16 (or \
                 KEEL_ISA caps it below avx512)"
            );
            return;
        }
        for (s, &(m, n, k)) in [(1, 1, 1), (17, 63, 100), (20, 300, 700), (97, 131, KC + 13)]
            .iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, 2, 8000 + s as u64);
            let packed = PackedBBf16::new(&case.b, case.ldb, k, n);
            for ep in epilogues(&case.bias) {
                for parallel in [false, true] {
                    let want = case.on::<Emu>(ep, parallel);
                    let mut got = case.c_start(ep);
                    gemm_packed_with_tiles::<Emu>(
                        m, &case.a, case.lda, &packed, &mut got, case.ldc, ep, parallel,
                    );
                    let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{m}x{n}x{k} parallel={parallel}");
                }
            }
        }
    }

    /// A read in place as bf16 pairs (Winograd's V) gives the bits of the packed path on the
    /// same values: whole blocks of 32 rows in place and a ragged rest copied, rows further
    /// apart than their pairs, K of one to several tile rows; on the emulator everywhere, and
    /// on the tiles where AMX runs.
    #[test]
    fn pairs_in_place_give_the_same_bits() {
        if !bf16::available() {
            eprintln!(
                "SKIP pairs_in_place_give_the_same_bits: PackedBBf16::new needs avx512bf16 (or \
                 KEEL_ISA caps it below avx512)"
            );
            return;
        }
        assert!(pairs_fit(32) && pairs_fit(512) && !pairs_fit(48) && !pairs_fit(0));
        for (s, &(m, n, k)) in [
            (1, 1, 32),
            (3, 17, 64),
            (33, 40, 96),
            (63, 65, 32),
            (95, 33, 512),
        ]
        .iter()
        .enumerate()
        {
            let case = Case::new(m, n, k, 3, 9100 + s as u64);
            let packed = PackedBBf16::new(&case.b, case.ldb, k, n);
            let (kp, ks) = (k / 2, k / 2 + 5);
            let mut pairs = vec![u32::MAX; (m - 1) * ks + kp];
            for i in 0..m {
                for p in 0..kp {
                    let at = i * case.lda + 2 * p;
                    pairs[i * ks + p] = pair(case.a[at], case.a[at + 1]);
                }
            }
            let none = Epilogue::NONE;
            let want = {
                let mut c = case.c_start(none);
                gemm_packed_with_tiles::<Emu>(
                    m, &case.a, case.lda, &packed, &mut c, case.ldc, none, false,
                );
                c
            };
            let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let mut got = case.c_start(none);
            pairs_with_tiles::<Emu>(m, &pairs, ks, &packed, &mut got, case.ldc);
            assert_eq!(bits(&got), bits(&want), "emulated {m}x{n}x{k}");
            #[cfg(target_arch = "x86_64")]
            if hardware().is_ok() {
                let mut got = case.c_start(none);
                pairs_with_tiles::<Hw>(m, &pairs, ks, &packed, &mut got, case.ldc);
                let mut hw_want = case.c_start(none);
                gemm_packed_with_tiles::<Hw>(
                    m,
                    &case.a,
                    case.lda,
                    &packed,
                    &mut hw_want,
                    case.ldc,
                    none,
                    false,
                );
                assert_eq!(bits(&got), bits(&hw_want), "tiles {m}x{n}x{k}");
            }
        }
    }

    /// A NaN or infinity in A or B makes the same elements non-finite as in the reference (a
    /// NaN in row i of A: all of row i of C NaN, never a number).
    #[test]
    fn nan_and_infinity_propagate() {
        let (m, n, k) = (40, 40, 30);
        let clean = Case::new(m, n, k, 0, 9);
        for (what, row, col, value) in [
            ("NaN in A", Some((5, 11)), None, f32::NAN),
            ("NaN in B", None, Some((7, 35)), f32::NAN),
            // The first pair row of the second panel: what the first panel's partial last
            // step would read, times A's zero pairs, without its zero-padded copy.
            ("NaN in B past a panel", None, Some((0, 32)), f32::NAN),
            ("infinity in A", Some((33, 0)), None, f32::INFINITY),
            ("-infinity in B", None, Some((29, 39)), f32::NEG_INFINITY),
        ] {
            let mut case = Case::new(m, n, k, 0, 9);
            if let Some((i, p)) = row {
                case.a[i * case.lda + p] = value;
            }
            if let Some((p, j)) = col {
                case.b[p * case.ldb + j] = value;
            }
            let ep = Epilogue::new(Some(&clean.bias), value.is_nan());
            let want = case.reference(ep);
            for parallel in [false, true] {
                let got = case.on::<Emu>(ep, parallel);
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (got[i * case.ldc + j], want[i * case.ldc + j]);
                        let hit =
                            row.is_some_and(|(r, _)| r == i) || col.is_some_and(|(_, c)| c == j);
                        assert_eq!(!w.is_finite(), hit, "{what}: reference C[{i},{j}] = {w}");
                        assert_eq!(g.is_nan(), w.is_nan(), "{what}: C[{i},{j}] = {g}, want {w}");
                        if w.is_infinite() {
                            assert_eq!(g, w, "{what}: C[{i},{j}]");
                        }
                    }
                }
            }
        }
    }

    /// An empty sum is the epilogue of zero; an empty C is left alone.
    #[test]
    fn empty_shapes() {
        let bias = [1.0, -2.0, 3.0];
        let ep = Epilogue {
            bias: Some(&bias),
            relu: true,
            accumulate: true,
        };
        let mut got = vec![0.5f32; 6];
        gemm_with_tiles::<Emu>(2, 3, 0, &[], 0, &[], 3, &mut got, 3, ep, true);
        assert_eq!(got, [1.5, 0.0, 3.5, 1.5, 0.0, 3.5]);
        let mut c = [7f32; 4];
        let none = Epilogue::NONE;
        gemm_with_tiles::<Emu>(0, 4, 5, &[], 5, &[1.0; 20], 4, &mut c, 4, none, true);
        gemm_with_tiles::<Emu>(2, 0, 5, &[1.0; 10], 5, &[], 0, &mut c, 2, none, true);
        assert_eq!(c, [7.0; 4]);
    }

    /// The scalar packing (what the emulated product uses without AVX-512F) writes exactly
    /// what `bf16.rs`'s AVX-512 packing does, on values of every class.
    #[test]
    fn scalar_packing_matches_the_avx512_packing() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                eprintln!("SKIP scalar_packing_matches_the_avx512_packing: no avx512f here");
                return;
            }
            let mut rng = Rng::new(10);
            let mut odd = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| match rng.below(8) {
                        0 => f32::from_bits(rng.next_u64() as u32),
                        1 => f32::from_bits(rng.below(1 << 23) as u32),
                        _ => rng.uniform(-1.0, 1.0),
                    })
                    .collect()
            };
            for (rows, kc, ld) in [
                (1usize, 1usize, 1usize),
                (17, 37, 40),
                (33, 64, 64),
                (5, 301, 303),
            ] {
                assert_eq!(
                    a_stride(kc.div_ceil(2)),
                    bf16::x86::a_stride(kc.div_ceil(2))
                );
                let a = odd(rows * ld);
                let len = a_rows(rows) * a_stride(kc.div_ceil(2));
                let (mut fast, mut slow) = (vec![0xdead_beef; len], vec![0xdead_beef; len]);
                pack_a(&a, ld, rows, kc, &mut fast);
                pack_a_scalar(&a, ld, rows, kc, &mut slow);
                assert_eq!(fast, slow, "A {rows}x{kc}");
                let (n, panels) = (rows, rows.div_ceil(NR));
                let b = odd(kc * ld);
                let len = panels * kc.div_ceil(2) * NR;
                let (mut fast, mut slow) = (vec![0xdead_beef; len], vec![0xdead_beef; len]);
                pack_b(&b, ld, n.min(ld), kc, panels, &mut fast);
                pack_b_scalar(&b, ld, n.min(ld), kc, panels, &mut slow);
                assert_eq!(fast, slow, "B {kc}x{n}");
            }
        }
    }

    /// Here the status says why AMX is unusable, and the rung agrees with it.
    #[test]
    fn status_explains_itself() {
        match status() {
            Ok(()) => assert!(available() && hardware().is_ok()),
            Err(why) => {
                assert!(!available() && !why.is_empty());
                eprintln!("AMX-BF16 not usable here: {why}");
            }
        }
        assert_eq!(
            super::super::Kernel::AmxBf16.available(),
            available(),
            "the rung follows amx::available()"
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn hw_single_instruction_matches_the_emulator() {
        if skip_hw("hw_single_instruction_matches_the_emulator") {
            return;
        }
        assert_eq!(two_by_two::<Hw>(), two_by_two::<Emu>());
        // C, then one pair of A and one of B: normal values, a subnormal input, a subnormal
        // product, a subnormal accumulator.
        let cases = [
            (3.0, (1.0, 3.0), (2.0, 4.0)),
            (0.0, (2f32.powi(-127), 0.0), (2f32.powi(100), 0.0)),
            (0.0, (2f32.powi(-63), 0.0), (2f32.powi(-64), 0.0)),
            (2f32.powi(-130), (0.0, 0.0), (1.0, 1.0)),
        ];
        for (c, a, b) in cases {
            let (hw, emu) = (
                one_by_one::<Hw>(c, &[a], &[b]),
                one_by_one::<Emu>(c, &[a], &[b]),
            );
            assert_eq!(hw.to_bits(), emu.to_bits(), "{c} + {a:?} . {b:?}");
        }
        // Not asserted: which order the silicon sums in (the SDM's gives 2, one running sum 1).
        eprintln!(
            "tdpbf16ps order case: {} on the tiles, {} emulated (SDM order)",
            order_case::<Hw>(),
            order_case::<Emu>()
        );
    }

    /// The whole product on the tiles against the emulator and the reference, on data with
    /// subnormals sprinkled in; how many elements differ in their bits from the emulator is
    /// printed (zero if the emulator models the silicon exactly), the tolerance asserted.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn hw_product_matches_the_emulator_and_the_reference() {
        if skip_hw("hw_product_matches_the_emulator_and_the_reference") {
            return;
        }
        let mut rng = Rng::new(11);
        let (mut differ, mut total) = (0usize, 0usize);
        for (s, &(m, n, k)) in [
            (1, 1, 1),
            (3, 17, 33),
            (37, 45, 83),
            (100, 63, 17),
            (64, 64, 64),
            (40, 70, KC + 13),
            (197, 131, 301),
            (20, 300, 700),
        ]
        .iter()
        .enumerate()
        {
            let mut case = Case::new(m, n, k, 1, 9000 + s as u64);
            for v in case.a.iter_mut().chain(case.b.iter_mut()) {
                if rng.below(50) == 0 {
                    *v = f32::from_bits(1 + rng.below(0x007f_ffff) as u32);
                }
            }
            for ep in epilogues(&case.bias) {
                let want = case.reference(ep);
                let emu = case.on::<Emu>(ep, true);
                for parallel in [false, true] {
                    let hw = case.on::<Hw>(ep, parallel);
                    let what = format!("{m}x{n}x{k} parallel={parallel} {ep:?}");
                    case.check(&hw, &want, ep, &format!("tiles vs reference, {what}"));
                    case.check(&hw, &emu, ep, &format!("tiles vs emulator, {what}"));
                    for i in 0..m {
                        for j in 0..n {
                            let at = i * case.ldc + j;
                            differ += usize::from(hw[at].to_bits() != emu[at].to_bits());
                            total += 1;
                        }
                    }
                }
            }
        }
        eprintln!("tiles vs emulator: {differ} of {total} elements differ in their bits");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn hw_self_check_passes() {
        if skip_hw("hw_self_check_passes") {
            return;
        }
        assert_eq!(self_check(), Ok(()));
        assert_eq!(status(), Ok(()));
    }
}
