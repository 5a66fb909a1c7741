//! Cache blocking (MC, KC, NC) worked out from the machine's caches and FMA rate.
//!
//! Constants tuned by hand on one CPU were wrong on the next, so the block sizes come from an
//! analytical model, in the spirit of Low, Igual, Smith and Quintana-Ortí, "Analytical
//! modeling is enough for high-performance BLIS" (ACM TOMS 43(2), 2016), adapted to keel's
//! loop nest (`driver.rs`) and stated here in full. `keel tune` then measures around it.
//!
//! ```text
//! for jc step NC          B block KC x NC, packed          in L3 (L2 when small enough)
//!   for pc step KC
//!     for ic step MC      A block MC x KC, read in place
//!       for ir step MR    A micro-panel MR x KC            stays in L1 across the jr loop
//!         for jr step NR  B micro-panels KC x NR stream past it, from L2 or L3
//!           micro-kernel  C tile MR x NR in registers, loaded and stored once per K block
//! ```
//!
//! Notation: `e` bytes per element (4 for f32, 2 for bf16), `MR x NR` the register tile, and
//! for cache level i: `S_i` its bytes per thread (an instance's size over the logical CPUs
//! sharing it, since keel runs a thread on each), `W_i` its ways, `w_i = S_i / W_i` the bytes
//! of one way. Ways are the unit, as in Low et al.: under LRU, data that has whole ways of the
//! sets it maps to is not evicted by data streaming through the other ways.
//!
//! **KC: the A micro-panel in L1.** The jr loop runs inside the ir loop, so one A micro-panel
//! meets every B micro-panel of the block in turn: the A micro-panel is what L1 keeps, and
//! each B micro-panel is read from L2 (or L3) once per A micro-panel, whatever KC is. What a
//! deeper KC buys is fewer passes over C (each C tile is loaded and stored once per K block).
//! So KC is as deep as lets the A micro-panel have all of L1's ways but two, which are kept for
//! the B micro-panel and C's tile streaming through:
//!
//! ```text
//! KC = (W1 - 2) * w1 / (MR * e)
//! ```
//!
//! The first version of this model sized KC for the B micro-panel instead: in L1 at full FMA
//! rate, in L2 at half rate, after Low et al., whose loop order (jr outside ir) does reuse the
//! B micro-panel from L1. keel's f32 driver never did. Measured: on a Zen 3 (AVX2 only),
//! KC = 1024 (this rule) against the old rule's 256 ran VGG16's GEMM shapes and 1024^3 15%
//! faster on one thread (geometric mean of medians; 256 was the slowest of 256-1024), and
//! Zen 4's AVX2 kernel had already run up to 13% faster at 512 than at 256. On Zen 4's AVX-512
//! kernel both rules give the hand-tuned 512.
//!
//! KC is then rounded down to a multiple of 8 and clamped to [64, 1024].
//!
//! **MC: the A block in L2.** In this loop order nothing of A is reused across its micro-panels,
//! so MC sets little more than how often the ic loop comes round: measured on Zen 3 at KC =
//! 1024, MC from 36 to 192 lay within the machine's noise. The rule below sizes the block as
//! if it were reused from L2, which bounds it safely. A's `MC x KC` block would be reused by
//! every B micro-panel of the jr loop. Of L2's `W2` ways, B's micro-panels take `ceil(2 KC NR e / w2)` (the current one and
//! the next: they pass through L2 whichever level the kernel reads them from) and C's tiles one;
//! A gets half of the rest:
//!
//! ```text
//! ways_R = ceil(2 * KC * NR * e / w2) + 1        MC = (W2 - ways_R) * w2 / 2 / (KC * e)
//! ```
//!
//! The half is the price of reading A in place instead of packing it: its rows are `KC * e`
//! bytes each, `lda` apart, and do not spread evenly over L2's sets as a packed block does. At
//! VGG's K = 4608 with AVX2's 1 KiB rows, rows 18 KiB apart fall on only half the sets of a
//! 128 KiB way, so those sets hold twice the average share of the block. MC is rounded down to
//! a multiple of MR and clamped to [MR, 1024].
//!
//! **NC: the B block in L3, or in L2 on Intel.** Each thread packs its own `KC x NC` block of
//! B, and every A micro-panel reads all of it, a B micro-panel per tile: `NR * e` bytes each
//! step of k, 10.7 bytes a cycle for the 12x32 tile on two 512-bit FMA pipes. An AMD core's
//! L3, a slice of its own CCX, kept up on the Zen 3 and Zen 4 measured (a Zen 3 ran 15-29%
//! slower with its B block in L2: `docs/cpu-kernels.md`, "Zen 3"); there the block gets half
//! of the thread's share of L3, the other half being for A's rows and C on their way
//! through: `NC = S3 / 2 / (KC * e)`. Intel's server L3 is a mesh shared by every core, and
//! there the block comes from L2: `NC = S2 / 2 / (KC * e)` (the other half for A's
//! micro-panels and C). Either way a multiple of NR in [NR, 8192]. On the Xeon of issue 14's seventh
//! session, NC 8192 -> 288 ran 1024^3 14-16% faster on one and two threads and the N = 512
//! shapes of VGG16 4-7% (4 alternating rounds); N <= 256 fits either way. When K's blocks
//! come out shallower than KC ([`Blocking::kc_for`]) the B block widens to keep its bytes
//! ([`Blocking::nc_for`]), and N is cut into equal blocks ([`Blocking::equal_blocks`]).
//!
//! **What it gives** (f32 unless said; `MC / KC / NC`):
//!
//! | machine | avx512 12x32 | avx2 6x16 | bf16 12x32 (e = 2) |
//! |---|---|---|---|
//! | Zen 4 (a) | 192 / 512 / 4096 | 96 / 1024 / 2048 | 192 / 1024 / 4096 |
//! | Zen 4, hand-tuned | 144 / 512 / 4096 | 120 / 256 / 4096 | |
//! | Zen 3 (b) | | 36 / 1024 / 2048 | |
//! | Emerald Rapids (c) | 240 / 848 / 288 | 222 / 1024 / 256 | 444 / 1024 / 512 |
//! | Xeon guest (d) | 240 / 848 / 288 | 222 / 1024 / 256 | |
//!
//! (a) The EPYC 9R14 VM the constants were tuned on: L1d 32 KiB 8-way, L2 1 MiB 8-way, L3
//! 32 MiB over 2 threads, one 512-bit FMA pipe. (b) An EPYC VM (family 25 model 1): L1d
//! 32 KiB 8-way, L2 512 KiB 8-way, L3 32 MiB over 2 threads, AVX2 only. (c) A thread per
//! core: L1d 48 KiB 12-way, L2 2 MiB 16-way, L3 5 MiB a core, two 512-bit FMA pipes; not
//! measured (no such machine was reachable): `keel tune` there tries half and twice each size.
//! (d) A 2-CPU KVM guest of a Xeon with AMX (issue 14's sixth session): the same L1d and L2,
//! and an L3 reported as 480 MiB shared by 2. With the B block in L3 the model gave NC 8192,
//! and `keel tune` chose 480 / 848 / 8192 at 276 GFLOP/s against the model's 274 (two
//! threads); a KC of 424 ran N >= 512 shapes 5-9% faster and shallower-N ones up to 15%
//! slower: the smaller B block, not the shallower A micro-panel, was the gain (NC 384 at KC
//! 848 gave the same), and the B block moved to L2 (`docs/cpu-kernels.md`).
//!
//! KC reproduces the hand-tuned AVX-512 value, and NC too. AVX2's hand-tuned 256 came from the
//! first model's B-in-L1 rule, not from a sweep; Zen 4 and Zen 3 both ran faster deeper. MC
//! does not reproduce either hand-tuned value, and in this loop order it need not: the tuned
//! values are the small end of a flat region, not a capacity bound (`docs/cpu-kernels.md`
//! records MC from 96 to 288, with KC >= 384, within Zen 4's noise; MC = 96 was slower on one
//! shape, where more row blocks re-read B more often). NC of 8192 against 4096 only matters
//! where N > 4096, which no VGG convolution, forward or backward, has (N is a channel count).
//! On Emerald Rapids the A micro-panel takes 39.75 KiB, 10 of L1's 12 ways. With both
//! hyperthreads of a core busy, each thread has half of every level and KC halves.
//!
//! Measured on the Zen 4 VM (keel's GEMM with forced block sizes on VGG16's shapes and 1024^3,
//! best of 10 to 20 interleaved rounds, one thread, the other core busy): MC of 144, 192 and
//! 384 at KC 512 were within 2% of each other for AVX-512, as were MC 120 and 384 for AVX2; an
//! L1-sized KC of 128 was slower for AVX-512 (up to 20%), and `keel tune` there found KC 1024
//! 8% faster than 512. On the Zen 3 VM (one thread, 3-4 interleaved rounds against OpenBLAS):
//! geometric means of OpenBLAS's time over keel's, medians, 0.971 at KC 256, 1.018 at 512 and
//! 1.115 at 1024 in one run; 1.007, 1.038 and 1.002 for MC 36, 96 and 192 at KC 1024 in
//! another.

