//! A bounds-checked little-endian reader over bytes already in memory.
//!
//! Every structure of the file is parsed through this cursor, so a field that runs past the
//! end of its block becomes an `Err` and never an index panic, whatever the input.

use super::error::{Error, Result, bail};

/// Widths, in bytes, of file addresses ("offsets") and of lengths, from the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sizes {
    pub offset: usize,
    pub length: usize,
}

pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, consumed.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end.and_then(|end| self.bytes.get(self.pos..end).map(|s| (end, s))) {
            Some((end, slice)) => {
                self.pos = end;
                Ok(slice)
            }
            None => bail!(
                "structure is truncated: needs {n} bytes at byte {} of a {}-byte block",
                self.pos,
                self.bytes.len()
            ),
        }
    }

    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.bytes(n).map(|_| ())
    }

    /// Skips to the next multiple of `align` counted from the start of the block.
    pub fn align(&mut self, align: usize) -> Result<()> {
        let rem = self.pos % align;
        if rem != 0 {
            self.skip(align - rem)
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// An unsigned little-endian integer of 1 to 8 bytes.
    pub fn uint(&mut self, size: usize) -> Result<u64> {
        if !(1..=8).contains(&size) {
            bail!("unsupported integer field width of {size} bytes");
        }
        let mut buf = [0u8; 8];
        for (dst, src) in buf.iter_mut().zip(self.bytes(size)?) {
            *dst = *src;
        }
        Ok(u64::from_le_bytes(buf))
    }

    /// A file address; `None` for the "undefined address" (all bits set).
    pub fn addr(&mut self, sizes: Sizes) -> Result<Option<u64>> {
        let value = self.uint(sizes.offset)?;
        let undefined = match sizes.offset {
            8 => u64::MAX,
            n => (1u64 << (8 * n)) - 1,
        };
        Ok((value != undefined).then_some(value))
    }

    /// A length field (size of lengths from the superblock).
    pub fn length(&mut self, sizes: Sizes) -> Result<u64> {
        self.uint(sizes.length)
    }

    /// Checks a 4-byte signature such as `b"TREE"`.
    pub fn signature(&mut self, expected: &[u8; 4], what: &str) -> Result<()> {
        let found = self.bytes(4)?;
        if found != expected {
            bail!(
                "{what}: expected signature {:?}, found {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(found)
            );
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }
}

/// Converts a file-derived `u64` to `usize`, with an error instead of truncation.
pub(super) fn to_usize(value: u64, what: &str) -> Result<usize> {
    usize::try_from(value).map_err(|_| Error::new(format!("{what} ({value}) is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16().unwrap(), 0x0201);
        assert!(c.u16().is_err());
        assert_eq!(c.u8().unwrap(), 3);
        assert!(c.u8().is_err());
        assert!(c.bytes(usize::MAX).is_err());
    }

    #[test]
    fn undefined_addresses() {
        let four = Sizes {
            offset: 4,
            length: 4,
        };
        let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0]);
        assert_eq!(c.addr(four).unwrap(), None);
        assert_eq!(c.addr(four).unwrap(), Some(7));
        let eight = Sizes {
            offset: 8,
            length: 8,
        };
        assert_eq!(Cursor::new(&[0xff; 8]).addr(eight).unwrap(), None);
    }
}
