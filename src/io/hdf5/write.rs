//! A small HDF5 writer: groups, scalar string attributes and float32 datasets of any rank,
//! which is all a Keras 3 `.weights.h5` holds (`keel export --format keras`), and no more.
//!
//! Why this layout (the one h5py writes with `libver='latest'`, minus what is optional):
//! - Superblock version 2 and version-2 ("OHDR") object headers whose groups list their
//!   members as link messages in their own header ("compact" storage). A group is then one
//!   header: no B-trees, local heaps or symbol-table nodes to write, as h5py's default
//!   layout needs. libhdf5 reads this since 1.8 (2008), and so does keel's own reader.
//! - Attribute strings are variable-length UTF-8, kept in one global heap collection: what
//!   h5py writes for a Python `str`, so h5py (and Keras) read them back as `str`, not `bytes`.
//! - Datasets are float32 little-endian in contiguous storage: no chunks, no filters. Each
//!   dataset's data is one block at the end of the file, streamed from the caller's slice
//!   without a copy (VGG16's weights are 58 MB).
//!
//! The file is: superblock | global heap collection (when there are strings) | object
//! headers, root first, in pre-order | dataset data. Every address is fixed before a byte is
//! written, because a header's size never depends on the addresses inside it: headers are
//! encoded once with placeholder addresses to measure them, then again for real.
//!
//! ```ignore
//! let mut root = GroupBuilder::new();
//! let vars = root.group("layers")?.group("conv2d")?.group("vars")?;
//! vars.attr("name", "block1_conv1")?;
//! vars.dataset("0", &[3, 3, 3, 64], kernel)?;
//! root.write_file(Path::new("model.weights.h5"))?; // atomically
//! ```

use std::io::Write;
use std::path::Path;

use super::checksum::lookup3;
use super::error::{Error, Result, bail};
use super::object_header::kind;

/// HDF5's "undefined address": all bits set.
const UNDEF: u64 = u64::MAX;
/// Signature, version, two widths, flags, four 8-byte addresses, checksum.
const SUPERBLOCK_LEN: u64 = 48;
/// libhdf5 never makes a global heap collection smaller than this (`H5HG_MINSIZE`), and reads
/// that much of one up front; a smaller one could be read past the end of a short file.
const HEAP_MIN: usize = 4096;
/// Compact groups: libhdf5's default limit before it moves links to dense storage. Larger
/// groups state their own limit (see [`group_info`]).
const DEFAULT_MAX_COMPACT: usize = 8;
/// HDF5's own limit on rank.
const MAX_RANK: usize = 32;
/// Message type 0x05, not read by keel's reader (so not in `object_header::kind`).
const FILL_VALUE: u16 = 0x05;

/// A group to write: its attributes and members, stored in the order they were added (the
/// order keel's reader lists them in; h5py lists members sorted by name).
#[derive(Default)]
pub struct GroupBuilder<'a> {
    attrs: Vec<(String, String)>,
    members: Vec<(String, Member<'a>)>,
}

enum Member<'a> {
    Group(GroupBuilder<'a>),
    /// Row-major values of `shape` (empty shape: a scalar).
    Dataset {
        shape: Vec<u64>,
        data: &'a [f32],
    },
}