use serde::{Deserialize, Serialize};

use super::micro::{Micro, Portable};
#[cfg(target_arch = "aarch64")]
use super::micro_neon::Neon;
#[cfg(target_arch = "x86_64")]
use super::micro_x86::{Avx2, Avx512};
use crate::cpu::isa::Isa;
use crate::cpu::machine::{Cache, Machine};

/// Rows of A per block (MC), depth per block (KC), columns of B per packed block (NC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Blocking {
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
}

impl Blocking {
    /// The depth of the K blocks for a product `k` deep: `kc`, or where that takes more than
    /// one block, equal blocks of at most `kc`. A short remainder block costs a pass over C
    /// (loaded and stored once more) for a fraction of the work. On the Xeon of issue 14's
    /// sixth session (3 alternating rounds, median GFLOP/s against `kc` then the remainder):
    /// 1024^3 (848 + 176 -> 2 x 512) 4.5% faster on one thread and 5% on two, 784x512x4608
    /// 4% on both; 12544x128x1152 (848 + 304 -> 2 x 576) 3.5% slower on two threads (6
    /// rounds); the others within noise. How K is cut never changes a bit of C.
    pub fn kc_for(&self, k: usize) -> usize {
        if k <= self.kc {
            self.kc
        } else {
            k.div_ceil(k.div_ceil(self.kc))
        }
    }

