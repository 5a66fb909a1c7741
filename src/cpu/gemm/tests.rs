//! Every rung and ISA path against an f64 reference on random data of odd sizes.
//!
//! Tolerance: each element may differ from the f64 sum by `1e-5 * sum_p |a_ip * b_pj|` (plus
//! 1e-30 so that exact zeros compare). f32 accumulation in any order stays within about
//! `k * 2^-24` of that bound's scale; 1e-5 leaves room for k up to a few hundred blocks while
//! still catching any dropped or doubled term, which would be off by a whole `|a_ip * b_pj|`.

use super::*;
use crate::rng::Rng;

/// (27, 70, 1024) has A's rows 4 KB apart, so the AVX-512 kernel reads a re-strided copy of A;
/// (13, 33, 512) has them 2 KB apart, read in place. Ragged last row panels of 1-4, 5-8 and
/// 9-11 rows (m = 13, 17, 23 and others) take the AVX-512 kernel's 4-, 8- and 12-row tiles.
///
/// (19, 47, 2100) has K blocks after the first, so the tiles that pack B as they read it
/// (`Micro::tile_packing_b`) continue C's sums, and a ragged last column panel packed apart.
const SIZES: [(usize, usize, usize); 13] = [
    (1, 1, 1),
    (3, 5, 7),
    (1, 63, 17),
    (17, 1, 3),
    (13, 33, 63),
    (63, 65, 257),
    (145, 97, 300),
    (31, 513, 17),
    (290, 40, 531),
    (27, 70, 1024),
    (13, 33, 512),
    (23, 17, 9),
    (19, 47, 2100),
];

struct Case {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    fn new(m: usize, n: usize, k: usize, pad: usize, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let (lda, ldb, ldc) = (k + pad, n + pad, n + 2 * pad);
        Case {
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
            a: rng.uniform_vec(m * lda, -1.0, 1.0),
            b: rng.uniform_vec(k * ldb, -1.0, 1.0),
            bias: rng.uniform_vec(n, -0.5, 0.5),
        }
    }

    /// A as the GEMM's row-major source.
    fn matrix_a(&self) -> MatrixA<'_> {
        MatrixA {
            data: &self.a,
            rows: self.m,
            cols: self.k,
            ld: self.lda,
        }
    }

    /// The f64 result and the per-element error scale.
    fn reference(&self, ep: Epilogue) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; self.m * self.n];
        let mut scale = vec![0f64; self.m * self.n];
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut s, mut abs) = (0f64, 0f64);
                for p in 0..self.k {
                    let t = self.a[i * self.lda + p] as f64 * self.b[p * self.ldb + j] as f64;
                    s += t;
                    abs += t.abs();
                }
                if let Some(b) = ep.bias {
                    s += b[j] as f64;
                    abs += (b[j] as f64).abs();
                }
                if ep.relu && s < 0.0 {
                    s = 0.0;
                }
                out[i * self.n + j] = s;
                scale[i * self.n + j] = abs;
            }
        }
        (out, scale)
    }

    fn check(&self, c: &[f32], ep: Epilogue, what: &str) {
        let (want, scale) = self.reference(ep);
        for i in 0..self.m {
            for j in 0..self.n {
                let got = c[i * self.ldc + j];
                let w = want[i * self.n + j];
                let tol = 1e-5 * scale[i * self.n + j] + 1e-30;
                assert!(
                    got.is_finite() && (got as f64 - w).abs() <= tol,
                    "{what} m={} n={} k={}: C[{i},{j}] = {got}, want {w} (tolerance {tol})",
                    self.m,
                    self.n,
                    self.k
                );
            }
        }
    }
}

fn epilogues(bias: &[f32]) -> [Epilogue<'_>; 3] {
    [
        Epilogue::NONE,
        Epilogue::new(Some(bias), false),
        Epilogue::new(Some(bias), true),
    ]
}