impl<'a> GroupBuilder<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the scalar string attribute `name` = `value`.
    pub fn attr(&mut self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() || name.contains('\0') || name.len() >= usize::from(u16::MAX) {
            bail!("attribute name {name:?}: must be 1 to 65534 bytes without NUL");
        }
        // libhdf5 stores the bytes fine, but C readers (and h5py) stop at the first NUL.
        if value.contains('\0') {
            bail!("attribute {name:?}: the value contains a NUL byte");
        }
        if u32::try_from(value.len()).is_err() {
            bail!("attribute {name:?}: the value is longer than 4 GiB");
        }
        if self.attrs.iter().any(|(n, _)| n == name) {
            bail!("attribute {name:?} is added twice");
        }
        self.attrs.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// Adds the empty member group `name` and returns it, to fill.
    pub fn group(&mut self, name: &str) -> Result<&mut GroupBuilder<'a>> {
        self.check_member(name)?;
        self.members
            .push((name.to_string(), Member::Group(GroupBuilder::new())));
        match self.members.last_mut() {
            Some((_, Member::Group(g))) => Ok(g),
            _ => bail!("group {name:?} vanished"),
        }
    }

    /// Adds the float32 dataset `name` of `shape` (row-major `data`; an empty shape is a
    /// scalar). The data is borrowed until the file is written.
    pub fn dataset(&mut self, name: &str, shape: &[usize], data: &'a [f32]) -> Result<()> {
        self.check_member(name)?;
        if shape.len() > MAX_RANK {
            bail!(
                "dataset {name:?}: rank {} exceeds HDF5's maximum of {MAX_RANK}",
                shape.len()
            );
        }
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elements != Some(data.len()) {
            bail!(
                "dataset {name:?}: shape {shape:?} does not hold the {} values given",
                data.len()
            );
        }
        let shape = shape.iter().map(|&d| d as u64).collect();
        self.members
            .push((name.to_string(), Member::Dataset { shape, data }));
        Ok(())
    }

    /// A link name: what h5py would accept as one path component.
    fn check_member(&self, name: &str) -> Result<()> {
        if name.is_empty() || name == "." || name.contains(['/', '\0']) {
            bail!("member name {name:?}: must be non-empty, not \".\", without '/' or NUL");
        }
        if name.len() > usize::from(u16::MAX) {
            bail!("member name of {} bytes is too long", name.len());
        }
        if self.members.iter().any(|(n, _)| n == name) {
            bail!("member {name:?} is added twice");
        }
        Ok(())
    }

    /// The whole file in memory (tests; small files).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let plan = Plan::new(self)?;
        let mut out = Vec::new();
        plan.write(&mut out)
            .map_err(|e| Error::new(format!("writing to memory: {e}")))?;
        Ok(out)
    }

    /// Writes this group as the root of a new HDF5 file at `path`, atomically: readers see
    /// the old file or the whole new one, and a failure leaves nothing behind.
    pub fn write_file(&self, path: &Path) -> crate::error::Result<()> {
        let plan = Plan::new(self).map_err(|e| crate::error::Error::file(path, e.to_string()))?;
        crate::io::atomic::write_atomic(path, |w| plan.write(w))
    }
}

