//! NVRTC: kernel source to machine code (cubin) for one GPU architecture, with ptxas's
//! resource report, which the compile checks hold to written budgets.
//!
//! Compiling for a real `sm_XX` target (not a virtual `compute_XX`) runs the assembler, so the
//! inline PTX is checked too, and ptxas reports registers, spills and shared memory.

use std::ffi::{CStr, CString, c_char};

use cudarc::nvrtc::{result, sys};

use crate::error::{Error, Result};

/// Whether libnvrtc can be loaded. cudarc panics on a missing library, so every entry point
/// asks this first.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its known names; no NVRTC call is made.
    unsafe { sys::is_culib_present() }
}

fn require() -> Result<()> {
    if available() {
        Ok(())
    } else {
        Err(Error::cuda(
            "nvrtc",
            "libnvrtc.so.13 not found (install it with `pip install --target DIR \
             nvidia-cuda-nvrtc==13.0.88` and add DIR/nvidia/cu13/lib to LD_LIBRARY_PATH)",
        ))
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32)> {
    require()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes of one c_int.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::cuda("nvrtcVersion", format!("{e:?}")))?;
    Ok((major, minor))
}

/// What ptxas said about one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    /// Static shared memory; dynamic shared memory is the launch's business.
    pub smem_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
}

/// A compiled module.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The cubin, loadable with `cuModuleLoadData`.
    pub cubin: Vec<u8>,
    /// NVRTC's whole log (ptxas's report included).
    pub log: String,
    pub kernels: Vec<KernelReport>,
}

/// Compile `text` (a module's full text, prelude included) named `file` for `arch`
/// (`sm_80`, `sm_90`, `sm_90a`, ...).
pub fn compile(file: &str, text: &str, arch: &str) -> Result<Compiled> {
    require()?;
    let call = format!("nvrtc compiling {file} for {arch}");
    let src = CString::new(text).map_err(|_| Error::cuda(&call, "source holds a NUL byte"))?;
    let name = CString::new(file).map_err(|_| Error::cuda(&call, "file name holds a NUL byte"))?;
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| Error::cuda(&call, format!("nvrtcCreateProgram: {e:?}")))?;
    let options = [
        "--std=c++17".to_string(),
        format!("--gpu-architecture={arch}"),
        "--ptxas-options=-v".to_string(),
        "--ptxas-options=--warn-on-spills".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, below; `src` and `name` outlive it.
    let out = unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog).map(|l| c_text(&l));
        let cubin = compiled.is_ok().then(|| cubin(prog));
        let _ = result::destroy_program(prog);
        (compiled, log, cubin)
    };
    let log = out
        .1
        .map_err(|e| Error::cuda(&call, format!("nvrtcGetProgramLog: {e:?}")))?;
    if let Err(e) = out.0 {
        return Err(Error::cuda(&call, format!("{e:?}\n{}", log.trim_end())));
    }
    let cubin = out.2.expect("compiled")?;
    let kernels = parse_report(&log);
    Ok(Compiled {
        cubin,
        log,
        kernels,
    })
}

/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: the caller's contract; `size` is valid for one write.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| Error::cuda("nvrtcGetCUBINSize", format!("{e:?}")))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC said it would write.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| Error::cuda("nvrtcGetCUBIN", format!("{e:?}")))?;
    Ok(buf)
}

fn c_text(bytes: &[c_char]) -> String {
    let bytes: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// ptxas's `-v` lines, per entry function:
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 32 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]
/// ```
pub fn parse_report(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelReport {
                name,
                ..KernelReport::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame");
            k.spill_stores = number_before(line, "bytes spill stores");
            k.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers");
            k.smem_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The number written just before `unit` in `line` (0 when absent).
fn number_before(line: &str, unit: &str) -> u32 {
    line.find(unit)
        .and_then(|i| line[..i].split_whitespace().last())
        .and_then(|n| n.trim_start_matches(',').parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ptxas_reports() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'gemm_naive' for 'sm_90'\n\
            ptxas info    : Function properties for gemm_naive\n\
            \x20   8 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'relu' for 'sm_90'\n\
            ptxas info    : Function properties for relu\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 8 registers, 364 bytes cmem[0]\n";
        let r = parse_report(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelReport {
                name: "gemm_naive".into(),
                registers: 40,
                smem_bytes: 2048,
                spill_stores: 16,
                spill_loads: 12,
                stack_bytes: 8,
            }
        );
        assert_eq!((r[1].registers, r[1].smem_bytes), (8, 0));
    }
}
