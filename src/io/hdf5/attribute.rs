//! Attribute messages (versions 1-3) and reading their values as strings, which is all
//! Keras stores in attributes (`layer_names`, `weight_names`, `backend`, ...).

use std::sync::Arc;

use super::cursor::{Cursor, to_usize};
use super::dataspace;
use super::datatype::{self, Dtype, StrPad};
use super::error::{Error, Result, bail};
use super::global_heap::GlobalHeap;
use super::object_header::Message;
use super::source::Reader;

/// One attribute, with its value bytes already in memory (attributes live in the header).
pub struct Attribute {
    reader: Arc<Reader>,
    /// "attribute 'name' of /path", for messages.
    label: String,
    name: String,
    shape: Vec<u64>,
    elements: u64,
    dtype: Dtype,
    data: Vec<u8>,
}

/// The fields of an attribute message before the value is interpreted.
struct Parts<'a> {
    name: &'a [u8],
    datatype: &'a [u8],
    dataspace: &'a [u8],
    rest: Cursor<'a>,
}

/// Splits the message: version, flags, name/datatype/dataspace sizes, [v3: name encoding],
/// then the three fields (v1 pads each to 8 bytes) and the value.
fn split(data: &[u8]) -> Result<Parts<'_>> {
    let mut c = Cursor::new(data);
    let version = c.u8()?;
    let flags = c.u8()?;
    let name_len = usize::from(c.u16()?);
    let datatype_len = usize::from(c.u16()?);
    let dataspace_len = usize::from(c.u16()?);
    match version {
        1 => {}
        2 | 3 => {
            if flags & 0x03 != 0 {
                return Err(Error::unsupported(
                    "attribute with a shared datatype or dataspace",
                ));
            }
            if version == 3 {
                c.u8()?; // name character set
            }
        }
        v => return Err(Error::unsupported(format!("attribute message version {v}"))),
    }
    let pad = |c: &mut Cursor| if version == 1 { c.align(8) } else { Ok(()) };
    let raw_name = c.bytes(name_len)?;
    pad(&mut c)?;
    let datatype = c.bytes(datatype_len)?;
    pad(&mut c)?;
    let dataspace = c.bytes(dataspace_len)?;
    pad(&mut c)?;
    // The stored name includes its terminating NUL.
    let name = raw_name.split(|&b| b == 0).next().unwrap_or_default();
    Ok(Parts {
        name,
        datatype,
        dataspace,
        rest: c,
    })
}

/// The attribute's name as stored (compared without allocating when looking one up).
pub(super) fn raw_name(message: &Message) -> Result<&[u8]> {
    Ok(split(&message.data)?.name)
}

/// The attribute's name.
pub(super) fn name(message: &Message) -> Result<String> {
    String::from_utf8(raw_name(message)?.to_vec())
        .map_err(|_| Error::new("attribute name is not valid UTF-8"))
}

/// Parses a whole attribute message; `owner` is the path of the object it belongs to.
pub(super) fn parse(message: &Message, reader: Arc<Reader>, owner: &str) -> Result<Attribute> {
    let name = name(message)?;
    let mut parts = split(&message.data)?;
    let label = format!("attribute '{name}' of {owner}");
    let inner = || -> Result<(dataspace::Dataspace, datatype::Datatype)> {
        Ok((
            dataspace::parse(parts.dataspace, reader.sizes)?,
            datatype::parse(parts.datatype, reader.sizes)?,
        ))
    };
    let (space, dt) = inner().map_err(|e| e.context(&label))?;
    let len = space
        .elements
        .checked_mul(dt.size as u64)
        .ok_or_else(|| Error::new(format!("{label}: value size overflows")))?;
    let data = parts
        .rest
        .bytes(to_usize(len, "attribute value size")?)
        .map_err(|_| {
            Error::new(format!(
                "{label}: value of {len} bytes does not fit in its message"
            ))
        })?
        .to_vec();
    Ok(Attribute {
        reader,
        label,
        name,
        shape: space.shape,
        elements: space.elements,
        dtype: dt.dtype,
        data,
    })
}