/// One object of the file, in pre-order (index 0 is the root group).
enum Object<'t, 'a> {
    /// Links as (name, object index); attributes as (name, global heap index, value length).
    Group {
        links: Vec<(&'t str, usize)>,
        attrs: Vec<(&'t str, u16, u32)>,
    },
    Dataset {
        shape: &'t [u64],
        data: &'a [f32],
    },
}

/// Everything placed: the bytes of the metadata, the address of every piece.
struct Plan<'a> {
    superblock: Vec<u8>,
    /// The global heap collection, at [`SUPERBLOCK_LEN`]; empty when there are no strings.
    heap: Vec<u8>,
    /// Each object's header and its address.
    headers: Vec<(u64, Vec<u8>)>,
    /// Each non-empty dataset's data and its address, in file order.
    data: Vec<(u64, &'a [f32])>,
    /// The file's length, which the superblock states.
    eof: u64,
}

impl<'a> Plan<'a> {
    fn new(root: &GroupBuilder<'a>) -> Result<Plan<'a>> {
        let mut objects = Vec::new();
        let mut strings = Vec::new();
        flatten(root, &mut objects, &mut strings)?;
        let heap = if strings.is_empty() {
            Vec::new()
        } else {
            heap_collection(&strings)?
        };
        let heap_addr = SUPERBLOCK_LEN;
        let n = objects.len();

        // Measure each header with placeholder addresses, then place headers, then data.
        let mut at = SUPERBLOCK_LEN + heap.len() as u64;
        let mut header_addr = Vec::with_capacity(n);
        for (i, object) in objects.iter().enumerate() {
            header_addr.push(at);
            at = align8(at + encode(object, i, &[], &[], heap_addr, true)?.len() as u64);
        }
        let mut data_addr = vec![UNDEF; n];
        let mut data = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            if let Object::Dataset { data: values, .. } = object
                && !values.is_empty()
            {
                data_addr[i] = at;
                data.push((at, *values));
                at = align8(at + 4 * values.len() as u64);
            }
        }
        let eof = at;

        let mut headers = Vec::with_capacity(n);
        for (i, (object, &addr)) in objects.iter().zip(&header_addr).enumerate() {
            let header = encode(object, i, &header_addr, &data_addr, heap_addr, false)?;
            headers.push((addr, header));
        }
        Ok(Plan {
            superblock: superblock(eof, header_addr.first().copied().unwrap_or(UNDEF)),
            heap,
            headers,
            data,
            eof,
        })
    }

    /// Streams the file: every piece at its address, zeros in the gaps.
    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut pos = 0u64;
        let mut put = |w: &mut dyn Write, addr: u64, bytes: &[u8]| -> std::io::Result<()> {
            if addr < pos {
                return Err(std::io::Error::other("HDF5 writer: pieces overlap (a bug)"));
            }
            w.write_all(&vec![0u8; (addr - pos) as usize])?;
            w.write_all(bytes)?;
            pos = addr + bytes.len() as u64;
            Ok(())
        };
        put(w, 0, &self.superblock)?;
        put(w, SUPERBLOCK_LEN, &self.heap)?;
        for (addr, header) in &self.headers {
            put(w, *addr, header)?;
        }
        let mut buf = Vec::new();
        for &(mut at, values) in &self.data {
            // Encoded a block at a time: little-endian whatever the host's byte order.
            for block in values.chunks(1 << 14) {
                buf.clear();
                buf.extend(block.iter().flat_map(|v| v.to_le_bytes()));
                put(w, at, &buf)?;
                at += buf.len() as u64;
            }
        }
        put(w, self.eof, &[])
    }
}

fn align8(at: u64) -> u64 {
    at.next_multiple_of(8)
}

/// Lists the tree's objects in pre-order and its attribute values in heap order; returns the
/// index of `group`.
fn flatten<'t, 'a>(
    group: &'t GroupBuilder<'a>,
    objects: &mut Vec<Object<'t, 'a>>,
    strings: &mut Vec<&'t str>,
) -> Result<usize> {
    let me = objects.len();
    objects.push(Object::Group {
        links: Vec::new(),
        attrs: Vec::new(),
    });
    let mut attrs = Vec::new();
    for (name, value) in &group.attrs {
        strings.push(value);
        // Heap object indices are 16-bit, and 0 marks free space.
        let index = u16::try_from(strings.len())
            .map_err(|_| Error::new("more than 65535 string attributes in one file"))?;
        attrs.push((name.as_str(), index, value.len() as u32));
    }
    let mut links = Vec::new();
    for (name, member) in &group.members {
        let index = match member {
            Member::Group(child) => flatten(child, objects, strings)?,
            Member::Dataset { shape, data } => {
                objects.push(Object::Dataset { shape, data });
                objects.len() - 1
            }
        };
        links.push((name.as_str(), index));
    }
    if let Some(slot) = objects.get_mut(me) {
        *slot = Object::Group { links, attrs };
    }
    Ok(me)
}

/// Superblock version 2: signature, version, address and length widths (8), consistency
/// flags, base address, superblock extension (none), end of file, root object header, and the
/// lookup3 checksum of all that.
fn superblock(eof: u64, root: u64) -> Vec<u8> {
    let mut b = b"\x89HDF\r\n\x1a\n".to_vec();
    b.extend([2, 8, 8, 0]);
    for addr in [0, UNDEF, eof, root] {
        b.extend(addr.to_le_bytes());
    }
    b.extend(lookup3(&b).to_le_bytes());
    b
}

/// One global heap collection holding every string, object `i + 1` = `strings[i]`: a 16-byte
/// header ("GCOL", version 1, size), then per object a 16-byte header (index, reference count
/// 0, reserved, size) and the bytes padded to 8, then the rest as free space (object 0, whose
/// size counts its own header).
fn heap_collection(strings: &[&str]) -> Result<Vec<u8>> {
    let mut objects = Vec::new();
    for (i, s) in strings.iter().enumerate() {
        let index = u16::try_from(i + 1).map_err(|_| Error::new("too many strings"))?;
        objects.extend(index.to_le_bytes());
        objects.extend([0u8; 6]);
        objects.extend((s.len() as u64).to_le_bytes());
        objects.extend(s.as_bytes());
        objects.resize(align8(objects.len() as u64) as usize, 0);
    }
    let used = 16 + objects.len();
    let size = used.max(HEAP_MIN);
    let mut b = b"GCOL".to_vec();
    b.extend([1, 0, 0, 0]);
    b.extend((size as u64).to_le_bytes());
    b.extend(objects);
    // Free space of under 16 bytes has no header: readers take the tail as free.
    if size - used >= 16 {
        b.extend([0u8; 8]);
        b.extend(((size - used) as u64).to_le_bytes());
    }
    b.resize(size, 0);
    Ok(b)
}

/// The object header of `object`, object number `index`. `header_addr[i]` / `data_addr[i]`
/// are the addresses of object `i`'s header and data; with `measure`, every address reads as
/// 0 (only the size of the result matters then).
fn encode(
    object: &Object,
    index: usize,
    header_addr: &[u64],
    data_addr: &[u64],
    heap_addr: u64,
    measure: bool,
) -> Result<Vec<u8>> {
    let addr_of = |table: &[u64], i: usize| -> u64 {
        if measure {
            0
        } else {
            table.get(i).copied().unwrap_or(UNDEF)
        }
    };
    // (type, flags, body); flag 0x01 marks a message as constant, as libhdf5 does.
    let mut messages: Vec<(u16, u8, Vec<u8>)> = Vec::new();
    match object {
        Object::Group { links, attrs } => {
            // Link info: version 0, no creation order, no dense storage (fractal heap and
            // name index undefined).
            let mut info = vec![0, 0];
            info.extend(UNDEF.to_le_bytes());
            info.extend(UNDEF.to_le_bytes());
            messages.push((kind::LINK_INFO, 0, info));
            messages.push((kind::GROUP_INFO, 1, group_info(links.len())?));
            for (name, target) in links {
                messages.push((kind::LINK, 0, link(name, addr_of(header_addr, *target))));
            }
            for (name, index, len) in attrs {
                let heap = if measure { 0 } else { heap_addr };
                messages.push((kind::ATTRIBUTE, 0, attribute(name, *index, *len, heap)));
            }
        }
        Object::Dataset { shape, data } => {
            messages.push((kind::DATASPACE, 0, dataspace(shape)));
            messages.push((kind::DATATYPE, 1, FLOAT32_LE.to_vec()));
            // Fill value version 3: space allocated late, fill value written only if set, no
            // fill value defined (h5py's defaults).
            messages.push((FILL_VALUE, 1, vec![3, 0x0a]));
            // Layout version 3, contiguous: address and size. An empty dataset has no data,
            // and an undefined address.
            let mut layout = vec![3, 1];
            layout.extend(addr_of(data_addr, index).to_le_bytes());
            layout.extend((4 * data.len() as u64).to_le_bytes());
            messages.push((kind::LAYOUT, 0, layout));
        }
    }
    object_header(&messages)
}

/// Group info: version 0. Up to libhdf5's default of 8 links no limits are stored; a larger
/// compact group states its own (maximum compact = its size, minimum dense = the default 6),
/// so the header says the links are meant to be where they are.
fn group_info(links: usize) -> Result<Vec<u8>> {
    if links <= DEFAULT_MAX_COMPACT {
        return Ok(vec![0, 0]);
    }
    let max = u16::try_from(links)
        .map_err(|_| Error::new(format!("a group of {links} members (at most 65535)")))?;
    let mut b = vec![0, 1];
    b.extend(max.to_le_bytes());
    b.extend(6u16.to_le_bytes());
    Ok(b)
}

/// Link message, version 1, to a hard link: flags (name length width: 1 or 2 bytes; bit 4:
/// a character set follows), [character set: UTF-8], name length, name, object address.
fn link(name: &str, addr: u64) -> Vec<u8> {
    let wide = name.len() > 255;
    let mut flags = u8::from(wide);
    if !name.is_ascii() {
        flags |= 0x10;
    }
    let mut b = vec![1, flags];
    if !name.is_ascii() {
        b.push(1);
    }
    if wide {
        b.extend((name.len() as u16).to_le_bytes());
    } else {
        b.push(name.len() as u8);
    }
    b.extend(name.as_bytes());
    b.extend(addr.to_le_bytes());
    b
}

/// Attribute message, version 3: flags, sizes of name (with its NUL), datatype and
/// dataspace, name character set, then those three and the value: one variable-length string
/// element (length, heap collection address, object index).
fn attribute(name: &str, index: u16, len: u32, heap_addr: u64) -> Vec<u8> {
    let mut b = vec![3, 0];
    b.extend((name.len() as u16 + 1).to_le_bytes());
    b.extend((VLEN_UTF8.len() as u16).to_le_bytes());
    b.extend((SCALAR.len() as u16).to_le_bytes());
    b.push(u8::from(!name.is_ascii()));
    b.extend(name.as_bytes());
    b.push(0);
    b.extend(VLEN_UTF8);
    b.extend(SCALAR);
    b.extend(len.to_le_bytes());
    b.extend(heap_addr.to_le_bytes());
    b.extend(u32::from(index).to_le_bytes());
    b
}

/// Dataspace message, version 2: rank, flags (maximum sizes stored), type (scalar or simple),
/// the sizes, and the maximum sizes (equal: the dataset cannot grow), as h5py writes them.
fn dataspace(shape: &[u64]) -> Vec<u8> {
    if shape.is_empty() {
        return SCALAR.to_vec();
    }
    let mut b = vec![2, shape.len() as u8, 1, 1];
    for _ in 0..2 {
        b.extend(shape.iter().flat_map(|d| d.to_le_bytes()));
    }
    b
}

/// A scalar dataspace (version 2, rank 0, type 0).
const SCALAR: [u8; 4] = [2, 0, 0, 0];

/// Datatype: IEEE float32 little-endian. Class 1 version 1; bit field: little-endian, implied
/// leading mantissa bit (0x20), sign at bit 31; size 4; offset 0, precision 32, exponent at
/// 23 of 8 bits, mantissa at 0 of 23 bits, exponent bias 127.
const FLOAT32_LE: [u8; 20] = [
    0x11, 0x20, 0x1f, 0x00, 4, 0, 0, 0, 0, 0, 32, 0, 23, 8, 0, 23, 127, 0, 0, 0,
];

/// Datatype: variable-length string, UTF-8, NUL-terminated (class 9 version 1, type string,
/// character set 1), 16-byte elements; its base type is an unsigned byte (class 0, size 1,
/// precision 8), as libhdf5 encodes every variable-length string.
const VLEN_UTF8: [u8; 20] = [
    0x19, 0x01, 0x01, 0x00, 16, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0,
];

/// A version-2 object header in one chunk: "OHDR", version 2, flags (chunk size in 4 bytes),
/// the chunk size, messages (type, size, flags, body), and the lookup3 checksum.
fn object_header(messages: &[(u16, u8, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    for (kind, flags, data) in messages {
        let size = u16::try_from(data.len())
            .map_err(|_| Error::new(format!("a header message of {} bytes", data.len())))?;
        body.push(*kind as u8);
        body.extend(size.to_le_bytes());
        body.push(*flags);
        body.extend(data);
    }
    let size = u32::try_from(body.len())
        .map_err(|_| Error::new(format!("an object header of {} bytes", body.len())))?;
    let mut b = b"OHDR".to_vec();
    b.extend([2, 0x02]);
    b.extend(size.to_le_bytes());
    b.extend(body);
    b.extend(lookup3(&b).to_le_bytes());
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::hdf5::{Dtype, File, Group, ObjectKind, touch_everything};
    use crate::rng::Rng;

    /// A tree that owns its data, to build a [`GroupBuilder`] from and compare a read-back
    /// file with.
    #[derive(Debug)]
    enum Spec {
        Group {
            attrs: Vec<(String, String)>,
            members: Vec<(String, Spec)>,
        },
        Dataset {
            shape: Vec<usize>,
            data: Vec<f32>,
        },
    }

    fn build<'a>(spec: &'a Spec, into: &mut GroupBuilder<'a>) {
        let Spec::Group { attrs, members } = spec else {
            panic!("the root must be a group")
        };
        for (name, value) in attrs {
            into.attr(name, value).unwrap();
        }
        for (name, member) in members {
            match member {
                Spec::Group { .. } => build(member, into.group(name).unwrap()),
                Spec::Dataset { shape, data } => into.dataset(name, shape, data).unwrap(),
            }
        }
    }

    fn write(spec: &Spec) -> Vec<u8> {
        let mut root = GroupBuilder::new();
        build(spec, &mut root);
        root.to_bytes().unwrap()
    }

    /// Everything `group` holds equals `spec`: member names in order, kinds, attributes,
    /// shapes, dtypes and every value bit for bit.
    fn assert_same(group: &Group, spec: &Spec) {
        let Spec::Group { attrs, members } = spec else {
            panic!("not a group spec")
        };
        let at = group.path();
        let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(group.attr_names().unwrap(), names, "attributes of {at}");
        for (name, value) in attrs {
            let attr = group.attr(name).unwrap().unwrap();
            assert_eq!(attr.shape(), &[] as &[u64], "{at}: '{name}' is a scalar");
            assert_eq!(attr.dtype(), &Dtype::VarString { utf8: true });
            assert_eq!(&attr.read_string().unwrap(), value, "{at}: '{name}'");
        }
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(group.member_names().unwrap(), names, "members of {at}");
        for (name, member) in members {
            match member {
                Spec::Group { .. } => {
                    assert_eq!(group.member_kind(name).unwrap(), Some(ObjectKind::Group));
                    assert_same(&group.group(name).unwrap().unwrap(), member);
                }
                Spec::Dataset { shape, data } => {
                    assert_eq!(group.member_kind(name).unwrap(), Some(ObjectKind::Dataset));
                    let ds = group.dataset(name).unwrap().unwrap();
                    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                    assert_eq!(ds.shape(), dims.as_slice(), "{}", ds.path());
                    let f32_le = Dtype::Float {
                        size: 4,
                        little_endian: true,
                    };
                    assert_eq!(ds.dtype(), &f32_le, "{}", ds.path());
                    let got: Vec<u32> =
                        ds.read_f32().unwrap().iter().map(|v| v.to_bits()).collect();
                    let want: Vec<u32> = data.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{}", ds.path());
                }
            }
        }
    }

    fn read_back(bytes: Vec<u8>, spec: &Spec) {
        let file = File::from_bytes(bytes).unwrap();
        let root = file.root().unwrap();
        assert_same(&root, spec);
        touch_everything(&root, 10_000);
    }

    fn dataset(shape: &[usize], rng: &mut Rng) -> Spec {
        let n = shape.iter().product();
        Spec::Dataset {
            shape: shape.to_vec(),
            data: (0..n).map(|_| rng.normal()).collect(),
        }
    }

    #[test]
    fn odd_shapes_read_back_bit_exactly() {
        let mut rng = Rng::new(7);
        let shapes: [&[usize]; 12] = [
            &[],
            &[1],
            &[3],
            &[17],
            &[0],
            &[1, 1],
            &[3, 17],
            &[17, 3, 1],
            &[3, 3, 3, 17],
            &[1, 3, 17, 1],
            &[3, 0, 2],
            &[1 << 15], // more than one write block
        ];
        let mut members: Vec<(String, Spec)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("d{i}"), dataset(s, &mut rng)))
            .collect();
        // Values a conversion could disturb: signed zero, subnormals, infinities, NaN payloads.
        let special = [
            0.0,
            -0.0,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            -f32::INFINITY,
        ];
        let mut data = special.to_vec();
        data.push(f32::from_bits(0x7fc0_1234));
        data.push(f32::from_bits(0xffa0_0001));
        members.push((
            "special".into(),
            Spec::Dataset {
                shape: vec![data.len()],
                data,
            },
        ));
        let spec = Spec::Group {
            attrs: vec![],
            members,
        };
        read_back(write(&spec), &spec);
    }