#[test]
fn every_available_kernel_matches_the_reference() {
    // The bf16 rung answers to its own reference (bf16.rs's tests): it rounds its operands.
    let kernels: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|k| k.available() && !k.is_bf16())
        .collect();
    assert!(kernels.contains(&Kernel::Packed));
    for (s, &(m, n, k)) in SIZES.iter().enumerate() {
        for pad in [0, 3] {
            let case = Case::new(m, n, k, pad, 100 + s as u64);
            for ep in epilogues(&case.bias) {
                for &kernel in &kernels {
                    for parallel in [false, true] {
                        // C starts as garbage: every element must be written.
                        let mut c = vec![f32::NAN; m * case.ldc];
                        gemm_with(
                            kernel, m, n, k, &case.a, case.lda, &case.b, case.ldb, &mut c,
                            case.ldc, ep, parallel,
                        );
                        case.check(&c, ep, &format!("{kernel} parallel={parallel} {ep:?}"));
                        // Padding between rows of C is left alone.
                        for i in 0..m {
                            assert!(
                                c[i * case.ldc + n..(i + 1) * case.ldc]
                                    .iter()
                                    .all(|v| v.is_nan())
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A C too large for the caches, written in one K block, is streamed to memory a tile row
/// at a time (`driver.rs`): every kernel's result still matches the reference, edges (33
/// columns: a ragged panel) and padding between rows included.
#[test]
fn a_streamed_c_matches_the_reference() {
    let (n, k, pad) = (33, 27, 3);
    let ldc = n + 2 * pad;
    let Some(m) = (10..22)
        .map(|s| (1usize << s) + 7)
        .find(|&m| crate::cpu::stream::worth_streaming(m * ldc * 4))
    else {
        eprintln!("SKIP a_streamed_c_matches_the_reference: this machine streams no C under 32 MB");
        return;
    };
    let case = Case::new(m, n, k, pad, 77);
    for kernel in Kernel::ALL
        .into_iter()
        .filter(|k| k.available() && !k.is_bf16() && !matches!(k, Kernel::Naive | Kernel::Blocked))
    {
        for parallel in [false, true] {
            let ep = Epilogue::new(Some(&case.bias), true);
            let mut c = vec![f32::NAN; m * ldc];
            gemm_with(
                kernel, m, n, k, &case.a, case.lda, &case.b, case.ldb, &mut c, ldc, ep, parallel,
            );
            case.check(&c, ep, &format!("{kernel} streamed, parallel={parallel}"));
            assert!((0..m).all(|i| c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan())));
        }
    }
}

/// Block sizes small enough that the test sizes cross several blocks of every kind: two
/// micro-panels of rows and of columns, 40 steps of k.
fn small_blocks(isa: Isa) -> Blocking {
    let (mr, nr) = blocking::tile(isa);
    Blocking {
        mc: 2 * mr,
        kc: 40,
        nc: 2 * nr,
    }
}

/// Whether two results are the same bit for bit (NaN included).
fn same_bits(x: &[f32], y: &[f32]) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
}

/// B packed beforehand gives the reference's product, and streamed (the same B, with the
/// next panels and blocks asked for on the way) the same bits; with small blocks too, so that
/// the first row of tiles asks for the next block's first panel.
#[test]
fn packed_and_streamed_b_give_the_same_product() {
    for isa in Isa::all_available() {
        let (odd, nr) = (small_blocks(isa), blocking::tile(isa).1);
        for (s, &(m, n, k)) in SIZES.iter().enumerate() {
            let case = Case::new(m, n, k, 0, 200 + s as u64);
            let a = case.matrix_a();
            let ep = Epilogue::new(Some(&case.bias), true);
            for blk in [blocking_for(isa), odd] {
                let packed = PackedB::new(&case.b, case.ldb, k, n, blk.kc_for(k), nr);
                let what = format!("{isa} {m}x{n}x{k} {blk:?}");
                let mut c = vec![f32::NAN; m * case.ldc];
                let b = BSource::Packed(&packed);
                gemm_source_blocked(isa, blk, &a, b, n, &mut c, case.ldc, ep, true);
                case.check(&c, ep, &format!("{what} packed B"));
                // Streamed only adds prefetches: the same bits.
                let mut cs = vec![f32::NAN; m * case.ldc];
                let b = BSource::Streamed(&packed);
                gemm_source_blocked(isa, blk, &a, b, n, &mut cs, case.ldc, ep, true);
                assert!(same_bits(&c, &cs), "{what}: streamed B changed the product");
            }
        }
    }
}

/// The row epilogue (AMX's) gives [`Epilogue::apply`]'s bits on every kind of value: NaN and
/// -0.0 pass the ReLU, negatives become +0.0, on rows of odd lengths from an odd column.
#[test]
fn the_row_epilogue_gives_the_element_epilogues_bits() {
    let mut rng = Rng::new(5);
    let bias = rng.uniform_vec(80, -1.0, 1.0);
    let specials = [
        f32::NAN,
        -0.0,
        0.0,
        -1.5,
        2.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    for len in [1, 3, 17, 63] {
        let mut row = rng.uniform_vec(len, -2.0, 2.0);
        for (v, s) in row.iter_mut().zip(specials.iter().cycle()).step_by(2) {
            *v = *s;
        }
        for (relu, b) in [
            (false, None),
            (true, None),
            (false, Some(&bias[..])),
            (true, Some(&bias[..])),
        ] {
            let ep = Epilogue::new(b, relu);
            let j0 = 7;
            let want: Vec<u32> = row
                .iter()
                .enumerate()
                .map(|(j, &v)| ep.apply(v, j0 + j).to_bits())
                .collect();
            let mut got = row.clone();
            ep.apply_row(&mut got, j0);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "len {len}, relu {relu}, bias {}", b.is_some());
        }
    }
}

#[test]
fn k_zero_gives_the_epilogue_of_zero() {
    let bias = [1.0, -2.0, 3.0];
    let mut c = vec![f32::NAN; 6];
    gemm(
        2,
        3,
        0,
        &[],
        0,
        &[],
        3,
        &mut c,
        3,
        Epilogue::new(Some(&bias), true),
    );
    assert_eq!(c, [1.0, 0.0, 3.0, 1.0, 0.0, 3.0]);
}

#[test]
fn nan_propagates_through_every_kernel() {
    let case = Case::new(20, 40, 30, 0, 7);
    let mut a = case.a.clone();
    a[5 * case.lda + 11] = f32::NAN;
    for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
        let mut c = vec![0f32; 20 * case.ldc];
        let ep = Epilogue::new(Some(&case.bias), true);
        gemm_with(
            kernel, 20, 40, 30, &a, case.lda, &case.b, case.ldb, &mut c, case.ldc, ep, true,
        );
        for i in 0..20 {
            for j in 0..40 {
                assert_eq!(c[i * case.ldc + j].is_nan(), i == 5, "{kernel} C[{i},{j}]");
            }
        }
    }
}

#[test]
fn kernel_names_round_trip() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::parse(k.name()), Some(k));
    }
    assert_eq!(Kernel::parse("fast"), None);
    assert!(Kernel::best().available());
}

/// `C += A * B` on every rung: C starts as the product itself, and ends at twice it (the same
/// tolerance per term, doubled), padding left alone.
#[test]
fn accumulate_adds_to_c_on_every_kernel() {
    for (s, &(m, n, k)) in SIZES.iter().enumerate() {
        let case = Case::new(m, n, k, 2, 300 + s as u64);
        let (want, scale) = case.reference(Epilogue::NONE);
        for kernel in Kernel::ALL
            .into_iter()
            .filter(|k| k.available() && !k.is_bf16())
        {
            for parallel in [false, true] {
                let mut c = vec![f32::NAN; m * case.ldc];
                for i in 0..m {
                    for j in 0..n {
                        c[i * case.ldc + j] = want[i * n + j] as f32;
                    }
                }
                gemm_with(
                    kernel,
                    m,
                    n,
                    k,
                    &case.a,
                    case.lda,
                    &case.b,
                    case.ldb,
                    &mut c,
                    case.ldc,
                    Epilogue::ACCUMULATE,
                    parallel,
                );
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (c[i * case.ldc + j] as f64, 2.0 * want[i * n + j]);
                        let tol = 2e-5 * scale[i * n + j] + 1e-30;
                        assert!(
                            (got - w).abs() <= tol,
                            "{kernel} {m}x{n}x{k} parallel={parallel}: C[{i},{j}] = {got}, want {w}"
                        );
                    }
                    assert!(
                        c[i * case.ldc + n..(i + 1) * case.ldc]
                            .iter()
                            .all(|v| v.is_nan())
                    );
                }
            }
        }
    }
}