impl Attribute {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions; empty for a scalar.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub fn dtype(&self) -> &Dtype {
        &self.dtype
    }

    /// All values as strings, in row-major order. Fixed-length and variable-length strings are
    /// both accepted because Keras writes either, depending on the h5py version. An empty
    /// numeric attribute gives no strings: Keras 1 writes an empty `weight_names` as float64.
    pub fn read_strings(&self) -> Result<Vec<String>> {
        self.strings().map_err(|e| e.context(&self.label))
    }

    /// The value of a scalar or one-element string attribute.
    pub fn read_string(&self) -> Result<String> {
        let mut all = self.read_strings()?;
        match (all.pop(), all.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => bail!(
                "{}: expected one string, found {}",
                self.label,
                self.elements
            ),
        }
    }

    fn strings(&self) -> Result<Vec<String>> {
        match &self.dtype {
            Dtype::FixedString { len, padding, .. } => self
                .data
                .chunks_exact(*len)
                .map(|raw| decode(strip(raw, *padding)))
                .collect(),
            Dtype::VarString { .. } => self.var_strings(),
            _ if self.elements == 0 => Ok(Vec::new()),
            other => bail!("has dtype {other}; expected strings"),
        }
    }

    /// Each element is (u32 length, collection address, u32 object index).
    fn var_strings(&self) -> Result<Vec<String>> {
        let sizes = self.reader.sizes;
        let mut heap = GlobalHeap::new(&self.reader);
        // Many elements may name the same heap object; cap the output at the file's size so
        // a crafted file cannot make a small attribute expand into gigabytes.
        let mut budget = self.reader.len();
        let mut out = Vec::new();
        for element in self.data.chunks_exact(8 + sizes.offset) {
            let mut c = Cursor::new(element);
            let len = c.u32()?;
            let addr = c.addr(sizes)?;
            let index = c.u32()?;
            if len == 0 {
                out.push(String::new());
                continue;
            }
            let Some(addr) = addr else {
                bail!("string {} has an undefined heap address", out.len())
            };
            budget = match budget.checked_sub(u64::from(len)) {
                Some(left) => left,
                None => bail!("strings add up to more bytes than the file holds"),
            };
            let object = heap.object(addr, index)?;
            let Some(bytes) = object.get(..to_usize(u64::from(len), "string length")?) else {
                bail!(
                    "string of {len} bytes is longer than its heap object ({} bytes)",
                    object.len()
                );
            };
            out.push(decode(bytes)?);
        }
        Ok(out)
    }
}

fn strip(raw: &[u8], padding: StrPad) -> &[u8] {
    match padding {
        StrPad::NullTerm => raw.split(|&b| b == 0).next().unwrap_or_default(),
        StrPad::NullPad => trim_end(raw, 0),
        StrPad::SpacePad => trim_end(raw, b' '),
    }
}

fn trim_end(raw: &[u8], pad: u8) -> &[u8] {
    let end = raw.iter().rposition(|&b| b != pad).map_or(0, |i| i + 1);
    raw.get(..end).unwrap_or_default()
}

/// ASCII is a subset of UTF-8, so one check covers both character sets.
fn decode(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        Error::new(format!(
            "string {:?} is not valid UTF-8 ({e})",
            String::from_utf8_lossy(bytes)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_stripped_per_type() {
        assert_eq!(strip(b"ab\0cd\0\0", StrPad::NullTerm), b"ab");
        assert_eq!(strip(b"ab\0cd\0\0", StrPad::NullPad), b"ab\0cd");
        assert_eq!(strip(b"ab   ", StrPad::SpacePad), b"ab");
        assert_eq!(strip(b"\0\0", StrPad::NullPad), b"");
    }
}
