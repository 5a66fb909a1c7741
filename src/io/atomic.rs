//! Atomic file writes: a reader (or a crash) sees the old file or the complete new one, never a
//! half-written one, and a failed write leaves nothing behind.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary path next to `path` (same directory, so the final rename cannot cross file
/// systems), unique to this process.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.keel-tmp-{}", std::process::id()))
}

/// Write `path` by calling `fill` on a temporary file, syncing it, then renaming it into place.
/// On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a directory; expected a file path to write",
        ));
    }
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Create `path` by letting `create` write a temporary path, then renaming it into place: for
/// writers that insist on opening the file themselves. On error the temporary file is removed.
pub fn create_atomic(path: &Path, create: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a directory; expected a file path to write",
        ));
    }
    let tmp = temp_path_for(path);
    let result = create(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("keel-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        let err = write_atomic(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "temp file left behind"
        );
        write_atomic(&target, |w| w.write_all(b"whole")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert!(write_atomic(&dir, |w| w.write_all(b"x")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
