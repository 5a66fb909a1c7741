//! Global heap collections ("GCOL"): where variable-length strings live. A vlen string
//! element only holds (length, collection address, object index).

use std::collections::HashMap;
use std::ops::Range;

use super::cursor::{Cursor, to_usize};
use super::error::{Error, Result, bail};
use super::source::Reader;

/// One collection's bytes and where each object's data is in them.
struct Collection {
    bytes: Vec<u8>,
    objects: HashMap<u16, Range<usize>>,
}

/// Reads collections on demand and keeps them for the lifetime of one attribute read
/// (all strings of one attribute usually share a collection).
pub(super) struct GlobalHeap<'r> {
    reader: &'r Reader,
    collections: HashMap<u64, Collection>,
    /// Bytes we may still read: distinct collections never add up to more than the file.
    budget: u64,
}

impl<'r> GlobalHeap<'r> {
    pub fn new(reader: &'r Reader) -> Self {
        GlobalHeap {
            reader,
            collections: HashMap::new(),
            budget: reader.len(),
        }
    }

    /// The bytes of object `index` in the collection at `addr`.
    pub fn object(&mut self, addr: u64, index: u32) -> Result<&[u8]> {
        let place = || format!("global heap collection at address {addr}");
        if !self.collections.contains_key(&addr) {
            let collection = self.load(addr).map_err(|e| e.context(place()))?;
            self.collections.insert(addr, collection);
        }
        let found = self.collections.get(&addr).and_then(|c| {
            let range = c.objects.get(&u16::try_from(index).ok()?)?;
            c.bytes.get(range.clone())
        });
        found.ok_or_else(|| Error::new(format!("{}: object {index} not found", place())))
    }

    /// Header: "GCOL", version 1, 3 reserved bytes, collection size (padded to 8 bytes).
    fn load(&mut self, addr: u64) -> Result<Collection> {
        let sizes = self.reader.sizes;
        let header_len = (8 + sizes.length).next_multiple_of(8);
        let header = self
            .reader
            .read(addr, header_len as u64, "global heap collection")?;
        let mut c = Cursor::new(&header);
        c.signature(b"GCOL", "global heap collection")?;
        let version = c.u8()?;
        if version != 1 {
            return Err(Error::unsupported(format!("global heap version {version}")));
        }
        c.skip(3)?;
        let size = c.length(sizes)?;
        if size < header_len as u64 {
            bail!("collection size {size} is smaller than its header");
        }
        self.budget = match self.budget.checked_sub(size) {
            Some(left) => left,
            None => bail!("global heap collections add up to more bytes than the file holds"),
        };
        let bytes = self.reader.read(addr, size, "global heap collection")?;
        let objects = index_objects(&bytes, header_len, sizes.length)?;
        Ok(Collection { bytes, objects })
    }
}

/// Finds every object: (index u16, reference count u16, reserved u32, size), padded to 8
/// bytes, then the data, padded to 8 bytes. Index 0 marks the free space at the end.
fn index_objects(
    bytes: &[u8],
    header_len: usize,
    length_size: usize,
) -> Result<HashMap<u16, Range<usize>>> {
    let object_header_len = (8 + length_size).next_multiple_of(8);
    let mut objects = HashMap::new();
    let mut c = Cursor::new(bytes);
    c.skip(header_len)?;
    while c.remaining() >= object_header_len {
        let id = c.u16()?;
        c.skip(6)?;
        let size = to_usize(c.uint(length_size)?, "global heap object size")?;
        c.align(8)?;
        if id == 0 {
            break;
        }
        let start = c.pos();
        c.skip(size)?;
        objects.insert(id, start..c.pos());
        c.skip(((8 - size % 8) % 8).min(c.remaining()))?;
    }
    Ok(objects)
}
