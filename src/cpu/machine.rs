//! What this CPU is: vendor, model, caches, cores and instruction sets, read once at run time.
//!
//! The GEMM's block sizes follow the caches (`gemm::blocking`), `keel info` prints what was
//! found, and [`Machine::id`] names the file `keel tune` keeps its measurements in. Kernels were
//! once tuned by hand on one CPU; a second one (more L1, more L2, twice the 512-bit FMA rate)
//! showed that constants tuned on one machine are wrong on the next, hence this module.
//!
//! Cache geometry is read from Linux's sysfs first: it is the kernel's own reading of the CPU,
//! and in a VM it is what the hypervisor chose to show, which is also what the guest gets to
//! use. Values that make no sense (a size or associativity of zero) send that level to CPUID
//! (leaf 4 on Intel, 0x8000001D on AMD), and failing that to defaults flagged as guesses. Each
//! level records which ([`Source`]). Everything that decodes raw CPUID registers or sysfs text
//! is a pure function, so the tests run recorded values of other CPUs on this one.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

use serde::Serialize;

/// This machine, detected on first use and then kept for the process.
pub fn get() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(Machine::detect)
}

/// Who made the CPU, as far as the tables below care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

impl Vendor {
    /// From CPUID's 12-character vendor id.
    pub fn from_id(id: &str) -> Vendor {
        match id {
            "GenuineIntel" => Vendor::Intel,
            "AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

/// Where a cache level's numbers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `/sys/devices/system/cpu/cpu0/cache`.
    Sysfs,
    /// CPUID's deterministic cache parameters.
    Cpuid,
    /// Nothing could be read: a documented guess (see [`Cache::default_for`]).
    Default,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Sysfs => "sysfs",
            Source::Cpuid => "cpuid",
            Source::Default => "default (guess)",
        }
    }
}

/// One level of the data cache hierarchy, as one instance of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// Bytes.
    pub size: usize,
    /// Associativity.
    pub ways: usize,
    /// Bytes per line.
    pub line: usize,
    /// Logical CPUs sharing one instance: with a keel thread on each, each gets this share.
    pub shared_by: usize,
    pub source: Source,
}

impl Cache {
    /// The guess for a level nothing could be read for: 32 KiB 8-way L1d, 1 MiB 16-way L2,
    /// 8 MiB 16-way L3 shared by every logical CPU, 64-byte lines. Typical of x86 cores of the
    /// last decade, and small enough that blocks sized for them still fit where caches are
    /// bigger.
    pub fn default_for(level: u32, logical_cpus: usize) -> Cache {
        let (size, ways, shared_by) = match level {
            1 => (32 << 10, 8, 1),
            2 => (1 << 20, 16, 1),
            _ => (8 << 20, 16, logical_cpus.max(1)),
        };
        Cache {
            size,
            ways,
            line: 64,
            shared_by,
            source: Source::Default,
        }
    }
}

/// The instruction sets keel has kernels for, or may have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_bf16: bool,
    /// CPUID.(7,0):EDX bit 24.
    pub amx_tile: bool,
    /// CPUID.(7,0):EDX bit 22.
    pub amx_bf16: bool,
    /// CPUID.(7,0):EDX bit 25.
    pub amx_int8: bool,
    /// The OS saves the AMX tile state (XCR0 bits 17 and 18), without which the tile
    /// instructions fault. Linux also wants each process to ask first
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which is the AMX kernel's business, not this flag's.
    pub os_amx: bool,
    pub neon: bool,
}

impl Features {
    /// `(name, present)` for each, in the order `keel info` prints them.
    pub fn list(&self) -> [(&'static str, bool); 11] {
        [
            ("avx2", self.avx2),
            ("fma", self.fma),
            ("avx512f", self.avx512f),
            ("avx512bw", self.avx512bw),
            ("avx512vl", self.avx512vl),
            ("avx512_bf16", self.avx512_bf16),
            ("amx_tile", self.amx_tile),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
            ("os_amx", self.os_amx),
            ("neon", self.neon),
        ]
    }
}

/// This CPU, as keel sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub vendor: Vendor,
    /// CPUID's vendor string (`GenuineIntel`, `AuthenticAMD`), or what /proc/cpuinfo says
    /// elsewhere; `unknown` when nothing does.
    pub vendor_id: String,
    /// Display family and model (CPUID leaf 1 with the extended fields folded in); on other
    /// architectures 0 and the part number.
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Marketing name (CPUID 0x80000002-4); VMs sometimes shorten it.
    pub brand: String,
    pub l1d: Cache,
    pub l2: Cache,
    pub l3: Cache,
    /// Threads this process may run on at once (`available_parallelism`).
    pub threads: usize,
    /// Logical CPUs online on the machine (the sharing counts above are out of these).
    pub logical_cpus: usize,
    /// Distinct (package, die, core) triples in sysfs, where Linux shows them.
    pub physical_cores: Option<usize>,
    pub features: Features,
    /// The microarchitecture the pipe table below recognised, if it did.
    pub uarch: Option<&'static str>,
    /// Full-width 512-bit FMAs per cycle per core, believed from the table in
    /// [`believed_pipes`]; 0 without AVX-512. `keel bench peak` measures the truth.
    pub fma512_pipes: usize,
    /// The same for 256-bit FMAs; 0 without AVX2+FMA.
    pub fma256_pipes: usize,
    /// The CPU is not in the table, so `fma512_pipes` is a guess.
    pub pipes_guessed: bool,
}

