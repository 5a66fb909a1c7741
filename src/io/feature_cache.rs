//! Features on disk, one file per image, so the frozen base runs over each photo once.
//!
//! An entry's name is a SHA-256 of everything that decides the features: the base weights'
//! checksum, the model, the layer, the input size, the preprocessing, the resize filter and the
//! image file's content. Renaming or moving a photo keeps its entry; changing any pixel,
//! weight or setting makes a new one. Entries are `.npy` files written atomically, so an
//! interrupted run leaves only whole entries, and an unreadable entry is recomputed.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::npy;
use crate::digest::hex;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Bumped when the entry format or the meaning of a key changes.
const CACHE_VERSION: &str = "keel-features-v1";

/// A folder of cached feature maps.
#[derive(Clone, Debug)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// SHA-256 of a file's bytes, as hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FeatureCache { dir: dir.into() }
    }

    /// `$KEEL_HOME/features` (default `~/.cache/keel/features`).
    pub fn default_dir() -> PathBuf {
        super::fetch::keel_home().join("features")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name for an image with content hash `file_sha256` under the base settings
    /// `base_key` (see [`crate::transfer::FrozenBase::cache_key`]).
    pub fn key(base_key: &str, file_sha256: &str) -> String {
        let mut h = Sha256::new();
        h.update(CACHE_VERSION.as_bytes());
        h.update(b"\n");
        h.update(base_key.as_bytes());
        h.update(b"\n");
        h.update(file_sha256.as_bytes());
        hex(&h.finalize())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.npy"))
    }

    /// The cached features, if present, readable, of `shape` and finite.
    pub fn get(&self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let arr = npy::decode(&bytes).ok()?;
        let ok = arr.shape == shape && arr.data.iter().all(|v| v.is_finite());
        ok.then_some(arr.data)
    }

    /// Store features under `key`.
    pub fn put(&self, key: &str, features: &Tensor) -> Result<()> {
        let path = self.path(key);
        let parent = path.parent().expect("entries live in a subfolder");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        npy::write_f32(&path, features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_misses() {
        let dir = std::env::temp_dir().join(format!("keel-fcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = FeatureCache::new(&dir);
        let k1 = FeatureCache::key("base-a", "file-1");
        let k2 = FeatureCache::key("base-b", "file-1");
        assert_ne!(k1, k2);
        assert_eq!(k1, FeatureCache::key("base-a", "file-1"));
        assert_eq!(cache.get(&k1, &[2, 3]), None);
        let t = Tensor::from_vec([2, 3], &[1.0, -2.0, 3.5, 4.0, 5.0, 6.25]).unwrap();
        cache.put(&k1, &t).unwrap();
        assert_eq!(cache.get(&k1, &[2, 3]).unwrap(), t.data());
        assert_eq!(cache.get(&k1, &[3, 2]), None, "another shape is a miss");
        // A damaged entry is a miss, and is replaced by the next put.
        std::fs::write(cache.path(&k1), b"garbage").unwrap();
        assert_eq!(cache.get(&k1, &[2, 3]), None);
        cache.put(&k1, &t).unwrap();
        assert!(cache.get(&k1, &[2, 3]).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