#[test]
fn transposed_a_gives_the_product_of_the_transpose() {
    for isa in Isa::all_available() {
        for (s, &(m, n, k)) in SIZES.iter().enumerate() {
            let case = Case::new(m, n, k, 0, 400 + s as u64);
            // A stored transposed: k rows of m, leading dimension m + 5.
            let ld = m + 5;
            let mut at = vec![f32::NAN; k * ld];
            for i in 0..m {
                for p in 0..k {
                    at[p * ld + i] = case.a[i * case.lda + p];
                }
            }
            let a = TransposedA {
                data: &at,
                rows: m,
                cols: k,
                ld,
            };
            let mut c = vec![f32::NAN; m * case.ldc];
            let b = BSource::Matrix {
                data: &case.b,
                ld: case.ldb,
            };
            gemm_source(isa, &a, b, n, &mut c, case.ldc, Epilogue::NONE, true);
            case.check(&c, Epilogue::NONE, &format!("{isa} transposed A"));
        }
    }
}

/// The tile that packs B's panel as it reads B in place gives C's bits exactly as packing
/// first and running the plain tile does, and leaves the panel `pack_b` would: the same
/// FMAs in the same order, from the same values.
fn packing_tile_matches_pack_then_tile<K: micro::Micro>() {
    let mut rng = Rng::new(41);
    let (mr, nr) = (K::MR, K::NR);
    let (ldb, j0, ldc) = (nr + 5, 3, nr + 2);
    for kc in [1, 3, 17, 63, 300] {
        let b = rng.uniform_vec(kc * ldb, -1.0, 1.0);
        let bias = rng.uniform_vec(nr, -1.0, 1.0);
        let mut want_panel = vec![0.0; kc * nr];
        pack::pack_b(&b, ldb, ldb, 0, kc, j0, nr, &mut want_panel);
        for lda in [0, kc + 3] {
            // Packed A (`lda == 0`) or MR rows in place.
            let a = rng.uniform_vec(mr * (kc + 3), -1.0, 1.0);
            for (accumulate, relu) in [(false, false), (true, true)] {
                let c0 = rng.uniform_vec(mr * ldc, -1.0, 1.0);
                let (mut want, mut got) = (c0.clone(), c0);
                let mut panel = vec![f32::NAN; kc * nr];
                // SAFETY: A holds kc values in each of MR rows (packed or `lda` apart), B kc
                // rows of NR floats from column j0 `ldb` apart, the panels kc * NR floats, C
                // MR rows of NR floats `ldc` apart and the bias NR floats.
                unsafe {
                    K::tile(
                        kc,
                        a.as_ptr(),
                        lda,
                        want_panel.as_ptr(),
                        want.as_mut_ptr(),
                        ldc,
                        accumulate,
                        bias.as_ptr(),
                        relu,
                    );
                    K::tile_packing_b(
                        kc,
                        a.as_ptr(),
                        lda,
                        b[j0..].as_ptr(),
                        ldb,
                        panel.as_mut_ptr(),
                        got.as_mut_ptr(),
                        ldc,
                        accumulate,
                        bias.as_ptr(),
                        relu,
                    );
                }
                let what = format!("{} kc {kc} lda {lda} accumulate {accumulate}", K::ISA);
                assert!(panel == want_panel, "{what}: packed panel");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{what}: C");
            }
        }
    }
}

