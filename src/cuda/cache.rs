//! The on-disk cache of compiled kernels (cubins from NVRTC, shared libraries from g++), named
//! by a digest of everything that went into them, so a changed source or compiler never picks
//! up a stale build, and a second run skips the compiler.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// `$KEEL_KERNEL_CACHE`, else `$KEEL_HOME/kernels` (`~/.cache/keel/kernels`).
pub fn dir() -> PathBuf {
    match std::env::var_os("KEEL_KERNEL_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::io::fetch::keel_home().join("kernels"),
    }
}

/// The file `name` in the cache, made by `build` (which writes the path it is given) when it
/// is not there yet. The build writes a temporary path renamed into place, so concurrent
/// builders (parallel tests, two processes) each see a whole file or none.
pub fn file(name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = dir();
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result =
        build(&tmp).and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// [`file()`] for bytes.
pub fn bytes(name: &str, make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let path = file(name, |tmp| {
        let data = make()?;
        std::fs::write(tmp, data).map_err(|e| Error::io(tmp, e))
    })?;
    std::fs::read(&path).map_err(|e| Error::io(&path, e))
}
