//! NumPy `.npy` files: write f32 features, read the reference arrays tests compare against.
//!
//! The format is a magic string, a small Python-dict header (dtype, order, shape) and the raw
//! array. It is simple enough that owning the 100 lines beats a dependency.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The bytes of a version 1.0 `.npy` file holding `t` as little-endian f32, C order.
pub fn encode_f32(t: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = t.dims().iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + length + header is a multiple of 64, ending in '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(header.len() + 10 + 4 * t.numel());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytemuck::cast_slice(t.data()));
    out
}

/// Write `t` to `path` atomically (see [`super::atomic::write_atomic`]).
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = encode_f32(t);
    super::atomic::write_atomic(path, |f| f.write_all(&bytes))
}

/// An array read from a `.npy` file, converted to f32 (from f32, f64 or u8).
#[derive(Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub descr: String,
    pub data: Vec<f32>,
}

impl NpyArray {
    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(self.shape.clone(), &self.data)
    }
}

/// Read a `.npy` file of little-endian f32, f64 (rounded to f32) or u8, C order.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|problem| Error::file(path, problem))
}

/// Parse `.npy` bytes; the error is a description of the problem.
pub fn decode(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header lacks '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("")
        .to_string();
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape in .npy header")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension '{s}'"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape too large")?;
    let body = &bytes[start + header_len..];
    let (size, convert): (usize, fn(&[u8]) -> f32) = match descr.as_str() {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        "<f8" => (8, |c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
        }),
        "|u1" => (1, |c| c[0] as f32),
        other => {
            return Err(format!(
                "unsupported dtype '{other}' (need <f4, <f8 or |u1)"
            ));
        }
    };
    if count.checked_mul(size) != Some(body.len()) {
        return Err(format!(
            "shape {shape:?} of {descr} needs {count} elements but the data holds {} bytes",
            body.len()
        ));
    }
    let data = body.chunks_exact(size).map(convert).collect();
    Ok(NpyArray { shape, descr, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        for dims in [vec![3usize], vec![2, 3], vec![1, 7, 7, 5]] {
            let n = dims.iter().product::<usize>();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
            let t = Tensor::from_vec(dims.clone(), &values).unwrap();
            let bytes = encode_f32(&t);
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0);
            let back = decode(&bytes).unwrap();
            assert_eq!(back.shape, dims);
            assert_eq!(back.data, values);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"hello").is_err());
        let t = Tensor::from_vec([4], &[1., 2., 3., 4.]).unwrap();
        let bytes = encode_f32(&t);
        assert!(
            decode(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("needs 4 elements")
        );
    }
}