impl Machine {
    /// Read everything from this machine (what [`get`] caches).
    pub fn detect() -> Machine {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_root = Path::new("/sys/devices/system/cpu");
        let logical_cpus = std::fs::read_to_string(cpu_root.join("online"))
            .ok()
            .and_then(|s| count_cpu_list(&s))
            .unwrap_or(threads)
            .max(threads);
        let id = Identity::detect();
        let sysfs = sysfs_caches(&cpu_root.join("cpu0/cache"));
        let cpuid = cpuid_caches(&id.vendor_id);
        let cache = |level| resolve_cache(level, &sysfs, &cpuid, logical_cpus);
        let features = Features::detect();
        let vendor = Vendor::from_id(&id.vendor_id);
        let believed = believed_pipes(vendor, id.family, id.model, features.amx_tile);
        let fma512_pipes = if features.avx512f { believed.fma512 } else { 0 };
        let fma256_pipes = if features.avx2 && features.fma {
            believed.fma256
        } else {
            0
        };
        Machine {
            vendor,
            vendor_id: id.vendor_id,
            family: id.family,
            model: id.model,
            stepping: id.stepping,
            brand: id.brand,
            l1d: cache(1),
            l2: cache(2),
            l3: cache(3),
            threads,
            logical_cpus,
            physical_cores: physical_cores(cpu_root),
            features,
            uarch: believed.uarch,
            fma512_pipes,
            fma256_pipes,
            pipes_guessed: features.avx512f && believed.uarch.is_none(),
        }
    }

    /// One line for people: what the CPU is, its caches, the instruction sets keel cares about
    /// and the FMA rate the block sizes assume.
    pub fn describe(&self) -> String {
        let brand = if self.brand.is_empty() {
            "unknown CPU"
        } else {
            &self.brand
        };
        let cores = match self.physical_cores {
            Some(c) => format!(" on {c} cores"),
            None => String::new(),
        };
        let level = |name: &str, c: &Cache| {
            let guess = if c.source == Source::Default {
                " (guess)"
            } else {
                ""
            };
            let shared = if c.shared_by > 1 {
                format!(" shared by {}", c.shared_by)
            } else {
                String::new()
            };
            format!(
                "{name} {}/{}-way{shared}{guess}",
                human_bytes(c.size),
                c.ways
            )
        };
        let isas: Vec<&str> = self
            .features
            .list()
            .into_iter()
            .filter(|&(_, on)| on)
            .map(|(name, _)| name)
            .collect();
        let isas = if isas.is_empty() {
            "no SIMD extensions keel uses".to_string()
        } else {
            isas.join(" ")
        };
        let pipes = match (self.fma512_pipes, self.uarch, self.pipes_guessed) {
            (0, ..) => "no AVX-512".to_string(),
            (p, _, true) => format!("512-bit FMA pipes: {p} (guess)"),
            (p, Some(u), false) => format!("512-bit FMA pipes: {p} ({u})"),
            (p, None, false) => format!("512-bit FMA pipes: {p}"),
        };
        format!(
            "{brand} ({} family {} model {} stepping {}), {} threads{cores}, {}, {}, {}; {isas}; {pipes}",
            self.vendor_id,
            self.family,
            self.model,
            self.stepping,
            self.threads,
            level("L1d", &self.l1d),
            level("L2", &self.l2),
            level("L3", &self.l3),
        )
    }

    /// A key for what is stored per CPU model: vendor, family, model and a slug of the brand,
    /// lowercase letters, digits and dashes only (`authenticamd-25-17-amd-epyc-9r14-96-core`). Two
    /// machines share it when they are the same model of CPU, whatever their core count or
    /// stepping; the brand tells apart CPUs whose signature is shared by several products.
    pub fn id(&self) -> String {
        let slug = slug(&self.brand);
        let vendor = slug_or(&self.vendor_id, "unknown");
        if slug.is_empty() {
            format!("{vendor}-{}-{}", self.family, self.model)
        } else {
            format!("{vendor}-{}-{}-{slug}", self.family, self.model)
        }
    }
}

