//! Data layout message: where a dataset's bytes are. Compact (inside the header) and
//! contiguous (one block in the file) are read; chunked and virtual storage are reported.

use super::cursor::{Cursor, Sizes};
use super::error::{Error, Result, bail};

pub(super) enum Layout {
    Compact(Vec<u8>),
    /// `addr` is `None` when no data was ever written. `size` is `None` in layout versions
    /// 1 and 2, which do not store it (it follows from shape and element size).
    Contiguous {
        addr: Option<u64>,
        size: Option<u64>,
    },
    Chunked,
    Virtual,
}

pub(super) fn parse(data: &[u8], sizes: Sizes) -> Result<Layout> {
    let mut c = Cursor::new(data);
    match c.u8()? {
        version @ (1 | 2) => {
            let rank = usize::from(c.u8()?);
            let class = c.u8()?;
            c.skip(5)?; // reserved
            let addr = if class == 0 { None } else { c.addr(sizes)? };
            c.skip(
                rank.checked_mul(4)
                    .ok_or_else(|| Error::new("layout rank overflows"))?,
            )?;
            match class {
                0 => {
                    let len = usize::try_from(c.u32()?)
                        .map_err(|_| Error::new("compact size too large"))?;
                    Ok(Layout::Compact(c.bytes(len)?.to_vec()))
                }
                1 => Ok(Layout::Contiguous { addr, size: None }),
                2 => Ok(Layout::Chunked),
                n => bail!("data layout message version {version}: unknown layout class {n}"),
            }
        }
        version @ 3..=5 => match c.u8()? {
            0 => {
                let len = usize::from(c.u16()?);
                Ok(Layout::Compact(c.bytes(len)?.to_vec()))
            }
            1 => {
                let addr = c.addr(sizes)?;
                let size = c.length(sizes)?;
                Ok(Layout::Contiguous {
                    addr,
                    size: Some(size),
                })
            }
            2 => Ok(Layout::Chunked),
            3 => Ok(Layout::Virtual),
            n => bail!("data layout message version {version}: unknown layout class {n}"),
        },
        v => Err(Error::unsupported(format!(
            "data layout message version {v}"
        ))),
    }
}
