//! What `keel tune` measured fastest on one CPU model, and its use at run time.
//!
//! The analytical model (`gemm::blocking`) gets block sizes close to right from the caches,
//! and `ConvAlgo::auto` picks each layer's algorithm by a rule of thumb. Both were calibrated on
//! one machine; `keel tune` measures the alternatives on this one and stores the winners in
//! `$KEEL_HOME/tune/<cpu id>.json`, one file per CPU model (the id comes from CPUID, so a copy
//! of the folder on another model of CPU is ignored rather than misapplied).
//!
//! A tuned block size never changes a result: the GEMM's sum is one chain per element in k
//! order whatever the blocking. A tuned algorithm does (Winograd rounds differently from implicit
//! GEMM, within the tolerances the tests hold every algorithm to), exactly as `--algo` does.
//! `KEEL_TUNING=off` ignores the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cpu::conv::ConvAlgo;
use crate::cpu::gemm::Blocking;
use crate::cpu::isa::Isa;
use crate::error::{Error, Result};
use crate::tensor::ConvGeometry;

/// The environment variable that turns tuning off (`off`, `0` or `no`).
pub const TUNING_ENV: &str = "KEEL_TUNING";

/// The file's format version; a file of another version is ignored (and `keel info` says so).
pub const VERSION: u32 = 1;

/// One ISA's block sizes, with what they and the model's measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedBlocking {
    pub isa: String,
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    /// GFLOP/s of the tuned and the model's block sizes over the tuner's GEMM shapes.
    pub gflops: f64,
    pub model_gflops: f64,
}

/// One convolution's fastest algorithm at one geometry (batch, spatial size, channels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedConv {
    pub layer: String,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub cin: usize,
    pub cout: usize,
    pub algo: String,
    /// Seconds per call of every algorithm tried, fastest first.
    pub timings: Vec<(String, f64)>,
}

/// A tuning file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub version: u32,
    /// [`crate::cpu::machine::Machine::id`] of the CPU it was measured on.
    pub cpu_id: String,
    /// The machine's description line, for people reading the file.
    pub cpu: String,
    /// Worker threads during the measurement.
    pub threads: usize,
    pub blocking: Vec<TunedBlocking>,
    pub conv: Vec<TunedConv>,
}

impl Tuning {
    /// The tuned block sizes of `isa`, if it was tuned.
    pub fn blocking(&self, isa: Isa) -> Option<Blocking> {
        self.blocking
            .iter()
            .find(|b| b.isa == isa.name())
            .map(|b| Blocking {
                mc: b.mc,
                kc: b.kc,
                nc: b.nc,
            })
    }

    /// The tuned algorithm for a forward convolution of geometry `g`, if one was measured at
    /// that batch, size and width.
    pub fn conv_algo(&self, g: &ConvGeometry) -> Option<ConvAlgo> {
        self.conv
            .iter()
            .find(|c| {
                (c.batch, c.height, c.width, c.cin, c.cout) == (g.n, g.oh, g.ow, g.cin, g.cout)
            })
            .and_then(|c| ConvAlgo::parse(&c.algo))
            .filter(|a| a.supports(g))
    }

    /// Where the tuning of CPU `cpu_id` lives under keel's home folder.
    pub fn path(home: &Path, cpu_id: &str) -> PathBuf {
        home.join("tune").join(format!("{cpu_id}.json"))
    }

    /// Read a tuning file; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Tuning>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let t: Tuning = serde_json::from_slice(&bytes)
            .map_err(|e| Error::file(path, format!("is not a keel tuning file: {e}")))?;
        if t.version != VERSION {
            return Err(Error::file(
                path,
                format!(
                    "is a version {} tuning file; this keel reads version {VERSION} (run keel tune again)",
                    t.version
                ),
            ));
        }
        Ok(Some(t))
    }

    /// Write the file atomically (a crash leaves the old one or none, never half of one).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the tuning: {e}")))?;
        crate::io::atomic::write_atomic(path, |w| std::io::Write::write_all(w, &json))
    }
}