    /// The widest B block for a product `k` deep: NC columns at KC, widened where K's blocks
    /// come out shallower ([`Blocking::kc_for`]), so that the block keeps the bytes the model
    /// gave it. 1024^3 on the Xeon of issue 14's seventh session runs K blocks of 512 instead
    /// of 848: NC 288 becomes 477, three blocks of 352, 352 and 320 columns instead of four.
    pub fn nc_for(&self, k: usize) -> usize {
        self.nc * self.kc / self.kc_for(k).max(1)
    }

    /// The columns of each B block when `n` columns are cut into blocks of at most about
    /// `cap`: all of them, or as few blocks as `cap` allows, of equal widths rounded up to
    /// whole micro-panels of `nr`. Like K's blocks ([`Blocking::kc_for`]): a narrow last
    /// block would pay a pass over A for a few columns.
    pub fn equal_blocks(n: usize, cap: usize, nr: usize) -> usize {
        let nr = nr.max(1);
        if n <= cap {
            n.max(1)
        } else {
            n.div_ceil(n.div_ceil(cap.max(nr))).next_multiple_of(nr)
        }
    }

    /// Whether the driver can run a kernel with an `mr x nr` tile on these block sizes: MC and
    /// NC whole tiles, nothing zero, and bounded so that a damaged tuning file cannot ask for
    /// gigabytes of packing buffer (KC x NC of B, MC x KC of A, 256 MiB of f32 each at most).
    pub fn valid_for(&self, mr: usize, nr: usize) -> bool {
        const MAX_ELEMS: usize = 1 << 26;
        mr > 0
            && nr > 0
            && self.mc >= mr
            && self.mc.is_multiple_of(mr)
            && self.kc > 0
            && self.nc >= nr
            && self.nc.is_multiple_of(nr)
            && self.kc.checked_mul(self.nc).is_some_and(|n| n <= MAX_ELEMS)
            && self.mc.checked_mul(self.kc).is_some_and(|n| n <= MAX_ELEMS)
    }
}

