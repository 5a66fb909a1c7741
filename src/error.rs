//! keel's error type.
//!
//! Every error a user can cause names the thing at fault (a file, a layer, an argument) and the
//! problem, so the CLI can print it as is and exit non-zero. Nothing in keel panics on bad input.

use std::path::{Path, PathBuf};

/// The result type used throughout keel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on a path.
    ///
    /// The OS's error is part of the message and deliberately not a `source`: a `{:#}` chain
    /// would print it twice ("No such file or directory (os error 2): No such file ...").
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file could be read but its contents are wrong for what keel needs.
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    /// Tensors whose shapes do not fit the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument or configuration that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// A download failed.
    #[error("{0}")]
    Network(String),
    /// A CUDA driver, NVRTC or cuBLAS call failed (or a kernel's CPU build failed): names the
    /// call and what it said.
    #[error("CUDA {call}: {problem}")]
    Cuda { call: String, problem: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// A failed CUDA (or kernel build) call.
    pub fn cuda(call: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Error::Cuda {
            call: call.into(),
            problem: problem.to_string(),
        }
    }

    /// A problem with the contents of the file at `path`.
    pub fn file(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
        }
    }
}
