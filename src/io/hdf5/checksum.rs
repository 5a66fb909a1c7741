//! Jenkins' lookup3 `hashlittle`, the checksum HDF5 puts on newer metadata blocks
//! (superblock v2/v3, "OHDR"/"OCHK" object header chunks). Verifying it turns a damaged
//! header into a clear error instead of a confusing parse failure further on.

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Adds one 12-byte block (zero-padded when short) to the state as three little-endian words.
fn add_block(block: &[u8], a: &mut u32, b: &mut u32, c: &mut u32) {
    let mut padded = [0u8; 12];
    for (dst, src) in padded.iter_mut().zip(block) {
        *dst = *src;
    }
    let [wa, wb, wc] = padded.as_chunks::<4>().0 else {
        return;
    };
    *a = a.wrapping_add(u32::from_le_bytes(*wa));
    *b = b.wrapping_add(u32::from_le_bytes(*wb));
    *c = c.wrapping_add(u32::from_le_bytes(*wc));
}

/// Whether `stored` is the checksum of `covered`. Fuzzing builds (`--cfg fuzzing`, set by
/// cargo-fuzz) accept any value: a fuzzer cannot fix up checksums, and would otherwise never
/// get past them into the parsers behind.
pub(super) fn matches(covered: &[u8], stored: u32) -> bool {
    cfg!(fuzzing) || lookup3(covered) == stored
}

/// lookup3 `hashlittle(key, len, 0)`.
pub(super) fn lookup3(key: &[u8]) -> u32 {
    // The reference code adds the length as a 32-bit value, wrapping for huge keys.
    let init = 0xdead_beef_u32.wrapping_add(key.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    // All blocks but the last (which may be 1 to 12 bytes) get `mix`; the last gets `finish`.
    let last_start = (key.len() - 1) / 12 * 12;
    let (body, tail) = key.split_at(last_start);
    for block in body.chunks_exact(12) {
        add_block(block, &mut a, &mut b, &mut c);
        mix(&mut a, &mut b, &mut c);
    }
    add_block(tail, &mut a, &mut b, &mut c);
    finish(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::lookup3;

    #[test]
    fn reference_vectors() {
        // From the self-test in Bob Jenkins' lookup3.c.
        assert_eq!(lookup3(b""), 0xdeadbeef);
        assert_eq!(lookup3(b"Four score and seven years ago"), 0x17770551);
    }
}
