//! Datasets: shape, element type, and the stored bytes (compact or contiguous), read on
//! demand, plus conversion of float16/32/64 to f32.

use std::sync::Arc;

use half::f16;

use super::cursor::to_usize;
use super::dataspace;
use super::datatype::{self, Dtype};
use super::error::{Error, Result, bail};
use super::layout::{self, Layout};
use super::object_header::{FLAG_SHARED, ObjectHeader, kind};
use super::source::Reader;

/// Message type of the external data files list (data kept outside the HDF5 file).
const EXTERNAL_FILES: u16 = 0x07;

enum Storage {
    Compact(Vec<u8>),
    /// Absolute file offset and size in bytes.
    Contiguous {
        offset: u64,
        size: u64,
    },
    /// Space allocated lazily and never written.
    Unwritten,
    Unsupported(String),
}

pub struct Dataset {
    reader: Arc<Reader>,
    path: String,
    shape: Vec<u64>,
    dtype: Dtype,
    /// Size of the stored data: elements × element size (checked at open).
    bytes: u64,
    storage: Storage,
}

impl Dataset {
    pub(super) fn open(
        reader: Arc<Reader>,
        path: String,
        header: &ObjectHeader,
    ) -> Result<Dataset> {
        Dataset::parse(reader, &path, header).map_err(|e| e.context(format!("dataset {path}")))
    }

