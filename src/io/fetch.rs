//! Downloading the official Keras weight files, as `keras.applications` does, into keel's cache.
//!
//! The files are the ones Keras downloads (same URLs, same md5 checks as Keras's `get_file`).
//! A download lands in a temporary file next to its destination and is renamed into place only
//! after its checksum matches, so the cache never holds a partial or corrupt file.

use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::error::{Error, Result};
use crate::nn::Arch;

/// Where Keras's applications weights live.
const KERAS_BASE_URL: &str = "https://storage.googleapis.com/tensorflow/keras-applications";

/// Overrides the base URL (a mirror, or a local server in tests).
pub const BASE_URL_ENV: &str = "KEEL_WEIGHTS_URL";
/// Overrides the cache directory (default `~/.cache/keel`).
pub const HOME_ENV: &str = "KEEL_HOME";

/// One official Keras weights file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KerasWeightsFile {
    pub arch: Arch,
    pub include_top: bool,
    pub file_name: &'static str,
    /// The md5 Keras checks (`file_hash` in `keras/src/applications/vgg16.py` / `vgg19.py`).
    pub md5: &'static str,
}

/// The file `keras.applications.VGG16/VGG19(weights="imagenet", include_top=...)` downloads.
pub fn official(arch: Arch, include_top: bool) -> KerasWeightsFile {
    let (file_name, md5) = match (arch, include_top) {
        (Arch::Vgg16, true) => (
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "64373286793e3c8b2b4e3219cbf3544b",
        ),
        (Arch::Vgg16, false) => (
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "6d6bbae143d832006294945121d1f1fc",
        ),
        (Arch::Vgg19, true) => (
            "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
            "cbe5617147190e668d6c5d5026f83318",
        ),
        (Arch::Vgg19, false) => (
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "253f8cb515780f3b799900260a226db6",
        ),
    };
    KerasWeightsFile {
        arch,
        include_top,
        file_name,
        md5,
    }
}

impl KerasWeightsFile {
    /// The download URL (`$KEEL_WEIGHTS_URL/<arch>/<file>` when the variable is set).
    pub fn url(&self) -> String {
        let base = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| KERAS_BASE_URL.to_string());
        format!(
            "{}/{}/{}",
            base.trim_end_matches('/'),
            self.arch.name(),
            self.file_name
        )
    }

    /// Where the file lives in keel's cache.
    pub fn cached_path(&self) -> PathBuf {
        keel_home().join("weights").join(self.file_name)
    }
}

/// keel's cache directory: `$KEEL_HOME`, else `~/.cache/keel`.
pub fn keel_home() -> PathBuf {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("keel")
}

/// The md5 of a file, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::digest::hex(&hasher.finalize()))
}

/// The cached file if it is there and intact (a corrupt one is reported, not used).
pub fn cached(file: &KerasWeightsFile) -> Result<Option<PathBuf>> {
    Ok((cached_md5(file)?.as_deref() == Some(file.md5)).then(|| file.cached_path()))
}

/// The md5 of whatever file is at `file`'s cache path, Keras's or not.
fn cached_md5(file: &KerasWeightsFile) -> Result<Option<String>> {
    let path = file.cached_path();
    if path.is_file() {
        md5_file(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Make sure `file` is in the cache, downloading it if needed; returns its path.
/// `progress` shows a progress bar on stderr.
pub fn fetch(file: &KerasWeightsFile, progress: bool) -> Result<PathBuf> {
    let dest = file.cached_path();
    // A file already at the cache path that is not Keras's (another build of the weights, or
    // a damaged copy) is not used, but it is named: the user put it there on purpose.
    let found = cached_md5(file)?;
    if found.as_deref() == Some(file.md5) {
        return Ok(dest);
    }
    let offline_hint = match &found {
        Some(got) => format!(
            "{} is in keel's cache but is not Keras's file: its md5 is {got}, Keras's is {} (a \
             damaged copy, or other weights). To use it anyway, pass it with --weights {}",
            dest.display(),
            file.md5,
            dest.display()
        ),
        None => format!(
            "keel needs network access to fetch the {} weights. Without it, copy the file {} \
             (md5 {}) from another machine and pass it with --weights FILE, or place it at {}",
            file.arch,
            file.file_name,
            file.md5,
            dest.display()
        ),
    };
    if progress {
        eprintln!("downloading {} into keel's cache", file.file_name);
    }
    download_verified(&file.url(), &dest, file.md5, progress, &offline_hint)?;
    Ok(dest)
}

/// Download `url` to `dest`, keeping it only if its md5 is `md5` (lowercase hex). The file
/// appears at `dest` complete and verified, or not at all. `offline_hint` is added to the
/// message when the download itself fails (not when the checksum does).
#[cfg(feature = "fetch")]
pub fn download_verified(
    url: &str,
    dest: &Path,
    md5: &str,
    progress: bool,
    offline_hint: &str,
) -> Result<()> {
    use std::io::Write;
    use std::time::Duration;
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let failed = |why: String| {
        Error::Network(
            format!("cannot download {url}: {why}\n{offline_hint}")
                .trim_end()
                .to_string(),
        )
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(response.body().content_length().unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = response.body_mut().as_reader();
    let mut mismatch = None;
    let written = super::atomic::write_atomic(dest, |w| {
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
        let got = crate::digest::hex(&hasher.finalize());
        if got != md5 {
            mismatch = Some(got);
            return Err(std::io::Error::other("checksum mismatch"));
        }
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(got) = mismatch {
        return Err(Error::Network(format!(
            "downloaded {url} but its md5 is {got}, not the expected {md5}: the file is corrupt \
             or not the official one; nothing was kept"
        )));
    }
    written.map_err(|e| failed(format!("download interrupted: {e}")))
}

/// Without the `fetch` feature keel downloads nothing: it says where the file would come from.
#[cfg(not(feature = "fetch"))]
pub fn download_verified(
    url: &str,
    _dest: &Path,
    _md5: &str,
    _progress: bool,
    offline_hint: &str,
) -> Result<()> {
    Err(Error::Network(
        format!(
            "cannot download {url}: this keel was built without the `fetch` feature\n{offline_hint}"
        )
        .trim_end()
        .to_string(),
    ))
}
