//! ONNX's messages (`onnx.proto`, proto2), encoded with [`super::proto`]: only the fields keel
//! writes. The field numbers are the schema's; a wrong one is not an error a reader reports
//! (unknown fields are skipped), so the unit tests below pin them byte by byte and the export
//! test runs `onnx.checker` and ONNX Runtime on the result.

use super::proto::{Message, f32_le_bytes};
use super::{Attr, Initializer, Node};

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i64 = 1;
/// `AttributeProto.AttributeType.INT` and `INTS`.
const ATTR_INT: i64 = 2;
const ATTR_INTS: i64 = 7;

/// One dimension of a graph input or output: fixed, or named (dynamic).
#[derive(Clone, Copy, Debug)]
pub enum Dim<'a> {
    Value(usize),
    Param(&'a str),
}

/// `ModelProto` around a finished graph.
pub struct ModelHeader<'a> {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_version: &'a str,
    pub doc: &'a str,
    /// `metadata_props`, in order.
    pub metadata: &'a [(&'a str, String)],
}

/// `ModelProto`: ir_version 1, producer_name 2, producer_version 3, doc_string 6, graph 7,
/// opset_import 8, metadata_props 14.
pub fn model(header: &ModelHeader, graph: &Message) -> Vec<u8> {
    let mut m = Message::new();
    m.int64(1, header.ir_version)
        .string(2, "keel")
        .string(3, header.producer_version)
        .string(6, header.doc);
    // OperatorSetIdProto: domain 1 (empty: the default "ai.onnx" domain), version 2.
    let mut opset = Message::new();
    opset.string(1, "").int64(2, header.opset);
    m.message(8, &opset);
    for (key, value) in header.metadata {
        // StringStringEntryProto: key 1, value 2.
        let mut entry = Message::new();
        entry.string(1, key).string(2, value);
        m.message(14, &entry);
    }
    m.message(7, graph);
    m.into_bytes()
}

/// `GraphProto`: node 1, name 2, initializer 5, doc_string 10, input 11, output 12.
pub fn graph(
    name: &str,
    doc: &str,
    nodes: &[Node],
    initializers: &[Initializer],
    inputs: &[Message],
    outputs: &[Message],
) -> Message {
    let mut g = Message::new();
    for n in nodes {
        g.message(1, &node(n));
    }
    g.string(2, name);
    for t in initializers {
        g.message(5, &tensor(t));
    }
    g.string(10, doc);
    for i in inputs {
        g.message(11, i);
    }
    for o in outputs {
        g.message(12, o);
    }
    g
}

/// `NodeProto`: input 1, output 2, name 3, op_type 4, attribute 5.
pub fn node(n: &Node) -> Message {
    let mut m = Message::new();
    for i in &n.inputs {
        m.string(1, i);
    }
    m.string(2, &n.output).string(3, &n.name).string(4, n.op);
    for (name, value) in &n.attrs {
        m.message(5, &attribute(name, value));
    }
    m
}

/// `AttributeProto`: name 1, i 3, ints 8, type 20 (which IR version 3 on requires).
fn attribute(name: &str, value: &Attr) -> Message {
    let mut m = Message::new();
    m.string(1, name);
    match value {
        Attr::Int(i) => m.int64(3, *i).int64(20, ATTR_INT),
        Attr::Ints(is) => m.packed_int64(8, is).int64(20, ATTR_INTS),
    };
    m
}

/// `TensorProto` of float32 in `raw_data`: dims 1, data_type 2, name 8, raw_data 9.
pub fn tensor(t: &Initializer) -> Message {
    let dims: Vec<i64> = t.dims.iter().map(|&d| d as i64).collect();
    let mut m = Message::new();
    m.packed_int64(1, &dims)
        .int64(2, FLOAT)
        .string(8, &t.name)
        .bytes(9, &f32_le_bytes(&t.data));
    m
}

/// `ValueInfoProto` (name 1, type 2, doc_string 3) of a float32 tensor: `TypeProto` has
/// tensor_type 1, whose `Tensor` has elem_type 1 and shape 2; `TensorShapeProto` has dim 1,
/// each `Dimension` dim_value 1 or dim_param 2.
pub fn value_info(name: &str, dims: &[Dim], doc: &str) -> Message {
    let mut shape = Message::new();
    for d in dims {
        let mut dim = Message::new();
        match *d {
            Dim::Value(v) => dim.int64(1, v as i64),
            Dim::Param(p) => dim.string(2, p),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::new();
    tensor_type.int64(1, FLOAT).message(2, &shape);
    let mut ty = Message::new();
    ty.message(1, &tensor_type);
    let mut m = Message::new();
    m.string(1, name).message(2, &ty);
    if !doc.is_empty() {
        m.string(3, doc);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_bytes() {
        let n = Node {
            op: "Relu",
            name: "r".into(),
            inputs: vec!["a".into()],
            output: "b".into(),
            attrs: vec![("axis", Attr::Int(-1)), ("perm", Attr::Ints(vec![0, 3]))],
        };
        let mut want = vec![0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 1, b'r', 0x22, 4];
        want.extend_from_slice(b"Relu");
        // attribute {name "axis", i -1, type INT}
        want.extend_from_slice(&[0x2a, 20, 0x0a, 4]);
        want.extend_from_slice(b"axis");
        want.extend_from_slice(&[0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        want.extend_from_slice(&[0x01, 0xa0, 0x01, 0x02]);
        // attribute {name "perm", ints [0, 3] packed, type INTS}
        want.extend_from_slice(&[0x2a, 13, 0x0a, 4]);
        want.extend_from_slice(b"perm");
        want.extend_from_slice(&[0x42, 2, 0, 3, 0xa0, 0x01, 0x07]);
        assert_eq!(node(&n).into_bytes(), want);
    }

    #[test]
    fn tensor_bytes() {
        let t = Initializer {
            name: "w".into(),
            dims: vec![2],
            data: vec![1.0, -2.5],
        };
        let want = [
            0x0a, 1, 2, // dims [2]
            0x10, 1, // data_type FLOAT
            0x42, 1, b'w', // name
            0x4a, 8, 0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0, // raw_data
        ];
        assert_eq!(tensor(&t).into_bytes(), want);
    }

    #[test]
    fn value_info_bytes() {
        let m = value_info("x", &[Dim::Param("n"), Dim::Value(3)], "");
        let want = [
            0x0a, 1, b'x', // name
            0x12, 15, // type
            0x0a, 13, // tensor_type
            0x08, 1, // elem_type FLOAT
            0x12, 9, // shape
            0x0a, 3, 0x12, 1, b'n', // dim {dim_param "n"}
            0x0a, 2, 0x08, 3, // dim {dim_value 3}
        ];
        assert_eq!(m.into_bytes(), want);
    }

    #[test]
    fn model_bytes() {
        let header = ModelHeader {
            ir_version: 8,
            opset: 17,
            producer_version: "0",
            doc: "",
            metadata: &[("k", "v".into())],
        };
        let bytes = model(&header, &Message::new());
        let mut want = vec![0x08, 8, 0x12, 4];
        want.extend_from_slice(b"keel");
        want.extend_from_slice(&[0x1a, 1, b'0', 0x32, 0]);
        want.extend_from_slice(&[0x42, 4, 0x0a, 0, 0x10, 17]); // opset_import {"" 17}
        want.extend_from_slice(&[0x72, 6, 0x0a, 1, b'k', 0x12, 1, b'v']); // metadata_props
        want.extend_from_slice(&[0x3a, 0]); // graph
        assert_eq!(bytes, want);
    }
}
