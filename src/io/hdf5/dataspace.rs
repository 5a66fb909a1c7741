//! Dataspace message: the shape of a dataset or attribute (scalar, simple N-d, or null).

use super::cursor::{Cursor, Sizes};
use super::error::{Error, Result, bail};

/// HDF5's own limit on rank.
const MAX_RANK: usize = 32;

pub(super) struct Dataspace {
    /// Empty for scalar and null dataspaces.
    pub shape: Vec<u64>,
    /// Number of elements: 1 for scalar, 0 for null, the product of `shape` otherwise.
    pub elements: u64,
}

pub(super) fn parse(data: &[u8], sizes: Sizes) -> Result<Dataspace> {
    let mut c = Cursor::new(data);
    let version = c.u8()?;
    let rank = usize::from(c.u8()?);
    c.u8()?; // flags: bit 0 says maximum dimensions follow the sizes; reading ignores them
    let null = match version {
        1 => {
            c.skip(5)?; // reserved
            false
        }
        2 => match c.u8()? {
            0 | 1 => false,
            2 => true,
            t => bail!("dataspace: unknown type {t}"),
        },
        v => return Err(Error::unsupported(format!("dataspace message version {v}"))),
    };
    if rank > MAX_RANK {
        bail!("dataspace: rank {rank} exceeds HDF5's maximum of {MAX_RANK}");
    }
    let mut shape = Vec::with_capacity(rank);
    for _ in 0..rank {
        shape.push(c.length(sizes)?);
    }
    if null {
        return Ok(Dataspace {
            shape: Vec::new(),
            elements: 0,
        });
    }
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::new(format!(
                "dataspace: element count of shape {shape:?} overflows"
            ))
        })?;
    Ok(Dataspace { shape, elements })
}
