//! Which SIMD instruction set the fast kernels use, chosen once at run time.
//!
//! The binary is built for baseline x86-64 (or whatever the target is) so that it runs
//! everywhere; the AVX2 and AVX-512 kernels are compiled with `#[target_feature]` and only
//! called after [`Isa::available`] has confirmed the CPU has them. `KEEL_ISA=portable|avx2|avx512`
//! (or `--isa`) caps the choice, to study the rungs or to rule a SIMD path out when chasing a
//! bug. On aarch64 the levels are portable and NEON (`KEEL_ISA=neon|portable`). Levels are
//! ranked only within one architecture's ladder ([`Isa::ladder`]), never by enum order: NEON
//! is not "above" AVX2, and naming another architecture's level is an error.

use crate::error::{Error, Result};

/// A SIMD level, from the plain-Rust fallback up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

    /// This architecture's levels, lowest first.
    pub fn ladder() -> &'static [Isa] {
        if cfg!(target_arch = "x86_64") {
            &[Isa::Portable, Isa::Avx2, Isa::Avx512]
        } else if cfg!(target_arch = "aarch64") {
            &[Isa::Portable, Isa::Neon]
        } else {
            &[Isa::Portable]
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn all_available() -> Vec<Isa> {
        Isa::ladder()
            .iter()
            .copied()
            .filter(|i| i.available())
            .collect()
    }

    /// The best level this CPU can run.
    pub fn best() -> Isa {
        Isa::all_available()
            .last()
            .copied()
            .unwrap_or(Isa::Portable)
    }

    /// The best level this CPU can run at or below `cap` on this architecture's ladder; an
    /// error when `cap` belongs to another architecture.
    pub fn capped(cap: Isa) -> Result<Isa> {
        let ladder = Isa::ladder();
        let top = ladder.iter().position(|&i| i == cap).ok_or_else(|| {
            Error::Invalid(format!(
                "instruction set {cap} does not exist on this {} CPU; its levels are {}",
                std::env::consts::ARCH,
                Isa::names(ladder)
            ))
        })?;
        Ok(ladder[..=top]
            .iter()
            .rev()
            .copied()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable))
    }

    /// Parse a level name and cap it as [`Isa::capped`] does; `what` names the setting in
    /// errors (`KEEL_ISA=`, `--isa `).
    pub fn parse_capped(s: &str, what: &str) -> Result<Isa> {
        let cap = Isa::parse(&s.trim().to_ascii_lowercase()).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown {what}{s}: use one of {}",
                Isa::names(Isa::ladder())
            ))
        })?;
        Isa::capped(cap).map_err(|e| Error::Invalid(format!("{what}{s}: {e}")))
    }

    /// Parse a level name that this CPU must run as it is (no capping): for `--isa`, where a
    /// level asked for by name and not run would be a lie; `what` names the setting.
    pub fn parse_exact(s: &str, what: &str) -> Result<Isa> {
        let isa = Isa::parse_capped(s, what)?;
        if isa.name() != s.trim().to_ascii_lowercase() {
            return Err(Error::Invalid(format!(
                "{what}{s}: this CPU cannot run {s} kernels; it has {}",
                Isa::names(&Isa::all_available())
            )));
        }
        Ok(isa)
    }

    /// The level `KEEL_ISA` asks for (capped to what this CPU has), or the best when it is
    /// unset or empty.
    pub fn from_env() -> Result<Isa> {
        match std::env::var("KEEL_ISA") {
            Ok(v) if !v.trim().is_empty() => Isa::parse_capped(&v, "KEEL_ISA="),
            _ => Ok(Isa::best()),
        }
    }

    /// `a, b or c`, for messages.
    pub fn names(levels: &[Isa]) -> String {
        let names: Vec<&str> = levels.iter().map(|i| i.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_on_this_architectures_ladder() {
        for &level in Isa::ladder() {
            let got = Isa::capped(level).unwrap();
            assert!(got.available());
            let (a, b) = (
                Isa::ladder().iter().position(|&i| i == got),
                Isa::ladder().iter().position(|&i| i == level),
            );
            assert!(a <= b, "{level} capped to {got}");
        }
        assert_eq!(Isa::capped(Isa::Portable).unwrap(), Isa::Portable);
        assert_eq!(Isa::best(), *Isa::all_available().last().unwrap());
        // A level of another architecture is an error, not a panic later.
        let foreign = if cfg!(target_arch = "aarch64") {
            Isa::Avx2
        } else {
            Isa::Neon
        };
        let e = Isa::capped(foreign).unwrap_err().to_string();
        assert!(e.contains("does not exist on this"), "{e}");
        let e = Isa::parse_capped(foreign.name(), "KEEL_ISA=")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("KEEL_ISA={}", foreign.name())),
            "{e}"
        );
        for &level in Isa::ladder() {
            let exact = Isa::parse_exact(level.name(), "--isa ");
            assert_eq!(exact.is_ok(), level.available(), "{level}");
        }
        let e = Isa::parse_capped("sse9", "--isa ").unwrap_err().to_string();
        assert!(e.contains("unknown --isa sse9: use one of portable"), "{e}");
        assert_eq!(
            Isa::names(&[Isa::Portable, Isa::Avx2, Isa::Avx512]),
            "portable, avx2 or avx512"
        );
    }
}
