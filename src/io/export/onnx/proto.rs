//! The protocol buffers wire format, write side only: the few field kinds ONNX's messages
//! need. keel takes no protobuf crate (its dependencies are fixed), and an encoder is small:
//! every field is a key (`field << 3 | wire type`) followed by a varint, a fixed-width value or
//! a length-prefixed byte string, and a nested message is just such a byte string.
//!
//! Fields are written in the order the caller writes them; protobuf readers accept any order.

/// Wire type of varint-encoded scalars (`int32`, `int64`, enums).
const VARINT: u32 = 0;
/// Wire type of strings, bytes, nested messages and packed repeated scalars.
const LEN: u32 = 2;

/// One message being encoded: its fields' bytes, appended in call order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    buf: Vec<u8>,
}

/// Append `v` as a base-128 varint: 7 bits per byte, least significant first, the high bit
/// set on every byte but the last.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn key(&mut self, field: u32, wire: u32) {
        put_varint(&mut self.buf, u64::from(field << 3 | wire));
    }

    /// An `int64` (or `int32`, or enum) field. Negative values take ten bytes: protobuf's
    /// `int64` is the two's complement as a `u64`, not zigzag (that is `sint64`, unused here).
    pub fn int64(&mut self, field: u32, v: i64) -> &mut Message {
        self.key(field, VARINT);
        put_varint(&mut self.buf, v as u64);
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Message {
        self.key(field, LEN);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A `string` field (UTF-8, as Rust strings are).
    pub fn string(&mut self, field: u32, v: &str) -> &mut Message {
        self.bytes(field, v.as_bytes())
    }

    /// A nested message field.
    pub fn message(&mut self, field: u32, m: &Message) -> &mut Message {
        self.bytes(field, &m.buf)
    }

    /// A repeated `int64` field, packed: one length-prefixed run of varints. ONNX's `.proto`
    /// is proto2, where repeated scalars default to unpacked, but every protobuf parser must
    /// accept both forms, and packed is the smaller one.
    pub fn packed_int64(&mut self, field: u32, vs: &[i64]) -> &mut Message {
        let mut run = Vec::new();
        for &v in vs {
            put_varint(&mut run, v as u64);
        }
        self.bytes(field, &run)
    }

    /// A repeated `float` field, packed: the little-endian IEEE-754 values back to back (also
    /// what an ONNX tensor's `raw_data` holds; see [`f32_le_bytes`]).
    pub fn packed_f32(&mut self, field: u32, vs: &[f32]) -> &mut Message {
        self.bytes(field, &f32_le_bytes(vs))
    }
}

/// `vs` as little-endian bytes, 4 per value: the layout of packed floats and of ONNX's
/// `raw_data`, whatever the host's byte order.
pub fn f32_le_bytes(vs: &[f32]) -> Vec<u8> {
    vs.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    }

    #[test]
    fn varints() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]); // the protobuf documentation's example
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(
            varint(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn scalar_fields() {
        // field 1, varint 150: the documentation's `08 96 01`.
        assert_eq!(Message::new().int64(1, 150).as_bytes(), [0x08, 0x96, 0x01]);
        // -1 as int64: ten bytes of two's complement.
        assert_eq!(
            Message::new().int64(3, -1).as_bytes(),
            [
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
        // field 2, "testing": the documentation's `12 07 74 65 73 74 69 6e 67`.
        assert_eq!(
            Message::new().string(2, "testing").as_bytes(),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        // A field number above 15 takes a two-byte key: field 20, varint -> (20 << 3) = 160.
        assert_eq!(Message::new().int64(20, 2).as_bytes(), [0xa0, 0x01, 0x02]);
    }

    #[test]
    fn nested_messages() {
        // The documentation's example: message Test3 { Test1 c = 3; } with c.a = 150.
        let mut inner = Message::new();
        inner.int64(1, 150);
        let mut outer = Message::new();
        outer.message(3, &inner);
        assert_eq!(outer.as_bytes(), [0x1a, 0x03, 0x08, 0x96, 0x01]);
        // An empty message is a zero-length field, still present.
        assert_eq!(
            Message::new().message(7, &Message::new()).as_bytes(),
            [0x3a, 0x00]
        );
        // Two levels, with the lengths counted from the inside out.
        let mut outer2 = Message::new();
        outer2.message(1, &outer).string(2, "a");
        assert_eq!(
            outer2.into_bytes(),
            [0x0a, 0x05, 0x1a, 0x03, 0x08, 0x96, 0x01, 0x12, 0x01, b'a']
        );
    }

    #[test]
    fn packed_fields() {
        // The documentation's packed example: field 4 = [3, 270, 86942].
        assert_eq!(
            Message::new().packed_int64(4, &[3, 270, 86942]).as_bytes(),
            [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]
        );
        // 1.0 = 0x3f800000 and -2.5 = 0xc0200000, little-endian.
        assert_eq!(
            Message::new().packed_f32(4, &[1.0, -2.5]).as_bytes(),
            [0x22, 0x08, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0]
        );
        assert_eq!(Message::new().packed_int64(8, &[]).as_bytes(), [0x42, 0x00]);
    }

    #[test]
    fn long_lengths_are_varints() {
        let payload = vec![7u8; 300];
        let m = Message::new().bytes(9, &payload).clone().into_bytes();
        assert_eq!(&m[..3], [0x4a, 0xac, 0x02]);
        assert_eq!(m.len(), 3 + 300);
    }
}
