//! Which SIMD instruction set the fast kernels use, chosen once at run time.
//!
//! The binary is built for baseline x86-64 (or whatever the target is) so that it runs
//! everywhere; the AVX2 and AVX-512 kernels are compiled with `#[target_feature]` and only
//! called after [`Isa::available`] has confirmed the CPU has them. `KEEL_ISA=portable|avx2|avx512`
//! caps the choice, to study the rungs or to rule a SIMD path out when chasing a bug. On aarch64
//! the levels are portable and NEON (`KEEL_ISA=neon|portable`).

use std::sync::OnceLock;

/// A SIMD level, from the plain-Rust fallback up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust the compiler vectorizes for the build target (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// 256-bit AVX2 with FMA.
    Avx2,
    /// 512-bit AVX-512F (with FMA and AVX2, which every AVX-512 CPU has).
    Avx512,
    /// 128-bit NEON, part of every aarch64 CPU.
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.available() && std::arch::is_x86_feature_detected!("avx512f"),
            Isa::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Whether code for this level may use AVX2+FMA: it is AVX2 or AVX-512 and the CPU has
    /// AVX2. The kernels without a hand-written AVX-512 version (transforms, direct
    /// convolution, pooling) run their AVX2 build for both. (Comparing levels would count NEON
    /// as above AVX2.)
    pub fn runs_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.available()
    }

    /// Every level this CPU can run, lowest first.
    pub fn all_available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    /// The level the fast kernels use: the best available, capped by `KEEL_ISA` if set.
    pub fn selected() -> Isa {
        static SELECTED: OnceLock<Isa> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let best = Isa::ALL
                .into_iter()
                .rev()
                .find(|i| i.available())
                .unwrap_or(Isa::Portable);
            match std::env::var("KEEL_ISA")
                .ok()
                .as_deref()
                .and_then(Isa::parse)
            {
                Some(cap) => cap.min(best),
                None => best,
            }
        })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
