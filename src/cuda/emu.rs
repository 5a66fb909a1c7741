//! The CPU build of the kernels: the same `.cu` source compiled by g++ against
//! `kernels/emu/cuda_emu.h` (one OS thread per CUDA thread, blocks one after another, warp
//! exchanges for shuffles and `mma.sync`), loaded as a shared library.
//!
//! It lets CI run every kernel, and keel's launch code with it (grid, block, shared memory,
//! argument order), on a machine without a GPU. It measures nothing about speed.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use super::cache;
use super::source::{self, EMU_HEADER, PRELUDE};
use crate::error::{Error, Result};

/// `keel_emu_launch_<kernel>`'s type: cuLaunchKernel's argument layout, then room for a message.
type LaunchFn = unsafe extern "C" fn(
    params: *mut *mut c_void,
    grid: *const u32,
    block: *const u32,
    dynamic_smem: u32,
    err: *mut c_char,
    err_len: u32,
) -> i32;

/// A module's CPU build, loaded.
pub struct EmuModule {
    lib: libloading::Library,
}

/// One kernel of an [`EmuModule`].
#[derive(Clone)]
pub struct EmuFunction {
    module: Arc<EmuModule>,
    launch: LaunchFn,
    name: String,
}

/// The C++ compiler: `$KEEL_CXX`, else `g++`.
fn compiler() -> String {
    std::env::var("KEEL_CXX")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "g++".into())
}

/// The first line of `g++ --version`, or None when there is no compiler; asked once per
/// process (it names every CPU build in the cache, so it is needed at every module load).
pub fn compiler_version() -> Option<String> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let out = Command::new(compiler()).arg("--version").output().ok()?;
            out.status.success().then(|| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        })
        .clone()
}

/// Whether kernels can be built for the CPU here.
pub fn available() -> bool {
    compiler_version().is_some()
}

/// Flags for every CPU build. `-O1` keeps g++ quick on the big templated kernels; what is
/// tested is the arithmetic, not the speed.
const FLAGS: &[&str] = &["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-w"];

/// Write the translation unit of `file`/`text` with its headers under `dir`.
pub fn write_sources(dir: &Path, file: &str, text: &str) -> Result<std::path::PathBuf> {
    let emu_dir = dir.join("emu");
    std::fs::create_dir_all(&emu_dir).map_err(|e| Error::io(&emu_dir, e))?;
    let write =
        |p: std::path::PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| Error::io(&p, e));
    write(emu_dir.join("cuda_emu.h"), EMU_HEADER)?;
    write(dir.join("prelude.cuh"), PRELUDE)?;
    let tu = dir.join(format!("{file}.cpp"));
    write(tu.clone(), &source::emu_text(file, text))?;
    Ok(tu)
}

/// Load (building when needed) the CPU build of `text`, a module's source named `file`.
pub fn module(file: &str, text: &str) -> Result<Arc<EmuModule>> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<EmuModule>>>> = OnceLock::new();
    let version = compiler_version().ok_or_else(|| {
        Error::cuda(
            format!("building {file} for the CPU"),
            format!(
                "no C++ compiler: `{} --version` failed (set KEEL_CXX)",
                compiler()
            ),
        )
    })?;
    let key = source::digest(&[EMU_HEADER, PRELUDE, file, text, &FLAGS.join(" "), &version]);
    // Held while building, so parallel tests wait for one g++ run instead of each starting one.
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = loaded.get(&key) {
        return Ok(m.clone());
    }
    let stem = file.trim_end_matches(".cu");
    let so = cache::file(&format!("{stem}-{key}-cpu.so"), |out| {
        build(file, text, out)
    })?;
    // SAFETY: the library is keel's own CPU build of its kernels; loading it runs no
    // initialisers beyond the C++ runtime's.
    let lib = unsafe { libloading::Library::new(&so) }
        .map_err(|e| Error::cuda(format!("loading {}", so.display()), e))?;
    let m = Arc::new(EmuModule { lib });
    loaded.insert(key, m.clone());
    Ok(m)
}

fn build(file: &str, text: &str, out: &Path) -> Result<()> {
    let call = format!("building {file} for the CPU");
    let work = out.with_extension("src");
    let tu = write_sources(&work, file, text)?;
    let output = Command::new(compiler())
        .args(FLAGS)
        .arg("-I")
        .arg(&work)
        .arg("-o")
        .arg(out)
        .arg(&tu)
        .output()
        .map_err(|e| Error::cuda(&call, e))?;
    let _ = std::fs::remove_dir_all(&work);
    if !output.status.success() {
        let log = String::from_utf8_lossy(&output.stderr);
        let head: Vec<&str> = log.lines().take(30).collect();
        return Err(Error::cuda(call, head.join("\n")));
    }
    Ok(())
}

impl EmuModule {
    /// The kernel `name` (an `extern "C" __global__` of the module).
    pub fn function(self: &Arc<Self>, name: &str) -> Result<EmuFunction> {
        let symbol = format!("keel_emu_launch_{name}\0");
        // SAFETY: every `keel_emu_launch_*` symbol is defined by KEEL_EMU_EXPORT with exactly
        // the `LaunchFn` signature.
        let launch = unsafe { self.lib.get::<LaunchFn>(symbol.as_bytes()) }
            .map(|s| *s)
            .map_err(|_| {
                Error::cuda(
                    "cuModuleGetFunction (CPU build)",
                    format!("no kernel named {name}"),
                )
            })?;
        Ok(EmuFunction {
            module: self.clone(),
            launch,
            name: name.to_string(),
        })
    }
}

impl EmuFunction {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run the kernel over the whole grid, on this thread and as many as the block has.
    ///
    /// # Safety
    /// `params` must hold, in order, pointers to values of exactly the kernel's parameter
    /// types, and every pointer argument must address host memory of the sizes the kernel
    /// reads and writes (the CPU build's "device" memory is host memory).
    pub unsafe fn launch(
        &self,
        params: &mut [*mut c_void],
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_smem: u32,
    ) -> Result<()> {
        let _keep = &self.module;
        let mut err = [0 as c_char; 512];
        // SAFETY: the caller's contract for `params`; the other pointers address live arrays
        // of the lengths passed.
        let rc = unsafe {
            (self.launch)(
                params.as_mut_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                dynamic_smem,
                err.as_mut_ptr(),
                err.len() as u32,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let bytes: Vec<u8> = err
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Err(Error::cuda(
            format!("cuLaunchKernel {} (CPU build)", self.name),
            String::from_utf8_lossy(&bytes),
        ))
    }
}