/// `32 KiB`, `1 MiB`, `1536 KiB`: whole units only, the largest that divides.
pub fn human_bytes(n: usize) -> String {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;
    match n {
        0 => "0 B".to_string(),
        n if n % GIB == 0 => format!("{} GiB", n / GIB),
        n if n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

/// `s` lowercased to runs of letters and digits joined by `-`, without the trademark marks
/// and clock speed of brand strings and the filler words, at most 40 characters.
fn slug(s: &str) -> String {
    let lower = s
        .to_ascii_lowercase()
        .replace("(r)", " ")
        .replace("(tm)", " ");
    // "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz": the clock is not part of the model.
    let lower = lower.split(" @ ").next().unwrap_or("");
    let mut out = String::new();
    for word in lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && !matches!(*w, "cpu" | "processor" | "with"))
    {
        if out.len() + word.len() + 1 > 40 {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(word);
    }
    out
}

fn slug_or(s: &str, empty: &str) -> String {
    let s = slug(s);
    if s.is_empty() { empty.to_string() } else { s }
}

/// What kind of cache an index describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Instruction,
    Unified,
}

/// One cache as a source describes it, before checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RawCache {
    level: u32,
    kind: Kind,
    size: usize,
    ways: usize,
    line: usize,
    shared_by: usize,
}

/// A sysfs cache size: `32K`, `1024K`, `2M`, or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let num: usize = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    num.checked_mul(1 << shift)
}

/// How many CPUs a sysfs CPU list names: `0-1,4` is 3. `None` when it is empty or malformed.
fn count_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// The caches in a sysfs `cache` folder (`index0`, `index1`, ...); fields that cannot be read
/// are 0, for [`resolve_cache`] to judge.
fn sysfs_caches(dir: &Path) -> Vec<RawCache> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let path = entry.path();
        let read = |f: &str| std::fs::read_to_string(path.join(f)).ok();
        let number = |f: &str| read(f).and_then(|s| s.trim().parse::<usize>().ok());
        let Some(level) = read("level").and_then(|s| s.trim().parse::<u32>().ok()) else {
            continue;
        };
        let kind = match read("type").as_deref().map(str::trim) {
            Some("Data") => Kind::Data,
            Some("Instruction") => Kind::Instruction,
            Some("Unified") => Kind::Unified,
            _ => continue,
        };
        out.push(RawCache {
            level,
            kind,
            size: read("size").and_then(|s| parse_size(&s)).unwrap_or(0),
            ways: number("ways_of_associativity").unwrap_or(0),
            line: number("coherency_line_size").unwrap_or(0),
            shared_by: read("shared_cpu_list")
                .and_then(|s| count_cpu_list(&s))
                .unwrap_or(0),
        });
    }
    out
}

/// One entry of CPUID leaf 4 (Intel) or 0x8000001D (AMD, same layout): `None` for the null
/// entry that ends the list and for reserved types. The sharing count is the field's
/// "maximum addressable IDs", an upper bound that [`resolve_cache`] caps at the CPUs online.
fn decode_cache_leaf(eax: u32, ebx: u32, ecx: u32) -> Option<RawCache> {
    let kind = match eax & 0x1f {
        1 => Kind::Data,
        2 => Kind::Instruction,
        3 => Kind::Unified,
        _ => return None,
    };
    let line = (ebx & 0xfff) as usize + 1;
    let partitions = ((ebx >> 12) & 0x3ff) as usize + 1;
    let ways = ((ebx >> 22) & 0x3ff) as usize + 1;
    let sets = ecx as usize + 1;
    Some(RawCache {
        level: (eax >> 5) & 0x7,
        kind,
        size: ways * partitions * line * sets,
        ways,
        line,
        shared_by: ((eax >> 14) & 0xfff) as usize + 1,
    })
}

/// The data (or unified) cache of `level` that passes the sanity check, if `raw` has one.
fn pick(level: u32, raw: &[RawCache]) -> Option<RawCache> {
    raw.iter()
        .filter(|c| c.level == level && c.kind != Kind::Instruction)
        .find(|c| c.size > 0 && c.ways > 0)
        .copied()
}

/// Level `level` from sysfs if it says something sane, else from CPUID, else the default.
/// Odd but positive sysfs values (a VM's invention) are kept: they are what the guest gets.
fn resolve_cache(level: u32, sysfs: &[RawCache], cpuid: &[RawCache], logical: usize) -> Cache {
    let found = pick(level, sysfs)
        .map(|c| (c, Source::Sysfs))
        .or_else(|| pick(level, cpuid).map(|c| (c, Source::Cpuid)));
    match found {
        Some((c, source)) => Cache {
            size: c.size,
            ways: c.ways,
            line: if c.line > 0 { c.line } else { 64 },
            shared_by: c.shared_by.clamp(1, logical.max(1)),
            source,
        },
        None => Cache::default_for(level, logical),
    }
}

