//! New-style group members: link messages (stored in the group's own header, "compact"
//! storage), and the info messages that say when links or attributes were moved to "dense"
//! storage in a fractal heap, which this reader does not implement.

use super::cursor::{Cursor, Sizes, to_usize};
use super::error::{Error, Result, bail};

pub(super) enum Target {
    /// Object header address.
    Hard(u64),
    Soft(String),
    External,
}

/// Link message: version 1, flags, [link type], [creation order u64], [name charset],
/// name length (1/2/4/8 bytes by flags), name, then the target.
pub(super) fn parse(data: &[u8], sizes: Sizes) -> Result<(String, Target)> {
    let mut c = Cursor::new(data);
    let version = c.u8()?;
    if version != 1 {
        return Err(Error::unsupported(format!(
            "link message version {version}"
        )));
    }
    let flags = c.u8()?;
    let link_type = if flags & 0x08 != 0 { c.u8()? } else { 0 };
    if flags & 0x04 != 0 {
        c.skip(8)?;
    }
    if flags & 0x10 != 0 {
        c.u8()?;
    }
    let name_len = to_usize(c.uint(1 << (flags & 0x03))?, "link name length")?;
    let name = String::from_utf8(c.bytes(name_len)?.to_vec())
        .map_err(|_| Error::new("link name is not valid UTF-8"))?;
    let target = match link_type {
        0 => Target::Hard(
            c.addr(sizes)?
                .ok_or_else(|| Error::new(format!("link '{name}' has an undefined address")))?,
        ),
        1 => {
            let len = usize::from(c.u16()?);
            Target::Soft(String::from_utf8_lossy(c.bytes(len)?).into_owned())
        }
        64 => Target::External,
        t => bail!("link '{name}' has unknown link type {t}"),
    };
    Ok((name, target))
}

/// Link info (0x02) and attribute info (0x15) messages share a shape: version 0, flags,
/// [maximum creation index: `order_width` bytes, when flags bit 0], fractal heap address, ...
/// A defined heap address means the links/attributes are in dense storage.
pub(super) fn dense_heap_address(
    data: &[u8],
    sizes: Sizes,
    order_width: usize,
) -> Result<Option<u64>> {
    let mut c = Cursor::new(data);
    let version = c.u8()?;
    if version != 0 {
        return Err(Error::unsupported(format!(
            "link/attribute info message version {version}"
        )));
    }
    if c.u8()? & 0x01 != 0 {
        c.skip(order_width)?;
    }
    c.addr(sizes)
}
