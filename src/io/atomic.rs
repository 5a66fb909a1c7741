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
        readable_by_all(&tmp).map_err(|e| Error::io(path, e))?;
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

/// Give a file written by another library the mode a plain `File::create` gives (some write
/// through private temporary files, mode 0600, which other users and tools then cannot read).
#[cfg(unix)]
fn readable_by_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn readable_by_all(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Whether `dir` may be created (or replaced, with `overwrite`): returns whether it exists
/// and whether it is empty. Commands call it before long work, to fail at once.
pub fn check_dir_target(dir: &Path, overwrite: bool) -> Result<(bool, bool)> {
    let exists = dir.exists();
    if exists && !dir.is_dir() {
        return Err(Error::file(dir, "exists and is not a folder"));
    }
    let empty = exists
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_none();
    if exists && !empty && !overwrite {
        return Err(Error::file(
            dir,
            "already exists and is not empty; choose another output folder or pass --overwrite",
        ));
    }
    Ok((exists, empty))
}

/// Create the folder `dir` by letting `fill` write a temporary sibling folder, then renaming
/// it into place, so readers see the whole folder or none. With `overwrite`, an existing `dir`
/// is replaced (moved aside, then removed once the new one is in place); without it, an
/// existing non-empty `dir` is an error. On error nothing is left behind.
pub fn create_dir_atomic(
    dir: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let (exists, empty) = check_dir_target(dir, overwrite)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_path_for(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = fill(&tmp).and_then(|()| {
        if exists && !empty {
            let old = dir.with_file_name(format!(
                ".{}.keel-old-{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
            if let Err(e) = std::fs::rename(&tmp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(Error::io(dir, e));
            }
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        } else {
            // rename(2) replaces an empty folder.
            std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
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

    #[test]
    fn folders_appear_whole_or_not_at_all() {
        let root = std::env::temp_dir().join(format!("keel-atomic-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out = root.join("model");
        let failed = create_dir_atomic(&out, false, |tmp| {
            std::fs::write(tmp.join("a"), b"1").unwrap();
            Err(Error::Invalid("plot failed".into()))
        });
        assert!(failed.is_err());
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "temp folder left"
        );
        create_dir_atomic(&out, false, |tmp| {
            std::fs::write(tmp.join("a"), b"1").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        let again = create_dir_atomic(&out, false, |_| Ok(()));
        assert!(again.unwrap_err().to_string().contains("--overwrite"));
        create_dir_atomic(&out, true, |tmp| {
            std::fs::write(tmp.join("b"), b"2").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            1,
            "old folder left"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
