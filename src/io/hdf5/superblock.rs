//! The superblock: where the file starts, how wide addresses are, how long the file should
//! be, and where the root group's object header is.

use super::checksum;
use super::cursor::{Cursor, Sizes};
use super::error::{Error, Result, bail};
use super::source::ByteSource;

const SIGNATURE: [u8; 8] = *b"\x89HDF\r\n\x1a\n";

pub(super) struct Superblock {
    /// Absolute offset that addresses are relative to.
    pub base: u64,
    pub sizes: Sizes,
    /// Address of the root group's object header (relative to `base`).
    pub root: u64,
    /// Absolute file length the superblock declares.
    pub end: u64,
}

/// Finds and parses the superblock. The signature sits at 0, or after a user block at
/// 512, 1024, 2048, ... bytes.
pub(super) fn read(source: &dyn ByteSource) -> Result<Superblock> {
    let len = source.len();
    let mut at = 0u64;
    loop {
        let mut sig = [0u8; 8];
        if at.checked_add(8).is_none_or(|end| end > len) {
            bail!("not an HDF5 file: no HDF5 signature found ({len} bytes)");
        }
        read_at(source, at, &mut sig)?;
        if sig == SIGNATURE {
            let sb =
                parse(source, at).map_err(|e| e.context(format!("superblock at offset {at}")))?;
            // A file shorter than the superblock says was cut off (an interrupted download or
            // copy); its tail would hold weights, so refuse it up front with a message saying so.
            if len < sb.end {
                bail!(
                    "file is truncated: the HDF5 superblock says it is {} bytes long but it has {len}",
                    sb.end
                );
            }
            return Ok(sb);
        }
        at = if at == 0 { 512 } else { at.saturating_mul(2) };
    }
}

fn read_at(source: &dyn ByteSource, at: u64, buf: &mut [u8]) -> Result<()> {
    source.read_at(at, buf).map_err(|e| {
        Error::new(format!(
            "reading {} bytes at offset {at} failed: {e}",
            buf.len()
        ))
    })
}

/// Reads `len` bytes at `at`, or fewer if the file ends first (a superblock cut short then
/// fails in the cursor with a "truncated" error).
fn read_clamped(source: &dyn ByteSource, at: u64, len: u64) -> Result<Vec<u8>> {
    let n = len.min(source.len().saturating_sub(at));
    let mut buf = vec![0u8; usize::try_from(n).map_err(|_| Error::new("superblock too large"))?];
    read_at(source, at, &mut buf)?;
    Ok(buf)
}

fn parse(source: &dyn ByteSource, at: u64) -> Result<Superblock> {
    // Large enough for every superblock version with 8-byte fields (v1: 100 bytes).
    let bytes = read_clamped(source, at, 128)?;
    let mut c = Cursor::new(&bytes);
    c.skip(8)?;
    let version = c.u8()?;
    let (sizes, eof, base, root) = match version {
        0 | 1 => {
            c.skip(4)?; // free-space, root entry, reserved, shared header versions
            let sizes = read_sizes(&mut c)?;
            c.skip(1 + 2 + 2 + 4)?; // reserved, group leaf K, group internal K, flags
            if version == 1 {
                c.skip(4)?; // indexed storage K, reserved
            }
            let base = required(c.addr(sizes)?, "base address")?;
            c.addr(sizes)?; // free-space info (unused: we never write)
            let eof = required(c.addr(sizes)?, "end-of-file address")?;
            c.addr(sizes)?; // driver information block
            // Root group symbol table entry: link name offset, then object header address.
            c.addr(sizes)?;
            let root = required(c.addr(sizes)?, "root group address")?;
            (sizes, eof, base, root)
        }
        2 | 3 => {
            let sizes = read_sizes(&mut c)?;
            c.skip(1)?; // file consistency flags
            let base = required(c.addr(sizes)?, "base address")?;
            c.addr(sizes)?; // superblock extension: nothing in it is needed to read data
            let eof = required(c.addr(sizes)?, "end-of-file address")?;
            let root = required(c.addr(sizes)?, "root group address")?;
            let end = c.pos();
            let stored = c.u32()?;
            if !checksum::matches(bytes.get(..end).unwrap_or_default(), stored) {
                bail!("checksum mismatch");
            }
            (sizes, eof, base, root)
        }
        v => return Err(Error::unsupported(format!("superblock version {v}"))),
    };
    // Unlike every other address, the end-of-file address is absolute (libhdf5 writes and
    // checks it that way), so a user block is already included.
    Ok(Superblock {
        base,
        sizes,
        root,
        end: eof,
    })
}

fn read_sizes(c: &mut Cursor) -> Result<Sizes> {
    let offset = usize::from(c.u8()?);
    let length = usize::from(c.u8()?);
    for (name, n) in [("offsets", offset), ("lengths", length)] {
        if ![2, 4, 8].contains(&n) {
            return Err(Error::unsupported(format!(
                "size of {name} = {n} bytes (expected 2, 4 or 8)"
            )));
        }
    }
    Ok(Sizes { offset, length })
}

fn required(addr: Option<u64>, what: &str) -> Result<u64> {
    addr.ok_or_else(|| Error::new(format!("{what} is undefined")))
}