#[test]
fn tiles_that_pack_b_match_packing_first() {
    packing_tile_matches_pack_then_tile::<Portable>();
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx2.available() {
            packing_tile_matches_pack_then_tile::<Avx2>();
        } else {
            eprintln!("SKIPPED: the AVX2 packing tile, this CPU lacks AVX2 and FMA");
        }
        if Isa::Avx512.available() {
            packing_tile_matches_pack_then_tile::<Avx512>();
        } else {
            eprintln!("SKIPPED: the AVX-512 tile (default packing), this CPU lacks AVX-512");
        }
    }
    #[cfg(target_arch = "aarch64")]
    packing_tile_matches_pack_then_tile::<Neon>();
}

/// Block sizes change only speed: small and odd MC, KC and NC (several K blocks, B blocks
/// widened by [`Blocking::nc_for`] and cut equally by [`Blocking::equal_blocks`], ragged
/// last blocks) give the model's blocks' bits exactly, on one thread and on the pool.
#[test]
fn block_sizes_never_change_a_bit_of_c() {
    for isa in Isa::all_available() {
        let (mr, nr) = blocking::tile(isa);
        let odd = [
            Blocking {
                mc: mr,
                kc: 8,
                nc: nr,
            },
            Blocking {
                mc: 3 * mr,
                kc: 40,
                nc: 3 * nr,
            },
            Blocking {
                mc: 5 * mr,
                kc: 136,
                nc: 2 * nr,
            },
        ];
        for (s, &(m, n, k)) in [(37, 161, 300), (13, 97, 17), (64, 3 * nr + 1, 129)]
            .iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, 3, 300 + s as u64);
            let a = case.matrix_a();
            let ep = Epilogue::new(Some(&case.bias), true);
            let b = BSource::Matrix {
                data: &case.b,
                ld: case.ldb,
            };
            let bits = |blk: Blocking, parallel: bool| {
                let mut c = vec![f32::NAN; m * case.ldc];
                gemm_source_blocked(isa, blk, &a, b, n, &mut c, case.ldc, ep, parallel);
                c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let model = bits(blocking_for(isa), false);
            let c: Vec<f32> = model.iter().map(|&v| f32::from_bits(v)).collect();
            case.check(&c, ep, &format!("{isa} model blocks"));
            for blk in odd {
                assert!(blk.valid_for(mr, nr));
                for parallel in [false, true] {
                    assert!(
                        bits(blk, parallel) == model,
                        "{isa} {m}x{n}x{k} {blk:?} parallel={parallel}: other bits"
                    );
                }
            }
        }
    }
}

