//! Where the bytes come from, and the one place that checks a read against the file's end.
//!
//! A weights file can be hundreds of megabytes, so a `std::fs::File` is read with positional
//! reads on demand instead of being loaded whole; fuzzing and tests use an in-memory `Vec<u8>`.

use super::cursor::{Sizes, to_usize};
use super::error::{Error, Result, bail};

/// Random-access bytes of known length.
pub trait ByteSource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; fails if the range is not fully available.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?));
        match range.and_then(|r| self.get(r)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// An open file plus its length, taken once at open time.
pub(super) struct DiskFile {
    pub file: std::fs::File,
    pub len: u64,
}

impl ByteSource for DiskFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// The byte source plus what the superblock says about addressing: every object handle
/// shares one `Reader` through an `Arc`.
pub(super) struct Reader {
    source: Box<dyn ByteSource>,
    len: u64,
    /// Absolute offset that all file addresses are relative to (non-zero with a user block).
    base: u64,
    pub sizes: Sizes,
}

impl Reader {
    pub fn new(source: Box<dyn ByteSource>, base: u64, sizes: Sizes) -> Reader {
        let len = source.len();
        Reader {
            source,
            len,
            base,
            sizes,
        }
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Absolute file offset of a file address.
    pub fn absolute(&self, addr: u64) -> Result<u64> {
        self.base
            .checked_add(addr)
            .ok_or_else(|| Error::new(format!("address {addr} overflows")))
    }

    /// Checks that `len` bytes at absolute offset `start` lie inside the file.
    pub fn check_range(&self, start: u64, len: u64, what: &str) -> Result<()> {
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => bail!(
                "{what} at offset {start} + {len} bytes lies beyond the end of the file ({} bytes)",
                self.len
            ),
        }
    }

    /// Reads `len` bytes at file address `addr`. The range is checked before anything is
    /// allocated, so a corrupt length can never make us allocate more than the file holds.
    pub fn read(&self, addr: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        let start = self.absolute(addr)?;
        self.check_range(start, len, what)?;
        let mut buf = vec![0u8; to_usize(len, what)?];
        self.read_exact(start, &mut buf, what)?;
        Ok(buf)
    }

    /// Fills `buf` from absolute offset `start` (range checked).
    pub fn read_exact(&self, start: u64, buf: &mut [u8], what: &str) -> Result<()> {
        self.check_range(start, buf.len() as u64, what)?;
        self.source.read_at(start, buf).map_err(|e| {
            Error::new(format!(
                "{what}: reading {} bytes at offset {start} failed: {e}",
                buf.len()
            ))
        })
    }
}