    fn parse(reader: Arc<Reader>, path: &str, header: &ObjectHeader) -> Result<Dataset> {
        let sizes = reader.sizes;
        let message = |k: u16, what: &str| {
            header
                .find(k)
                .ok_or_else(|| Error::new(format!("no {what} message")))
        };
        let space = dataspace::parse(&message(kind::DATASPACE, "dataspace")?.data, sizes)?;
        let type_message = message(kind::DATATYPE, "datatype")?;
        if type_message.flags & FLAG_SHARED != 0 {
            return Err(Error::unsupported("shared (committed) datatype"));
        }
        let dt = datatype::parse(&type_message.data, sizes)?;
        let bytes = space
            .elements
            .checked_mul(dt.size as u64)
            .ok_or_else(|| Error::new("data size (elements × element size) overflows"))?;
        let storage = match layout::parse(&message(kind::LAYOUT, "data layout")?.data, sizes)? {
            _ if header.has(EXTERNAL_FILES) => Storage::Unsupported("external data files".into()),
            Layout::Compact(data) => {
                if data.len() as u64 != bytes {
                    bail!(
                        "compact data holds {} bytes but shape × element size is {bytes}",
                        data.len()
                    );
                }
                Storage::Compact(data)
            }
            Layout::Contiguous { addr: None, .. } => Storage::Unwritten,
            Layout::Contiguous {
                addr: Some(addr),
                size,
            } => {
                let size = size.unwrap_or(bytes);
                if size != bytes {
                    bail!("storage holds {size} bytes but shape × element size is {bytes}");
                }
                Storage::Contiguous {
                    offset: reader.absolute(addr)?,
                    size,
                }
            }
            Layout::Chunked if header.has(kind::FILTER_PIPELINE) => Storage::Unsupported(
                "chunked storage not supported (the dataset is also filtered/compressed)".into(),
            ),
            Layout::Chunked => Storage::Unsupported("chunked storage not supported".into()),
            Layout::Virtual => Storage::Unsupported("virtual dataset storage not supported".into()),
        };
        Ok(Dataset {
            reader,
            path: path.to_string(),
            shape: space.shape,
            dtype: dt.dtype,
            bytes,
            storage,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Dimensions; empty for a scalar.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub fn dtype(&self) -> &Dtype {
        &self.dtype
    }

    /// File offset of contiguous data (`None` for compact or unwritten storage).
    pub fn data_offset(&self) -> Option<u64> {
        match self.storage {
            Storage::Contiguous { offset, .. } => Some(offset),
            _ => None,
        }
    }

    /// The stored bytes, in the file's byte order, read straight into the returned buffer.
    pub fn read_raw(&self) -> Result<Vec<u8>> {
        self.check_readable()?;
        match &self.storage {
            Storage::Compact(data) => Ok(data.clone()),
            Storage::Contiguous { offset, size } => {
                let mut out = vec![0u8; to_usize(*size, "data size")?];
                self.reader
                    .read_exact(*offset, &mut out, "data")
                    .map_err(|e| e.context(self.label()))?;
                Ok(out)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn element_count(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Values converted to f32 (float16, float32 and float64, either byte order). Other
    /// types are refused: silently converting integer weights would hide a broken file.
    pub fn read_f32(&self) -> Result<Vec<f32>> {
        // Checked first, so the allocation below is backed by the file.
        self.float_size()?;
        self.check_readable()?;
        let mut out = vec![0f32; to_usize(self.element_count(), "element count")?];
        self.read_f32_into(&mut out)?;
        Ok(out)
    }

    /// Like [`Dataset::read_f32`], into a caller's buffer of exactly `element_count()` values
    /// (so a 400 MB weight goes straight into its tensor, without a second copy).
    pub fn read_f32_into(&self, out: &mut [f32]) -> Result<()> {
        let (size, le) = self.float_size()?;
        self.check_readable()?;
        if self.bytes != out.len() as u64 * size as u64 {
            bail!(
                "{}: holds {} bytes of {}, but {} values were asked for",
                self.label(),
                self.bytes,
                self.dtype,
                out.len()
            );
        }
        let mut done = 0usize;
        // Blocks of 1 MiB keep memory at the output size plus one block for huge datasets.
        self.for_each_block(1 << 20, |block| {
            let n = block.len() / size;
            let Some(dst) = out.get_mut(done..done + n) else {
                return;
            };
            done += n;
            match (size, le) {
                (2, true) => decode(block, dst, |b: [u8; 2]| f16::from_le_bytes(b).to_f32()),
                (2, false) => decode(block, dst, |b: [u8; 2]| f16::from_be_bytes(b).to_f32()),
                (4, true) => decode(block, dst, f32::from_le_bytes),
                (4, false) => decode(block, dst, f32::from_be_bytes),
                (8, true) => decode(block, dst, |b: [u8; 8]| f64::from_le_bytes(b) as f32),
                _ => decode(block, dst, |b: [u8; 8]| f64::from_be_bytes(b) as f32),
            }
        })?;
        if done != out.len() {
            bail!("{}: read {done} of {} values", self.label(), out.len());
        }
        Ok(())
    }

    /// Element size and byte order of a floating-point dataset; an error for any other type.
    fn float_size(&self) -> Result<(usize, bool)> {
        match self.dtype {
            Dtype::Float {
                size,
                little_endian,
            } if matches!(size, 2 | 4 | 8) => Ok((size, little_endian)),
            _ => bail!(
                "dataset {} has dtype {}; expected floating point",
                self.path,
                self.dtype
            ),
        }
    }

    fn label(&self) -> String {
        format!("dataset {}", self.path)
    }

    /// Errors for storage we cannot read, and for contiguous data that runs past the end of
    /// the file. Empty datasets are always readable (libhdf5 never allocates their storage).
    pub fn check_readable(&self) -> Result<()> {
        match &self.storage {
            _ if self.bytes == 0 => Ok(()),
            Storage::Compact(_) => Ok(()),
            Storage::Contiguous { offset, size } => self
                .reader
                .check_range(*offset, *size, "data")
                .map_err(|e| e.context(self.label())),
            Storage::Unsupported(what) => bail!("{}: {what}", self.label()),
            Storage::Unwritten => bail!(
                "{}: dataset has no data written (its storage address is undefined)",
                self.label()
            ),
        }
    }

    /// Calls `f` on the data in blocks of at most `block` bytes (a multiple of 8, so no
    /// element is split), reading contiguous data straight from the file.
    fn for_each_block(&self, block: usize, mut f: impl FnMut(&[u8])) -> Result<()> {
        match &self.storage {
            Storage::Compact(data) => data.chunks(block).for_each(f),
            Storage::Contiguous { offset, size } => {
                let total = to_usize(*size, "data size")?;
                let mut buf = vec![0u8; total.min(block)];
                let mut done = 0usize;
                while done < total {
                    let n = (total - done).min(block);
                    let part = buf.get_mut(..n).unwrap_or_default();
                    let at = offset
                        .checked_add(done as u64)
                        .ok_or_else(|| Error::new("offset overflows"))?;
                    self.reader
                        .read_exact(at, part, "data")
                        .map_err(|e| e.context(self.label()))?;
                    f(part);
                    done += n;
                }
            }
            Storage::Unwritten | Storage::Unsupported(_) => {}
        }
        Ok(())
    }
}

/// Decode `block` as elements of `N` bytes into `dst` (lengths already match).
fn decode<const N: usize>(block: &[u8], dst: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (d, b) in dst.iter_mut().zip(block.as_chunks::<N>().0) {
        *d = f(*b);
    }
}