    #[test]
    fn attributes_read_back_as_utf8_strings() {
        let long = "x".repeat(5000); // alone larger than a minimal heap collection
        let attrs = [
            ("name", "block1_conv1"),
            ("empty", ""),
            ("unicode", "abeilles \u{1f41d} fourmis"),
            ("naïve name", "value"),
            ("long", long.as_str()),
        ];
        let spec = Spec::Group {
            attrs: attrs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            members: vec![(
                "vars".into(),
                Spec::Group {
                    attrs: vec![("name".into(), "vgg16".into())],
                    members: vec![],
                },
            )],
        };
        read_back(write(&spec), &spec);
    }

    #[test]
    fn groups_keep_member_order_beyond_the_compact_default() {
        let mut rng = Rng::new(3);
        // conv2d, conv2d_1, ..., conv2d_12 (not sorted by name), each with vars/0 and vars/1.
        let members = (0..13)
            .map(|i| {
                let key = if i == 0 {
                    "conv2d".to_string()
                } else {
                    format!("conv2d_{i}")
                };
                let vars = Spec::Group {
                    attrs: vec![("name".into(), format!("conv{i}"))],
                    members: vec![
                        ("0".into(), dataset(&[3, 3, 2, 3], &mut rng)),
                        ("1".into(), dataset(&[3], &mut rng)),
                    ],
                };
                (
                    key,
                    Spec::Group {
                        attrs: vec![],
                        members: vec![("vars".into(), vars)],
                    },
                )
            })
            .collect();
        let spec = Spec::Group {
            attrs: vec![],
            members: vec![(
                "layers".into(),
                Spec::Group {
                    attrs: vec![],
                    members,
                },
            )],
        };
        read_back(write(&spec), &spec);
    }

