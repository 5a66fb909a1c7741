//! Digests keel names things by (weights, images, feature-cache entries): lowercase hex.

use sha2::{Digest, Sha256};

use crate::tensor::Tensor;

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of named f32 host tensors: each name, shape and the little-endian values,
/// in order. It names values, not files, so a model folder can tell its fine-tuned weights
/// from damaged ones.
pub fn named_tensors_sha256<'a>(items: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> String {
    let mut h = Sha256::new();
    for (name, t) in items {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((t.shape().rank() as u64).to_le_bytes());
        for &d in t.dims() {
            h.update((d as u64).to_le_bytes());
        }
        h.update(bytemuck::cast_slice::<f32, u8>(t.data()));
    }
    format!("sha256:{}", hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }

    #[test]
    fn tensor_checksums_see_names_shapes_and_values() {
        let a = Tensor::from_vec([2], &[1.0, 2.0]).unwrap();
        let b = Tensor::from_vec([1, 2], &[1.0, 2.0]).unwrap();
        let c = Tensor::from_vec([2], &[1.0, 2.5]).unwrap();
        let sum = |n: &str, t: &Tensor| named_tensors_sha256([(n, t)]);
        assert_eq!(sum("k", &a), sum("k", &a.clone()));
        assert_ne!(sum("k", &a), sum("j", &a));
        assert_ne!(sum("k", &a), sum("k", &b));
        assert_ne!(sum("k", &a), sum("k", &c));
        assert!(sum("k", &a).starts_with("sha256:"));
    }
}
