//! Datatype message: what one element is. Only the types weight files use get their own
//! variant; everything else is `Other` with a readable name, so callers can report it.

use std::fmt;

use super::cursor::{Cursor, Sizes};
use super::error::{Error, Result, bail};

/// How a fixed-length string is padded to its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrPad {
    /// Ends at the first NUL.
    NullTerm,
    /// Padded with trailing NULs.
    NullPad,
    /// Padded with trailing spaces (Fortran style).
    SpacePad,
}

/// Element type of a dataset or attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE 754 binary16/32/64.
    Float { size: usize, little_endian: bool },
    Int {
        size: usize,
        signed: bool,
        little_endian: bool,
    },
    FixedString {
        len: usize,
        padding: StrPad,
        utf8: bool,
    },
    /// Variable-length string: elements point into the global heap.
    VarString { utf8: bool },
    /// Anything else, by name ("compound", "vlen sequence", ...).
    Other(String),
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = |little: bool| if little { "" } else { " (big-endian)" };
        match self {
            Dtype::Float {
                size,
                little_endian,
            } => write!(
                f,
                "float{}{}",
                size.saturating_mul(8),
                order(*little_endian)
            ),
            Dtype::Int {
                size,
                signed,
                little_endian,
            } => {
                let u = if *signed { "" } else { "u" };
                write!(
                    f,
                    "{u}int{}{}",
                    size.saturating_mul(8),
                    order(*little_endian)
                )
            }
            Dtype::FixedString { len, .. } => write!(f, "string[{len}]"),
            Dtype::VarString { .. } => f.write_str("vlen string"),
            Dtype::Other(name) => f.write_str(name),
        }
    }
}

/// A parsed datatype: the public description plus the element size in the file.
pub(super) struct Datatype {
    pub dtype: Dtype,
    pub size: usize,
}

pub(super) fn parse(data: &[u8], sizes: Sizes) -> Result<Datatype> {
    let mut c = Cursor::new(data);
    let class_version = c.u8()?;
    let (class, version) = (class_version & 0x0f, class_version >> 4);
    if !(1..=5).contains(&version) {
        return Err(Error::unsupported(format!(
            "datatype message version {version}"
        )));
    }
    let bits = u32::from(c.u8()?) | u32::from(c.u8()?) << 8 | u32::from(c.u8()?) << 16;
    let size = usize::try_from(c.u32()?).map_err(|_| Error::new("datatype size too large"))?;
    if size == 0 {
        bail!("datatype has size 0");
    }
    let dtype = match class {
        0 => fixed_point(bits, size),
        1 => float(bits, size, &mut c)?,
        3 => Dtype::FixedString {
            len: size,
            padding: padding(bits & 0x0f)?,
            utf8: utf8(bits >> 4 & 0x0f)?,
        },
        9 => match bits & 0x0f {
            1 => {
                // On disk each element is (u32 length, global heap collection address, u32 index).
                let element = 8 + sizes.offset;
                if size != element {
                    bail!("variable-length string datatype has size {size}, expected {element}");
                }
                Dtype::VarString {
                    utf8: utf8(bits >> 8 & 0x0f)?,
                }
            }
            _ => Dtype::Other("vlen sequence".into()),
        },
        2 => Dtype::Other("time".into()),
        4 => Dtype::Other("bitfield".into()),
        5 => Dtype::Other("opaque".into()),
        6 => Dtype::Other("compound".into()),
        7 => Dtype::Other("reference".into()),
        8 => Dtype::Other("enum".into()),
        10 => Dtype::Other("array".into()),
        11 => Dtype::Other("complex".into()),
        n => Dtype::Other(format!("datatype class {n}")),
    };
    Ok(Datatype { dtype, size })
}

fn fixed_point(bits: u32, size: usize) -> Dtype {
    let little_endian = bits & 0x01 == 0;
    let signed = bits & 0x08 != 0;
    match size {
        1 | 2 | 4 | 8 => Dtype::Int {
            size,
            signed,
            little_endian,
        },
        _ => Dtype::Other(format!("{}-byte integer", size)),
    }
}

/// Accepts only the exact IEEE layouts (e.g. bfloat16, also 2 bytes, must not pass as f16).
fn float(bits: u32, size: usize, c: &mut Cursor) -> Result<Dtype> {
    let little_endian = match (bits & 0x01, bits >> 6 & 0x01) {
        (0, 0) => true,
        (1, 0) => false,
        _ => return Ok(Dtype::Other("VAX-order float".into())),
    };
    let sign_bit = bits >> 8 & 0xff;
    let offset = c.u16()?;
    let precision = c.u16()?;
    let exp_location = c.u8()?;
    let exp_size = c.u8()?;
    let mant_location = c.u8()?;
    let mant_size = c.u8()?;
    let bias = c.u32()?;
    let ieee: Option<(u8, u8, u32)> = match size {
        2 => Some((5, 10, 15)),
        4 => Some((8, 23, 127)),
        8 => Some((11, 52, 1023)),
        _ => None,
    };
    let bits_total = size * 8;
    let standard = ieee == Some((exp_size, mant_size, bias))
        && offset == 0
        && usize::from(precision) == bits_total
        && usize::from(exp_location) == usize::from(mant_size)
        && mant_location == 0
        && usize::try_from(sign_bit).ok() == Some(bits_total - 1);
    Ok(if standard {
        Dtype::Float {
            size,
            little_endian,
        }
    } else {
        Dtype::Other(format!("non-IEEE {bits_total}-bit float"))
    })
}

fn padding(code: u32) -> Result<StrPad> {
    Ok(match code {
        0 => StrPad::NullTerm,
        1 => StrPad::NullPad,
        2 => StrPad::SpacePad,
        n => bail!("unknown string padding type {n}"),
    })
}

fn utf8(code: u32) -> Result<bool> {
    Ok(match code {
        0 => false,
        1 => true,
        n => bail!("unknown string character set {n}"),
    })
}