    #[test]
    fn an_empty_file_is_an_empty_root() {
        let spec = Spec::Group {
            attrs: vec![],
            members: vec![],
        };
        let bytes = write(&spec);
        // Superblock, then the root's header (10 + link info 22 + group info 6 + checksum 4
        // bytes), padded to 8.
        assert_eq!(bytes.len(), 96);
        read_back(bytes, &spec);
    }

    /// A random tree: up to 4 levels, 0-5 attributes and 0-6 members per group, names drawn
    /// from a small alphabet (non-ASCII included), datasets of rank 0-4 with sizes 0-4 or 17.
    fn random_group(rng: &mut Rng, depth: usize) -> Spec {
        let name = |rng: &mut Rng, i: usize| {
            let parts = ["a", "conv2d", "é", "vars", "_1", "0", "x y"];
            let mut s = String::new();
            for _ in 0..=rng.below(3) {
                s += parts[rng.below(parts.len() as u64) as usize];
            }
            format!("{s}{i}") // unique within its group
        };
        let attrs = (0..rng.below(6) as usize)
            .map(|i| {
                let value_len = [0, 1, 7, 300][rng.below(4) as usize];
                let value: String = (0..value_len)
                    .map(|_| ['k', 'é', '\u{1f41d}', ' '][rng.below(4) as usize])
                    .collect();
                (name(rng, i), value)
            })
            .collect();
        let members = (0..rng.below(7) as usize)
            .map(|i| {
                let member = if depth < 3 && rng.below(3) == 0 {
                    random_group(rng, depth + 1)
                } else {
                    let shape: Vec<usize> = (0..rng.below(5))
                        .map(|_| [0, 1, 2, 3, 4, 17][rng.below(6) as usize])
                        .collect();
                    dataset(&shape, rng)
                };
                (name(rng, i), member)
            })
            .collect();
        Spec::Group { attrs, members }
    }

