//! A small HDF5 reader for Keras weight files, in plain Rust with no dependencies, and (in
//! [`write`](mod@write)) the writer `keel export --format keras` uses, which writes only what Keras reads.
//!
//! It reads what Keras and h5py write: superblocks v0-v3, object headers v1/v2, old-style
//! (symbol table) and compact new-style (link message) groups, attributes with fixed- or
//! variable-length strings, and datasets of ints and IEEE floats in compact or contiguous
//! storage. Chunked or compressed data, dense (fractal heap) links and attributes, soft and
//! external links, and shared datatypes give a clear "unsupported" error instead.
//!
//! The input is untrusted: every read is bounds-checked, every size computation checked,
//! nothing is allocated beyond what the file can back, and every walk over linked
//! structures (header continuations, B-trees) is bounded, so a malformed file gives an
//! `Err`, never a panic, a hang or a huge allocation.
//!
//! ```ignore
//! let file = hdf5::File::open(Path::new("vgg16.h5"))?;
//! let conv = file.root()?.dataset("block1_conv1/block1_conv1_W_1:0")?.expect("present");
//! let weights: Vec<f32> = conv.read_f32()?;
//! ```

mod attribute;
mod checksum;
mod cursor;
mod dataset;
mod dataspace;
mod datatype;
mod error;
mod global_heap;
mod group;
mod layout;
mod link;
mod object_header;
mod source;
mod superblock;
mod symbol_table;
mod walk;
pub mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use attribute::Attribute;
pub use dataset::Dataset;
pub use datatype::{Dtype, StrPad};
pub use error::{Error, Result};
pub use group::{Group, ObjectKind};
pub use source::ByteSource;
pub use walk::touch_everything;

/// An open HDF5 file. Groups and datasets opened from it share its byte source.
pub struct File {
    reader: Arc<source::Reader>,
    root: u64,
}

impl File {
    /// Opens a file on disk. Only the superblock is read now; everything else on demand.
    pub fn open(path: &std::path::Path) -> Result<File> {
        let open = || -> std::io::Result<source::DiskFile> {
            let file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            Ok(source::DiskFile { file, len })
        };
        let disk = open().map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        // Format errors do not repeat the path: the caller knows which file it opened.
        File::from_source(Box::new(disk))
    }

    /// Reads a file held in memory (tests, fuzzing, embedded data).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<File> {
        File::from_source(Box::new(bytes))
    }

    /// Any byte source.
    pub fn from_source(source: Box<dyn ByteSource>) -> Result<File> {
        let sb = superblock::read(source.as_ref())?;
        let reader = Arc::new(source::Reader::new(source, sb.base, sb.sizes));
        Ok(File {
            reader,
            root: sb.root,
        })
    }

    /// The root group, "/".
    pub fn root(&self) -> Result<Group> {
        Group::open(self.reader.clone(), "/".to_string(), self.root)
    }
}