/// Whether `KEEL_TUNING` turns tuning off.
pub fn disabled() -> bool {
    std::env::var(TUNING_ENV)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "no"))
        .unwrap_or(false)
}

/// What happened to this CPU's tuning file at start-up.
#[derive(Clone, Debug)]
pub enum Status {
    /// Used, from this file.
    Loaded(PathBuf),
    /// None at this path (`keel tune` not run on this CPU model).
    Absent(PathBuf),
    /// `KEEL_TUNING=off`.
    Disabled,
    /// Present but unreadable or of another version: ignored, for this reason.
    Ignored(String),
}

struct Loaded {
    tuning: Option<Tuning>,
    status: Status,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        if disabled() {
            return Loaded {
                tuning: None,
                status: Status::Disabled,
            };
        }
        let path = Tuning::path(
            &crate::io::fetch::keel_home(),
            &crate::cpu::machine::get().id(),
        );
        match Tuning::load(&path) {
            Ok(Some(t)) => Loaded {
                tuning: Some(t),
                status: Status::Loaded(path),
            },
            Ok(None) => Loaded {
                tuning: None,
                status: Status::Absent(path),
            },
            // A bad file slows nothing down and must not stop a run: the defaults apply, and
            // `keel info` names the file and the problem.
            Err(e) => Loaded {
                tuning: None,
                status: Status::Ignored(e.to_string()),
            },
        }
    })
}

/// This CPU's tuning, if `keel tune` stored one and it is on.
pub fn current() -> Option<&'static Tuning> {
    loaded().tuning.as_ref()
}

/// What became of this CPU's tuning file.
pub fn status() -> &'static Status {
    &loaded().status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tuning {
        Tuning {
            version: VERSION,
            cpu_id: "test-cpu".into(),
            cpu: "a test CPU".into(),
            threads: 2,
            blocking: vec![TunedBlocking {
                isa: "avx512".into(),
                mc: 96,
                kc: 384,
                nc: 2048,
                gflops: 100.0,
                model_gflops: 95.0,
            }],
            conv: vec![TunedConv {
                layer: "block3_conv1".into(),
                batch: 1,
                height: 56,
                width: 56,
                cin: 128,
                cout: 256,
                algo: "implicit-gemm".into(),
                timings: vec![("implicit-gemm".into(), 0.01), ("winograd4".into(), 0.02)],
            }],
        }
    }

    #[test]
    fn round_trips_through_its_file_and_answers_lookups() {
        let dir = std::env::temp_dir().join(format!("keel-tune-test-{}", std::process::id()));
        let path = Tuning::path(&dir, "test-cpu");
        assert_eq!(Tuning::load(&path).unwrap(), None, "no file yet");
        let t = sample();
        t.save(&path).unwrap();
        let back = Tuning::load(&path).unwrap().unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.blocking(Isa::Avx512),
            Some(Blocking {
                mc: 96,
                kc: 384,
                nc: 2048
            })
        );
        assert_eq!(back.blocking(Isa::Avx2), None);
        let g = |n, hw, cin| ConvGeometry {
            n,
            h: hw,
            w: hw,
            cin,
            kh: 3,
            kw: 3,
            cout: 256,
            oh: hw,
            ow: hw,
            stride: [1, 1],
            pad_top: 1,
            pad_left: 1,
        };
        assert_eq!(back.conv_algo(&g(1, 56, 128)), Some(ConvAlgo::ImplicitGemm));
        assert_eq!(back.conv_algo(&g(2, 56, 128)), None, "another batch");
        assert_eq!(back.conv_algo(&g(1, 28, 128)), None, "another size");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_or_foreign_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("keel-tune-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let e = Tuning::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("x.json") && e.contains("not a keel tuning file"),
            "{e}"
        );
        let mut old = sample();
        old.version = VERSION + 1;
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let e = Tuning::load(&path).unwrap_err().to_string();
        assert!(e.contains("run keel tune again"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