    #[test]
    fn random_trees_round_trip() {
        let mut rng = Rng::new(20_240_917);
        for _ in 0..200 {
            let spec = random_group(&mut rng, 0);
            read_back(write(&spec), &spec);
        }
    }

    #[test]
    fn files_are_written_atomically() {
        let dir = std::env::temp_dir().join(format!("keel-h5-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.h5");
        let data = [1.0f32, 2.0, 3.0];
        let mut root = GroupBuilder::new();
        root.group("g").unwrap().dataset("d", &[3], &data).unwrap();
        root.write_file(&path).unwrap();
        let file = File::open(&path).unwrap();
        let d = file.root().unwrap().dataset("g/d").unwrap().unwrap();
        assert_eq!(d.read_f32().unwrap(), data);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file left"
        );
        // A folder in the way: an error naming it, nothing written.
        let err = root.write_file(&dir).unwrap_err().to_string();
        assert!(err.contains(&*dir.to_string_lossy()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_trees_are_refused() {
        let data = [0f32; 6];
        let mut root = GroupBuilder::new();
        root.group("g").unwrap();
        let e = |r: Result<()>| r.unwrap_err().to_string();
        assert!(e(root.group("g").map(|_| ())).contains("twice"));
        assert!(e(root.dataset("g", &[6], &data)).contains("twice"));
        assert!(e(root.dataset("a/b", &[6], &data)).contains("'/'"));
        assert!(e(root.dataset("", &[6], &data)).contains("non-empty"));
        assert!(e(root.dataset(".", &[6], &data)).contains("\".\""));
        assert!(e(root.dataset("d", &[4], &data)).contains("does not hold the 6"));
        assert!(e(root.dataset("d", &[1; 33], &data[..1])).contains("rank 33"));
        root.attr("n", "v").unwrap();
        assert!(e(root.attr("n", "w")).contains("twice"));
        assert!(e(root.attr("m", "a\0b")).contains("NUL"));
        assert!(e(root.attr("", "v")).contains("attribute name"));
    }
}