/// One cache level as one thread gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Bytes: an instance's size over the logical CPUs sharing it.
    pub size: usize,
    /// The instance's associativity (a share of a shared cache is modelled as a smaller cache
    /// with the same ways).
    pub ways: usize,
}

impl Level {
    /// A thread's share of `c`, with a keel thread on every logical CPU sharing it.
    pub fn share_of(c: &Cache) -> Level {
        Level {
            size: c.size / c.shared_by.max(1),
            ways: c.ways.max(1),
        }
    }

    /// Bytes of one way, at least one.
    fn way(&self) -> usize {
        (self.size / self.ways.max(1)).max(1)
    }
}

/// The machine as the model sees it: per-thread caches. Tests build it directly to model
/// machines they do not run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub l1: Level,
    pub l2: Level,
    pub l3: Level,
    /// Whether the B block must sit in L2 because L3 cannot feed B's micro-panels at the FMA
    /// rate (see NC in the module documentation): Intel's server cores, where L3 is a
    /// mesh shared by every core.
    pub b_in_l2: bool,
}

impl Geometry {
    /// `m`'s caches, each thread's share.
    pub fn of(m: &Machine) -> Geometry {
        Geometry {
            l1: Level::share_of(&m.l1d),
            l2: Level::share_of(&m.l2),
            l3: Level::share_of(&m.l3),
            b_in_l2: m.vendor == crate::cpu::machine::Vendor::Intel,
        }
    }
}

/// The block sizes of an `mr x nr` kernel over `elem_bytes`-byte elements on `m` ([`solve`] on
/// [`Geometry::of`]).
pub fn model(m: &Machine, mr: usize, nr: usize, elem_bytes: usize) -> Blocking {
    solve(&Geometry::of(m), mr, nr, elem_bytes)
}

/// The model of the module documentation, on any geometry: every result is a nonzero multiple
/// of what the driver needs (MC of `mr`, KC of 8, NC of `nr`), however odd the caches.
pub fn solve(g: &Geometry, mr: usize, nr: usize, elem_bytes: usize) -> Blocking {
    let (mr, nr, e) = (mr.max(1), nr.max(1), elem_bytes.max(1));
    let (w1, w2) = (g.l1.way(), g.l2.way());

    // The A micro-panel gets all of L1's ways but two.
    let kc = g.l1.ways.saturating_sub(2).max(1) * w1 / (mr * e);
    let kc = (kc / 8 * 8).clamp(64, 1024);

    let ways_reserved = (2 * kc * nr * e).div_ceil(w2) + 1;
    let a_bytes = g.l2.ways.saturating_sub(ways_reserved).max(1) * w2 / 2;
    let mc = (a_bytes / (kc * e) / mr * mr).clamp(mr, (1024 / mr).max(1) * mr);

    let home = if g.b_in_l2 { g.l2 } else { g.l3 };
    let nc = (home.size / 2 / (kc * e) / nr * nr).clamp(nr, (8192 / nr).max(1) * nr);

    Blocking { mc, kc, nc }
}

