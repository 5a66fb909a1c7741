//! The kernel sources, embedded in the binary, and how a module's text is put together for
//! NVRTC (the GPU) and for g++ (the CPU build that tests run).
//!
//! NVRTC reads no header from disk, so a module is self-contained: the loader prepends
//! `kernels/prelude.cuh` (the inline-PTX wrappers, each with a CPU twin in
//! `kernels/emu/cuda_emu.h`) and a `#line` directive, so compiler messages name the `.cu` file
//! and its own line numbers.

use sha2::{Digest, Sha256};

use crate::digest::hex;

/// Device helpers every module sees: inline PTX wrappers, dynamic shared memory, the epilogue.
pub const PRELUDE: &str = include_str!("../../kernels/prelude.cuh");
/// The CPU definitions of CUDA's built-ins, for the CPU build only.
pub const EMU_HEADER: &str = include_str!("../../kernels/emu/cuda_emu.h");

/// One `.cu` file of `kernels/`.
#[derive(Debug)]
pub struct ModuleSource {
    /// Short name ("gemm"), used in cache file names and messages.
    pub name: &'static str,
    /// The file name in `kernels/`, for compiler messages.
    pub file: &'static str,
    pub text: &'static str,
    /// Hopper-only (wgmma, TMA): compiled for `sm_90a` alone and never built for the CPU,
    /// which cannot decode its descriptors.
    pub sm90a_only: bool,
}

/// The GEMM ladder.
pub static GEMM: ModuleSource = ModuleSource {
    name: "gemm",
    file: "gemm.cu",
    text: include_str!("../../kernels/gemm.cu"),
    sm90a_only: false,
};

/// The Hopper rung: wgmma fed by TMA.
pub static GEMM_SM90A: ModuleSource = ModuleSource {
    name: "gemm_sm90a",
    file: "gemm_sm90a.cu",
    text: include_str!("../../kernels/gemm_sm90a.cu"),
    sm90a_only: true,
};

/// The backend's other ops: im2col, pools, softmax, element-wise.
pub static OPS: ModuleSource = ModuleSource {
    name: "ops",
    file: "ops.cu",
    text: include_str!("../../kernels/ops.cu"),
    sm90a_only: false,
};

/// The convolution ladder: the direct first layer, implicit GEMM on CUDA cores and tensor
/// cores, fused max pools.
pub static CONV: ModuleSource = ModuleSource {
    name: "conv",
    file: "conv.cu",
    text: include_str!("../../kernels/conv.cu"),
    sm90a_only: false,
};

/// What training needs beyond the forward ops: backward passes, the loss, optimizer steps.
pub static TRAIN: ModuleSource = ModuleSource {
    name: "train",
    file: "train.cu",
    text: include_str!("../../kernels/train.cu"),
    sm90a_only: false,
};

/// Every module, for the compile checks.
pub fn all() -> [&'static ModuleSource; 5] {
    [&GEMM, &GEMM_SM90A, &OPS, &CONV, &TRAIN]
}

impl ModuleSource {
    /// The text NVRTC compiles.
    pub fn device_text(&self) -> String {
        device_text(self.file, self.text)
    }

    /// The kernels this module defines: every `extern "C" __global__` function, found in the
    /// source itself so the list cannot drift from it.
    pub fn entry_points(&self) -> Vec<String> {
        entry_points(self.text)
    }
}

/// [`ModuleSource::device_text`] for any text (the tests compile mutated sources).
pub fn device_text(file: &str, text: &str) -> String {
    format!("{PRELUDE}\n#line 1 \"{file}\"\n{text}\n")
}

/// The translation unit g++ compiles for the CPU: the CUDA built-ins, the prelude, the
/// module and one exported launcher per kernel (`keel_emu_launch_<name>`).
pub fn emu_text(file: &str, text: &str) -> String {
    let mut s = format!(
        "#define KEEL_EMU 1\n#include \"emu/cuda_emu.h\"\n#include \"prelude.cuh\"\n\
         #line 1 \"{file}\"\n{text}\n"
    );
    for k in entry_points(text) {
        s.push_str(&format!("KEEL_EMU_EXPORT({k})\n"));
    }
    s
}

/// Names of the `extern "C" __global__` functions of `text`.
pub fn entry_points(text: &str) -> Vec<String> {
    let code = strip_comments(text);
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + "extern \"C\"".len()..];
        // The declaration up to its body or semicolon, without `__launch_bounds__(...)`,
        // whose parentheses would otherwise look like the parameter list.
        let mut head = rest[..rest.find(['{', ';']).unwrap_or(rest.len())].to_string();
        while let Some(p) = head.find("__launch_bounds__") {
            let end = head[p..].find(')').map_or(head.len(), |c| p + c + 1);
            head.replace_range(p..end, " ");
        }
        let decl = head.split('(').next().unwrap_or("");
        let is_definition = rest[head_len(rest)..].starts_with('{');
        if !decl.contains("__global__") || !is_definition {
            continue;
        }
        if let Some(name) = decl.split_whitespace().last() {
            let name = name.trim_start_matches('*');
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// `text` without `//` and `/* */` comments (string literals do not occur in kernels).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..]
                    .find("*/")
                    .map_or("", |e| &rest[b + 2 + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// Bytes up to a declaration's body or semicolon.
fn head_len(s: &str) -> usize {
    s.find(['{', ';']).unwrap_or(s.len())
}

/// A short digest naming compiled code: the texts and everything that changes the output.
pub fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entry_points_and_skips_device_functions() {
        let src = r#"
            // extern "C" __global__ void in_a_comment(int x) {}
            /* extern "C" __global__ void in_a_block(int x) {} */
            __device__ float f(float x) { return x; }
            extern "C" __global__ void __launch_bounds__(256) k_one(const float* a, int n) {}
            extern "C" __global__ void
            k_two(float* b) {}
            extern "C" __device__ int helper(int x) { return x; }
            extern "C" __global__ void k_one(const float* a, int n);
        "#;
        assert_eq!(entry_points(src), ["k_one", "k_two"]);
        let tu = emu_text("x.cu", src);
        assert!(tu.contains("KEEL_EMU_EXPORT(k_two)") && tu.contains("#line 1 \"x.cu\""));
    }

    #[test]
    fn every_module_has_kernels() {
        for m in all() {
            assert!(!m.entry_points().is_empty(), "{} has no kernels", m.file);
        }
        assert_ne!(digest(&["a", "bc"]), digest(&["ab", "c"]));
    }
}