/// An A that is neither read in place nor packed by the driver's matrix path: it packs on
/// request, like a convolution's gather, and says whether to be gathered row by row.
struct Gathered<'a> {
    a: MatrixA<'a>,
    rows: bool,
}

impl ASource for Gathered<'_> {
    fn rows(&self) -> usize {
        self.a.rows()
    }

    fn cols(&self) -> usize {
        self.a.cols()
    }

    fn pack(&self, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
        self.a.pack(i0, mc, p0, kc, mr, dst);
    }

    fn gathers_rows(&self) -> bool {
        self.rows
    }
}

/// A source gathered row by row and read in place gives the bits of the same source packed
/// into micro-panels: the same values in the same order of k, at every size (ragged panels
/// packed apart), block size and thread count.
#[test]
fn rows_gathered_in_place_give_the_packed_bits() {
    for isa in Isa::all_available() {
        let odd = small_blocks(isa);
        for (s, &(m, n, k)) in SIZES.iter().enumerate() {
            let case = Case::new(m, n, k, 1, 500 + s as u64);
            let ep = Epilogue::new(Some(&case.bias), true);
            let b = BSource::Matrix {
                data: &case.b,
                ld: case.ldb,
            };
            for blk in [blocking_for(isa), odd] {
                for parallel in [false, true] {
                    let run = |rows: bool| {
                        let a = Gathered {
                            a: case.matrix_a(),
                            rows,
                        };
                        let mut c = vec![f32::NAN; m * case.ldc];
                        gemm_source_blocked(isa, blk, &a, b, n, &mut c, case.ldc, ep, parallel);
                        c
                    };
                    let (packed, gathered) = (run(false), run(true));
                    let what = format!("{isa} {m}x{n}x{k} {blk:?} parallel={parallel}");
                    case.check(&gathered, ep, &format!("{what} gathered"));
                    let same = same_bits(&packed, &gathered);
                    assert!(same, "{what}: gathering rows changed the product");
                }
            }
        }
    }
}