/// Signature fields of CPUID leaf 1's EAX: `(family, model, stepping)`, with the extended
/// family added when the base family is 0xF and the extended model prepended when it is 0x6
/// or 0xF, as Intel's and AMD's manuals define the displayed values.
fn decode_signature(eax: u32) -> (u32, u32, u32) {
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    let family = if base_family == 0xf {
        base_family + ext_family
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    (family, model, stepping)
}

/// The 12-character vendor id of CPUID leaf 0, which spells it in EBX, EDX, ECX order.
fn decode_vendor(ebx: u32, edx: u32, ecx: u32) -> String {
    let bytes: Vec<u8> = [ebx, edx, ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// The brand string of CPUID 0x80000002-4: 48 bytes in EAX..EDX order, NUL-padded, often with
/// runs of spaces.
fn decode_brand(regs: [[u32; 4]; 3]) -> String {
    let bytes: Vec<u8> = regs
        .iter()
        .flatten()
        .flat_map(|r| r.to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// AMX bits of CPUID.(7,0):EDX: `(tile, bf16, int8)`.
fn decode_amx(edx: u32) -> (bool, bool, bool) {
    (edx >> 24 & 1 == 1, edx >> 22 & 1 == 1, edx >> 25 & 1 == 1)
}

/// Whether XCR0 enables the AMX tile state: XTILECFG (bit 17) and XTILEDATA (bit 18).
fn os_saves_amx(xcr0: u64) -> bool {
    xcr0 & (0b11 << 17) == 0b11 << 17
}

/// What the pipe table knows of a microarchitecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Believed {
    pub uarch: Option<&'static str>,
    /// Full-width 512-bit FMAs per cycle, for CPUs with AVX-512.
    pub fma512: usize,
    /// Full-width 256-bit FMAs per cycle, for CPUs with AVX2+FMA.
    pub fma256: usize,
}

/// FMA throughput believed from vendor, family and model: a table from the vendors' and
/// reviewers' descriptions of each core, not a measurement (`keel bench peak` measures).
/// The block-size model needs it because a kernel that runs at half rate consumes B half as
/// fast, and can then stream it from L2 instead of holding it in L1. An unknown CPU with
/// AVX-512 gets one 512-bit pipe, the rate every such core reaches, and
/// [`Machine::pipes_guessed`] says it was a guess; one without gets two 256-bit pipes, which
/// every AVX2 core since Haswell and Zen 2 has.
///
/// `amx` (AMX-TILE present) overrides the model number: only Xeon server cores (Sapphire
/// Rapids and later) have AMX, and all of them have both 512-bit units, while hypervisors have
/// been seen to report another model (a KVM guest with AMX, AVX512-FP16 and a 2 MiB L2 said
/// model 0xa7, Rocket Lake, a client core with one unit; `keel bench peak` measured two).
pub fn believed_pipes(vendor: Vendor, family: u32, model: u32, amx: bool) -> Believed {
    let known = |uarch, fma512, fma256| Believed {
        uarch: Some(uarch),
        fma512,
        fma256,
    };
    let unknown = Believed {
        uarch: None,
        fma512: 1,
        fma256: 2,
    };
    if amx && vendor == Vendor::Intel {
        return known("Sapphire Rapids or later, by its AMX", 2, 2);
    }
    match (vendor, family, model) {
        // Zen and Zen+ execute 256-bit operations as two 128-bit halves.
        (Vendor::Amd, 0x17, 0x00..=0x2f) => known("Zen/Zen+", 1, 1),
        (Vendor::Amd, 0x17, _) => known("Zen 2", 1, 2),
        // Zen 4 (LLVM's znver4 model ranges) runs AVX-512 on its two 256-bit FMA pipes, each
        // 512-bit FMA as two halves: one 512-bit FMA per cycle.
        (Vendor::Amd, 0x19, 0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf) => known("Zen 4", 1, 2),
        (Vendor::Amd, 0x19, _) => known("Zen 3", 1, 2),
        // Zen 5 has a full 512-bit datapath on desktop and server parts; the mobile Strix
        // (0x20-0x3f) and Krackan (0x60-0x6f) cores keep Zen 4's split datapath.
        (Vendor::Amd, 0x1a, 0x20..=0x3f | 0x60..=0x6f) => known("Zen 5 (mobile)", 1, 2),
        (Vendor::Amd, 0x1a, _) => known("Zen 5", 2, 2),
        // Intel Xeon Scalable: two 512-bit FMA units (ports 0+1 fused, and port 5). Some
        // Skylake-SP and Cascade Lake SKUs (Bronze, Silver, a few Gold 5000s) have the port-5
        // unit disabled and so half this rate; the table cannot tell them apart.
        (Vendor::Intel, 6, 0x55) => known("Skylake-SP/Cascade Lake", 2, 2),
        (Vendor::Intel, 6, 0x6a | 0x6c) => known("Ice Lake-SP", 2, 2),
        (Vendor::Intel, 6, 0x8f) => known("Sapphire Rapids", 2, 2),
        (Vendor::Intel, 6, 0xcf) => known("Emerald Rapids", 2, 2),
        (Vendor::Intel, 6, 0xad | 0xae) => known("Granite Rapids", 2, 2),
        (Vendor::Intel, 6, 0x57 | 0x85) => known("Knights Landing/Mill", 2, 2),
        // Intel client cores with AVX-512 have only the fused ports 0+1 unit.
        (Vendor::Intel, 6, 0x66) => known("Cannon Lake", 1, 2),
        (Vendor::Intel, 6, 0x7d | 0x7e) => known("Ice Lake", 1, 2),
        (Vendor::Intel, 6, 0x8c | 0x8d) => known("Tiger Lake", 1, 2),
        (Vendor::Intel, 6, 0xa7) => known("Rocket Lake", 1, 2),
        (Vendor::Intel, 6, 0x97 | 0x9a) => known("Alder Lake", 1, 2),
        _ => unknown,
    }
}

impl Features {
    #[cfg(target_arch = "x86_64")]
    fn detect() -> Features {
        use std::arch::is_x86_feature_detected as has;
        let (edx7, os_amx) = x86::amx_leaf_and_xcr0();
        let (amx_tile, amx_bf16, amx_int8) = decode_amx(edx7);
        Features {
            avx2: has!("avx2"),
            fma: has!("fma"),
            avx512f: has!("avx512f"),
            avx512bw: has!("avx512bw"),
            avx512vl: has!("avx512vl"),
            avx512_bf16: has!("avx512bf16"),
            amx_tile,
            amx_bf16,
            amx_int8,
            os_amx,
            neon: false,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Features {
        Features {
            neon: cfg!(target_arch = "aarch64"),
            ..Features::default()
        }
    }
}

/// Who the CPU is.
struct Identity {
    vendor_id: String,
    family: u32,
    model: u32,
    stepping: u32,
    brand: String,
}

impl Identity {
    #[cfg(target_arch = "x86_64")]
    fn detect() -> Identity {
        x86::identity()
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Identity {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| Identity::from_cpuinfo(&text))
            .unwrap_or_else(|_| Identity::from_cpuinfo(""))
    }

    /// From /proc/cpuinfo's text, where CPUID is not there to ask (the first processor's
    /// fields; aarch64 names an implementer and a part number instead of a vendor and model).
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn from_cpuinfo(text: &str) -> Identity {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let number = |key: &str| {
            field(key).and_then(|v| match v.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            })
        };
        let vendor_id = field("vendor_id")
            .or_else(|| field("CPU implementer").map(|v| format!("implementer-{v}")))
            .unwrap_or_else(|| "unknown".to_string());
        let brand = field("model name")
            .or_else(|| field("Hardware"))
            .or_else(|| field("CPU part").map(|p| format!("part {p}")))
            .unwrap_or_default();
        Identity {
            vendor_id,
            family: number("cpu family").unwrap_or(0),
            model: number("model").or_else(|| number("CPU part")).unwrap_or(0),
            stepping: number("stepping")
                .or_else(|| number("CPU revision"))
                .unwrap_or(0),
            brand,
        }
    }
}

/// The caches CPUID describes, for when sysfs does not: leaf 4 on Intel, leaf 0x8000001D on
/// AMD (and Hygon) when the topology extensions bit says it exists.
#[cfg(target_arch = "x86_64")]
fn cpuid_caches(vendor_id: &str) -> Vec<RawCache> {
    x86::cache_leaves(vendor_id)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_caches(_vendor_id: &str) -> Vec<RawCache> {
    Vec::new()
}

/// Physical cores: distinct (package, die, core) triples among the CPUs whose topology sysfs
/// shows (offline CPUs have none).
fn physical_cores(cpu_root: &Path) -> Option<usize> {
    let mut cores = HashSet::new();
    for entry in std::fs::read_dir(cpu_root).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_cpu = name
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let topo = entry.path().join("topology");
        let read = |f: &str| {
            std::fs::read_to_string(topo.join(f))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((package, read("die_id").unwrap_or(0), core));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    use super::{Identity, RawCache, decode_brand, decode_cache_leaf, decode_signature};

    pub(super) fn identity() -> Identity {
        let leaf0 = __cpuid(0);
        let vendor_id = super::decode_vendor(leaf0.ebx, leaf0.edx, leaf0.ecx);
        let (family, model, stepping) = if leaf0.eax >= 1 {
            decode_signature(__cpuid(1).eax)
        } else {
            (0, 0, 0)
        };
        let brand = if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
            let regs = [0x8000_0002u32, 0x8000_0003, 0x8000_0004].map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            });
            decode_brand(regs)
        } else {
            String::new()
        };
        Identity {
            vendor_id,
            family,
            model,
            stepping,
            brand,
        }
    }

    pub(super) fn cache_leaves(vendor_id: &str) -> Vec<RawCache> {
        let leaf = match vendor_id {
            "GenuineIntel" if __cpuid(0).eax >= 4 => 4,
            "AuthenticAMD" | "HygonGenuine" => {
                let max_ext = __cpuid(0x8000_0000).eax;
                // CPUID 0x80000001 ECX bit 22: TopologyExtensions, which 0x8000001D needs.
                let topoext = max_ext >= 0x8000_0001 && __cpuid(0x8000_0001).ecx >> 22 & 1 == 1;
                if max_ext >= 0x8000_001d && topoext {
                    0x8000_001d
                } else {
                    return Vec::new();
                }
            }
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        // The list ends at a null entry; 16 is far more caches than any CPU has.
        for sub in 0..16 {
            let r = __cpuid_count(leaf, sub);
            if r.eax & 0x1f == 0 {
                break;
            }
            out.extend(decode_cache_leaf(r.eax, r.ebx, r.ecx));
        }
        out
    }

    /// CPUID.(7,0):EDX (AMX among others) and whether the OS saves AMX state.
    pub(super) fn amx_leaf_and_xcr0() -> (u32, bool) {
        let edx7 = if __cpuid(0).eax >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        };
        let ecx1 = __cpuid(1).ecx;
        // CPUID.1:ECX bit 26 XSAVE (the CPU has XGETBV), bit 27 OSXSAVE (the OS turned it on).
        let os_amx = if ecx1 >> 26 & 0b11 == 0b11 {
            // SAFETY: OSXSAVE is set, so XGETBV exists and is enabled and reading XCR0 cannot
            // fault.
            super::os_saves_amx(unsafe { xcr0() })
        } else {
            false
        };
        (edx7, os_amx)
    }

    /// XCR0: the state components the OS saves across context switches.
    ///
    /// # Safety
    /// CPUID.1:ECX.OSXSAVE must be set; XGETBV faults otherwise.
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        // SAFETY: forwarded to the caller.
        unsafe { _xgetbv(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_sizes_and_cpu_lists() {
        assert_eq!(parse_size("32K"), Some(32 << 10));
        assert_eq!(parse_size("1024K\n"), Some(1 << 20));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("48KiB"), Some(48 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);

        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-1,4"), Some(3));
        assert_eq!(count_cpu_list("0,64"), Some(2));
        assert_eq!(count_cpu_list("0-3,8-11,16"), Some(9));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }

    /// Leaf 4 / 0x8000001D registers as CPUs report them, built from their fields.
    fn leaf(kind: u32, level: u32, shared: u32, ways: u32, line: u32, sets: u32) -> [u32; 3] {
        [
            kind | level << 5 | 1 << 8 | (shared - 1) << 14,
            (ways - 1) << 22 | (line - 1),
            sets - 1,
        ]
    }

    #[test]
    fn decodes_cpuid_cache_leaves() {
        // A Skylake's L1d as leaf 4 reports it (shared by the core's two hyperthreads).
        let c = decode_cache_leaf(0x1C00_4121, 0x01C0_003F, 0x0000_003F).unwrap();
        assert_eq!(
            c,
            RawCache {
                level: 1,
                kind: Kind::Data,
                size: 32 << 10,
                ways: 8,
                line: 64,
                shared_by: 2,
            }
        );
        // Emerald Rapids' L2: 2 MiB, 16 ways, 2048 sets; 0xFC in the top bits is the core
        // count field, which must not leak into the sharing count.
        let [a, b, c] = leaf(3, 2, 2, 16, 64, 2048);
        let l2 = decode_cache_leaf(a | 0xFC00_0000, b, c).unwrap();
        assert_eq!((l2.level, l2.kind), (2, Kind::Unified));
        assert_eq!(
            (l2.size, l2.ways, l2.line, l2.shared_by),
            (2 << 20, 16, 64, 2)
        );
        // Zen 4's L3 through 0x8000001D: 32 MiB, 16 ways, shared by a CCD's 16 threads.
        let [a, b, c] = leaf(3, 3, 16, 16, 64, 32768);
        let l3 = decode_cache_leaf(a, b, c).unwrap();
        assert_eq!(
            (l3.level, l3.size, l3.ways, l3.shared_by),
            (3, 32 << 20, 16, 16)
        );
        // The null entry that ends the list, and an instruction cache.
        assert_eq!(decode_cache_leaf(0, 0, 0), None);
        let [a, b, c] = leaf(2, 1, 1, 8, 64, 64);
        assert_eq!(decode_cache_leaf(a, b, c).unwrap().kind, Kind::Instruction);
    }

    #[test]
    fn decodes_signature_vendor_brand_and_amx() {
        // This machine's kind (EPYC 9R14, Zen 4), Emerald Rapids, Sapphire Rapids, Skylake.
        assert_eq!(decode_signature(0x00A1_0F11), (25, 0x11, 1));
        assert_eq!(decode_signature(0x000C_06F2), (6, 0xCF, 2));
        assert_eq!(decode_signature(0x0008_06F8), (6, 0x8F, 8));
        assert_eq!(decode_signature(0x0005_0654), (6, 0x55, 4));
        // An old family-5 part: no extended fields apply.
        assert_eq!(decode_signature(0x0001_0543), (5, 4, 3));

        assert_eq!(
            decode_vendor(0x6874_7541, 0x6974_6E65, 0x444D_4163),
            "AuthenticAMD"
        );
        assert_eq!(
            decode_vendor(0x756E_6547, 0x4965_6E69, 0x6C65_746E),
            "GenuineIntel"
        );

        let text = b"  Intel(R) Xeon(R) Platinum 8592+  ";
        let mut bytes = [0u8; 48];
        bytes[..text.len()].copy_from_slice(text);
        let mut regs = [[0u32; 4]; 3];
        for (i, chunk) in bytes.chunks_exact(4).enumerate() {
            regs[i / 4][i % 4] = u32::from_le_bytes(chunk.try_into().unwrap());
        }
        assert_eq!(decode_brand(regs), "Intel(R) Xeon(R) Platinum 8592+");

        assert_eq!(decode_amx(1 << 24 | 1 << 22 | 1 << 25), (true, true, true));
        assert_eq!(decode_amx(1 << 24), (true, false, false));
        assert_eq!(decode_amx(0x10), (false, false, false));
        assert!(os_saves_amx(0x6_02e7));
        assert!(!os_saves_amx(0xe7), "AVX-512 state without tiles");
        assert!(
            !os_saves_amx(1 << 17 | 0xe7),
            "XTILECFG alone is not enough"
        );
    }

    #[test]
    fn pipe_table_knows_the_two_machines_and_flags_the_rest() {
        let zen4 = believed_pipes(Vendor::Amd, 0x19, 0x11, false);
        assert_eq!(
            (zen4.uarch, zen4.fma512, zen4.fma256),
            (Some("Zen 4"), 1, 2)
        );
        assert_eq!(believed_pipes(Vendor::Amd, 0x19, 0x61, false).fma512, 1);
        assert_eq!(believed_pipes(Vendor::Amd, 0x19, 0xa0, false).fma512, 1);
        let emr = believed_pipes(Vendor::Intel, 6, 0xcf, false);
        assert_eq!((emr.uarch, emr.fma512), (Some("Emerald Rapids"), 2));
        for model in [0x55, 0x6a, 0x6c, 0x8f, 0xad, 0xae] {
            assert_eq!(
                believed_pipes(Vendor::Intel, 6, model, false).fma512,
                2,
                "{model:#x}"
            );
        }
        for model in [0x7d, 0x7e, 0x8c, 0x8d, 0xa7] {
            assert_eq!(
                believed_pipes(Vendor::Intel, 6, model, false).fma512,
                1,
                "{model:#x}"
            );
        }
        assert_eq!(believed_pipes(Vendor::Amd, 0x1a, 0x44, false).fma512, 2);
        assert_eq!(believed_pipes(Vendor::Amd, 0x1a, 0x24, false).fma512, 1);
        assert_eq!(believed_pipes(Vendor::Amd, 0x17, 0x08, false).fma256, 1);
        assert_eq!(believed_pipes(Vendor::Amd, 0x17, 0x31, false).fma256, 2);
        let unknown = believed_pipes(Vendor::Other, 7, 1, false);
        assert_eq!((unknown.uarch, unknown.fma512), (None, 1));
        assert_eq!(believed_pipes(Vendor::Intel, 19, 1, false).uarch, None);
        // What a KVM guest on a Xeon with AMX reported: model 0xa7, Rocket Lake's.
        let guest = believed_pipes(Vendor::Intel, 6, 0xa7, true);
        assert_eq!((guest.fma512, guest.fma256), (2, 2));
        assert!(guest.uarch.is_some_and(|u| u.contains("AMX")));
    }

    #[test]
    fn sysfs_wins_when_sane_and_falls_back_per_level() {
        let raw = |level, kind, size, ways, shared_by| RawCache {
            level,
            kind,
            size,
            ways,
            line: 64,
            shared_by,
        };
        let sysfs = [
            raw(1, Kind::Data, 48 << 10, 12, 2),
            raw(1, Kind::Instruction, 32 << 10, 8, 2),
            // A VM that reports no associativity for L2.
            raw(2, Kind::Unified, 2 << 20, 0, 2),
        ];
        let cpuid = [
            raw(1, Kind::Data, 32 << 10, 8, 2),
            raw(2, Kind::Unified, 2 << 20, 16, 128),
        ];
        let l1 = resolve_cache(1, &sysfs, &cpuid, 4);
        assert_eq!((l1.size, l1.ways, l1.source), (48 << 10, 12, Source::Sysfs));
        let l2 = resolve_cache(2, &sysfs, &cpuid, 4);
        assert_eq!((l2.ways, l2.source), (16, Source::Cpuid));
        assert_eq!(
            l2.shared_by, 4,
            "CPUID's upper bound is capped at the CPUs online"
        );
        let l3 = resolve_cache(3, &sysfs, &cpuid, 4);
        assert_eq!(l3, Cache::default_for(3, 4));
        assert_eq!(
            (l3.size, l3.shared_by, l3.source),
            (8 << 20, 4, Source::Default)
        );
    }

    #[test]
    fn reads_a_sysfs_cache_folder() {
        let dir = std::env::temp_dir().join(format!("keel-machine-sysfs-{}", std::process::id()));
        let index = |i: usize, files: &[(&str, &str)]| {
            let d = dir.join(format!("index{i}"));
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        index(
            0,
            &[
                ("level", "1"),
                ("type", "Data"),
                ("size", "48K"),
                ("ways_of_associativity", "12"),
                ("coherency_line_size", "64"),
                ("shared_cpu_list", "0,64"),
            ],
        );
        index(1, &[("level", "2"), ("type", "Unified"), ("size", "2048K")]);
        std::fs::create_dir_all(dir.join("uevent_not_an_index")).unwrap();
        let mut got = sysfs_caches(&dir);
        got.sort_by_key(|c| c.level);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            RawCache {
                level: 1,
                kind: Kind::Data,
                size: 48 << 10,
                ways: 12,
                line: 64,
                shared_by: 2,
            }
        );
        // Missing files read as 0, which the sanity check then rejects.
        assert_eq!(
            (got[1].size, got[1].ways, got[1].shared_by),
            (2 << 20, 0, 0)
        );
        assert_eq!(pick(2, &got), None);
        assert!(sysfs_caches(Path::new("/nonexistent/keel")).is_empty());
    }

    #[test]
    fn reads_identity_from_proc_cpuinfo_elsewhere() {
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n\
                   CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n";
        let id = Identity::from_cpuinfo(arm);
        assert_eq!(id.vendor_id, "implementer-0x41");
        assert_eq!((id.family, id.model, id.stepping), (0, 0xd0c, 1));
        assert_eq!(id.brand, "part 0xd0c");
        let none = Identity::from_cpuinfo("");
        assert_eq!(
            (none.vendor_id.as_str(), none.brand.as_str()),
            ("unknown", "")
        );
    }

    #[test]
    fn id_is_a_file_name_and_describe_one_line() {
        let mut m = get().clone();
        m.vendor_id = "GenuineIntel".into();
        m.family = 6;
        m.model = 0xcf;
        m.brand = "INTEL(R) XEON(R) PLATINUM 8592+ CPU @ 1.9GHz".into();
        assert_eq!(m.id(), "genuineintel-6-207-intel-xeon-platinum-8592");
        m.brand = "AMD EPYC 9R14 96-Core Processor".into();
        assert_eq!(m.id(), "genuineintel-6-207-amd-epyc-9r14-96-core");
        m.brand.clear();
        assert_eq!(m.id(), "genuineintel-6-207");
        m.brand = "x".repeat(100);
        assert!(m.id().len() < 80);
        assert!(
            m.id()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert_eq!(human_bytes(32 << 10), "32 KiB");
        assert_eq!(human_bytes(1536 << 10), "1536 KiB");
        assert_eq!(human_bytes(32 << 20), "32 MiB");
        assert_eq!(human_bytes(100), "100 B");
    }

    /// CPUID's cache leaves, which sysfs shadows wherever it exists, read on this CPU: sane,
    /// and agreeing with sysfs (which Linux fills from the same leaves on x86).
    #[test]
    fn cpuid_cache_leaves_of_this_cpu_are_sane() {
        let m = get();
        let cpuid = cpuid_caches(&m.vendor_id);
        for c in &cpuid {
            assert!(c.size > 0 && c.ways > 0 && c.line > 0, "{c:?}");
            assert!((1..=4).contains(&c.level), "{c:?}");
        }
        if cfg!(target_arch = "x86_64") && m.vendor != Vendor::Other {
            let l1 = pick(1, &cpuid).expect("Intel and AMD CPUs describe L1d");
            if m.l1d.source == Source::Sysfs {
                assert_eq!((l1.size, l1.ways), (m.l1d.size, m.l1d.ways));
            }
        }
    }

    #[test]
    fn this_machine_is_detected_sanely() {
        let m = get();
        assert!(std::ptr::eq(m, get()), "detected once");
        for (name, c) in [("L1d", m.l1d), ("L2", m.l2), ("L3", m.l3)] {
            assert!(c.size > 0 && c.ways > 0 && c.line > 0, "{name}: {c:?}");
            assert!((1..=m.logical_cpus).contains(&c.shared_by), "{name}: {c:?}");
        }
        assert!(m.l1d.size <= m.l2.size, "{m:?}");
        assert!(m.threads >= 1 && m.threads <= m.logical_cpus);
        if let Some(cores) = m.physical_cores {
            assert!((1..=m.logical_cpus).contains(&cores));
        }
        let d = m.describe();
        assert!(!d.contains('\n') && d.contains("L1d "), "{d}");
        assert!(!m.id().is_empty());
        if cfg!(target_arch = "x86_64") {
            assert!(!m.vendor_id.is_empty() && m.family > 0, "{m:?}");
            let isa = crate::cpu::isa::Isa::Avx512;
            assert_eq!(m.features.avx512f, isa.available());
            assert_eq!(m.fma512_pipes > 0, m.features.avx512f);
            // The OS cannot save a state the CPU does not have.
            assert!(!m.features.os_amx || m.features.amx_tile);
        }
    }
}