/// `(MR, NR)` of the packed kernel of `isa`: what to hand [`model`]. Another architecture's
/// level answers with the tile its kernel has there.
pub fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Portable => (Portable::MR, Portable::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (Avx2::MR, Avx2::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (Avx512::MR, Avx512::NR),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => (6, 16),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 => (12, 32),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => (Neon::MR, Neon::NR),
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Neon => (6, 16),
    }
}

/// The model's block sizes for the kernel of `isa` on this machine, over f32.
pub fn for_isa(isa: Isa) -> Blocking {
    let (mr, nr) = tile(isa);
    model(crate::cpu::machine::get(), mr, nr, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::machine::Source;

    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;

    #[test]
    fn k_is_cut_into_equal_blocks_of_at_most_kc() {
        let blk = Blocking {
            mc: 240,
            kc: 848,
            nc: 8192,
        };
        assert_eq!(blk.kc_for(1), 848);
        assert_eq!(blk.kc_for(848), 848);
        assert_eq!(blk.kc_for(1024), 512);
        assert_eq!(blk.kc_for(4608), 768);
        for k in [849, 1000, 1697, 2100, 25088] {
            let kc = blk.kc_for(k);
            assert!(kc <= 848, "{k}: {kc}");
            assert_eq!(
                k.div_ceil(kc),
                k.div_ceil(848),
                "{k}: as few blocks as KC gives"
            );
        }
    }

    #[test]
    fn n_is_cut_into_equal_blocks_that_keep_the_b_blocks_bytes() {
        let blk = b(240, 848, 288);
        // One K block: NC as it is.
        assert_eq!(blk.nc_for(576), 288);
        assert_eq!(blk.nc_for(848), 288);
        // K blocks of 512: the block widens to 477 columns, the same bytes.
        assert_eq!(blk.nc_for(1024), 477);
        assert!(512 * blk.nc_for(1024) <= 848 * 288);
        assert_eq!(Blocking::equal_blocks(1024, 477, 32), 352);
        assert_eq!(Blocking::equal_blocks(512, blk.nc_for(4608), 32), 256);
        // At most the cap: one block.
        assert_eq!(Blocking::equal_blocks(100, 288, 32), 100);
        assert_eq!(Blocking::equal_blocks(288, 288, 32), 288);
        for n in [1, 3, 17, 63, 289, 1000, 4097] {
            for cap in [32, 100, 288, 477] {
                let step = Blocking::equal_blocks(n, cap, 32);
                let blocks = n.div_ceil(step);
                assert!(step > 0, "{n} {cap}");
                // No more blocks than the cap gives (rounding up to whole micro-panels
                // can only merge them), none wider than the cap rounded up.
                assert!(blocks <= n.div_ceil(cap.max(32)), "{n} {cap}");
                assert!(step <= cap.max(n.min(32)).next_multiple_of(32), "{n} {cap}");
                assert!(
                    blocks == 1 || step.is_multiple_of(32),
                    "{n} {cap}: whole micro-panels"
                );
                // The last block is the only narrower one, by less than a block's share.
                assert!(n - (blocks - 1) * step <= step, "{n} {cap}");
            }
        }
    }

    fn level(size: usize, ways: usize) -> Level {
        Level { size, ways }
    }

    /// The EPYC 9R14 VM the hand-tuned constants were measured on: sysfs's numbers, L3 shared
    /// by its 2 threads.
    fn zen4() -> Geometry {
        Geometry {
            l1: level(32 * KIB, 8),
            l2: level(MIB, 8),
            l3: level(16 * MIB, 16),
            b_in_l2: false,
        }
    }

    /// The EPYC VM of family 25 model 1 (Zen 3, AVX2 only): L2 half of Zen 4's.
    fn zen3() -> Geometry {
        Geometry {
            l1: level(32 * KIB, 8),
            l2: level(512 * KIB, 8),
            l3: level(16 * MIB, 16),
            b_in_l2: false,
        }
    }

    /// An Emerald Rapids core (Xeon Platinum 8592+: 320 MiB L3 over 64 cores), one thread on
    /// it.
    fn emerald_rapids() -> Geometry {
        Geometry {
            l1: level(48 * KIB, 12),
            l2: level(2 * MIB, 16),
            l3: level(5 * MIB, 15),
            b_in_l2: true,
        }
    }

    fn b(mc: usize, kc: usize, nc: usize) -> Blocking {
        Blocking { mc, kc, nc }
    }

    #[test]
    fn zen4_reproduces_the_hand_tuned_avx512_blocks_but_mc() {
        // AVX-512: the 12-row A micro-panel in 6 of L1's 8 ways. Hand-tuned: 144 / 512 / 4096.
        assert_eq!(solve(&zen4(), 12, 32, 4), b(192, 512, 4096));
        // AVX2's 6 rows go twice as deep (hand-tuned 256 came from the first, B-in-L1 rule).
        assert_eq!(solve(&zen4(), 6, 16, 4), b(96, 1024, 2048));
        // The portable 4 x 16 tile meets the clamp.
        assert_eq!(solve(&zen4(), 4, 16, 4).kc, 1024);
    }

    #[test]
    fn zen3_goes_as_deep_as_measured_fastest() {
        // KC 1024 ran VGG16's shapes fastest of 256..1024 there (module documentation).
        let blk = solve(&zen3(), 6, 16, 4);
        assert_eq!(blk, b(36, 1024, 2048));
        // The A micro-panel: 24 KiB, all of L1's ways but two.
        assert_eq!(blk.kc * 6 * 4, 6 * 4 * KIB);
    }

    #[test]
    fn emerald_rapids_keeps_the_a_micro_panel_in_l1() {
        let g = emerald_rapids();
        let blk = solve(&g, 12, 32, 4);
        assert_eq!(blk, b(240, 848, 288));
        // 39.75 KiB of A in the 10 of 12 ways not kept for streaming.
        let a_panel = blk.kc * 12 * 4;
        assert!(a_panel <= 10 * 4 * KIB, "{a_panel}");
        // The B block in half of L2, not of L3: 848 x 288 floats, 954 KiB.
        assert!(blk.kc * blk.nc * 4 <= MIB);
        assert_eq!(solve(&g, 6, 16, 4), b(222, 1024, 256));
        // The same caches on an AMD core would keep the B block in L3.
        assert_eq!(
            solve(
                &Geometry {
                    b_in_l2: false,
                    ..g
                },
                12,
                32,
                4
            )
            .nc,
            768
        );
        // Both hyperthreads busy: half of every level each, so half the depth.
        let ht = Geometry {
            l1: level(24 * KIB, 12),
            l2: level(MIB, 16),
            l3: level(5 * MIB / 2, 15),
            b_in_l2: true,
        };
        assert_eq!(solve(&ht, 12, 32, 4).kc, 424);
    }

    #[test]
    fn bf16_doubles_the_depth_the_caches_allow() {
        // Twice as many bfloat16 values fit where the f32 ones did, up to the clamp.
        let ht = Geometry {
            l1: level(24 * KIB, 12),
            l2: level(MIB, 16),
            l3: level(5 * MIB / 2, 15),
            b_in_l2: true,
        };
        assert_eq!(solve(&ht, 12, 32, 2).kc, 2 * solve(&ht, 12, 32, 4).kc);
        assert_eq!(solve(&emerald_rapids(), 12, 32, 2), b(444, 1024, 512));
        // On Zen 4 the doubled depth meets the clamp exactly.
        assert_eq!(solve(&zen4(), 12, 32, 2), b(192, 1024, 4096));
    }

    #[test]
    fn absurd_caches_give_clamped_valid_blocks() {
        let weird = [
            Geometry {
                l1: level(1, 1),
                l2: level(1, 1),
                l3: level(0, 1),
                b_in_l2: false,
            },
            Geometry {
                l1: level(KIB, 0),
                l2: level(4 * KIB, 2),
                l3: level(64 * KIB, 0),
                b_in_l2: true,
            },
            Geometry {
                l1: level(1 << 30, 1000),
                l2: level(1 << 40, 1),
                l3: level(1 << 45, 64),
                b_in_l2: false,
            },
            Geometry {
                l1: level(48 * KIB, 12),
                l2: level(2 * MIB, 16),
                l3: level(5 * MIB, 15),
                b_in_l2: true,
            },
        ];
        for g in weird {
            for (mr, nr) in [(4, 16), (6, 16), (12, 32), (14, 32), (1, 1)] {
                for e in [2, 4, 8] {
                    let blk = solve(&g, mr, nr, e);
                    assert!(blk.valid_for(mr, nr), "{g:?} {mr}x{nr}: {blk:?}");
                    assert!(
                        blk.kc.is_multiple_of(8) && (64..=1024).contains(&blk.kc),
                        "{blk:?}"
                    );
                    assert!(blk.mc <= 1024 && blk.nc <= 8192, "{blk:?}");
                }
            }
        }
        assert_eq!(solve(&weird[0], 12, 32, 4), b(12, 64, 32));
        assert_eq!(solve(&weird[2], 12, 32, 4), b(1020, 1024, 8192));
        // Zero elements or tiles count as one rather than dividing by zero.
        assert!(solve(&emerald_rapids(), 0, 0, 0).valid_for(1, 1));
    }

    #[test]
    fn valid_for_rejects_what_the_driver_cannot_run() {
        assert!(b(144, 512, 4096).valid_for(12, 32));
        assert!(b(120, 100, 16).valid_for(6, 16));
        assert!(!b(100, 512, 4096).valid_for(12, 32), "MC not whole tiles");
        assert!(!b(144, 512, 4016).valid_for(12, 32), "NC not whole tiles");
        assert!(!b(0, 512, 4096).valid_for(12, 32));
        assert!(!b(144, 0, 4096).valid_for(12, 32));
        assert!(!b(144, 512, 0).valid_for(12, 32));
        assert!(
            !b(144, 1 << 20, 1 << 20).valid_for(12, 32),
            "terabytes of B"
        );
        assert!(!b(12 << 40, 1 << 30, 32).valid_for(12, 32), "overflow");
    }

    #[test]
    fn tiles_match_the_kernels_and_this_machine_gets_valid_blocks() {
        assert_eq!(tile(Isa::Portable), (4, 16));
        assert_eq!(tile(Isa::Avx2), (6, 16));
        assert_eq!(tile(Isa::Avx512), (12, 32));
        assert_eq!(tile(Isa::Neon), (6, 16));
        for isa in Isa::all_available() {
            let (mr, nr) = tile(isa);
            let blk = for_isa(isa);
            assert!(blk.valid_for(mr, nr), "{isa}: {blk:?}");
            assert_eq!(blk, model(crate::cpu::machine::get(), mr, nr, 4));
        }
    }

    #[test]
    fn geometry_takes_each_threads_share() {
        let mut m = crate::cpu::machine::get().clone();
        let cache = |size, ways, shared_by| Cache {
            size,
            ways,
            line: 64,
            shared_by,
            source: Source::Sysfs,
        };
        m.l1d = cache(48 * KIB, 12, 2);
        m.l2 = cache(2 * MIB, 16, 2);
        m.l3 = cache(320 * MIB, 15, 128);
        let g = Geometry::of(&m);
        assert_eq!((g.l1, g.l2), (level(24 * KIB, 12), level(MIB, 16)));
        assert_eq!(g.l3, level(5 * MIB / 2, 15));
    }
}
