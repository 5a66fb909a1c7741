//! ONNX export of a whole trained model: preprocessed NHWC images in, class probabilities out.
//!
//! The graph is planned from the [`ExportGraph`] as a plain node list ([`plan`]) and then
//! encoded (`messages`, over the hand-written protobuf encoder in [`proto`]: keel takes no
//! protobuf crate). Opset 17 (IR version 8), which every ONNX Runtime since 1.13 runs.
//!
//! Layout: the input is NHWC, as Keras feeds VGG, but ONNX's `Conv` and pools are NCHW, so
//! the graph transposes once at the start and keeps NCHW through the conv base. A head
//! `Flatten` of a spatial tensor transposes back to NHWC first, so the flattened order is
//! Keras's (channels fastest) and the dense kernel after it applies unchanged. Preprocessing
//! is not in the graph (see `docs/export.md`).

mod messages;
pub mod proto;

use std::io::Write;
use std::path::Path;

use messages::{Dim, ModelHeader};

use crate::error::{Error, Result};
use crate::tensor::{GlobalPool, Tensor};
use crate::transfer::{ExportGraph, ExportLayer, FlowShape};

/// The operator set the graph is written against (default domain).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// The graph's input: float32 `[batch, H, W, 3]`, preprocessed.
pub const INPUT: &str = "input";
/// The graph's output: float32 `[batch, classes]`.
pub const OUTPUT: &str = "probabilities";
/// The name of the dynamic batch dimension.
pub const BATCH: &str = "batch";

/// An attribute value (the graph needs only integers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

/// One ONNX node; its single output tensor is named after it (the last node's is [`OUTPUT`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub output: String,
    pub attrs: Vec<(&'static str, Attr)>,
}

/// A float32 constant in ONNX's layout (conv kernels OIHW).
#[derive(Clone, Debug, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// The graph as ONNX will hold it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    /// Width of the output (the number of classes).
    pub classes: usize,
}

struct Planner {
    plan: Plan,
    /// The tensor the next node reads.
    current: String,
}

impl Planner {
    /// Append `op` reading the current tensor (then `extra` inputs); it becomes current.
    fn push(
        &mut self,
        op: &'static str,
        name: String,
        extra: &[&str],
        attrs: Vec<(&'static str, Attr)>,
    ) {
        let mut inputs = vec![std::mem::replace(&mut self.current, name.clone())];
        inputs.extend(extra.iter().map(|s| s.to_string()));
        self.plan.nodes.push(Node {
            op,
            output: name.clone(),
            name,
            inputs,
            attrs,
        });
    }

    fn constant(&mut self, name: String, dims: Vec<usize>, data: Vec<f32>) -> String {
        self.plan.initializers.push(Initializer {
            name: name.clone(),
            dims,
            data,
        });
        name
    }

    /// The nodes of `layer`, which `input` reaches ([`ExportGraph::input_shapes`] has checked
    /// that its weights fit).
    fn layer(&mut self, layer: &ExportLayer, input: FlowShape) {
        match layer {
            ExportLayer::Conv2d { name, kernel, bias } => {
                let (cin, cout) = (kernel.dims()[2], kernel.dims()[3]);
                let k = self.constant(
                    format!("{name}.kernel"),
                    vec![cout, cin, 3, 3],
                    hwio_to_oihw(kernel),
                );
                let b = self.constant(format!("{name}.bias"), vec![cout], bias.data().to_vec());
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                    ("strides", Attr::Ints(vec![1, 1])),
                ];
                self.push("Conv", name.clone(), &[&k, &b], attrs);
                self.push("Relu", format!("{name}_relu"), &[], vec![]);
            }
            ExportLayer::MaxPool { name } => {
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                ];
                // Default ceil_mode 0 and no padding: odd sizes floor, as Keras's 'valid'.
                self.push("MaxPool", name.clone(), &[], attrs);
            }
            ExportLayer::GlobalPool { name, kind } => {
                let op = match kind {
                    GlobalPool::Avg => "GlobalAveragePool",
                    GlobalPool::Max => "GlobalMaxPool",
                };
                // ONNX keeps the pooled axes ([N, C, 1, 1]); Keras drops them.
                self.push(op, name.clone(), &[], vec![]);
                self.push(
                    "Flatten",
                    format!("{name}_flatten"),
                    &[],
                    vec![("axis", Attr::Int(1))],
                );
            }
            ExportLayer::Flatten { name } => {
                // Keras's Flatten of a vector is the identity: nothing to add.
                if let FlowShape::Image { .. } = input {
                    let perm = Attr::Ints(vec![0, 2, 3, 1]);
                    self.push(
                        "Transpose",
                        format!("{name}_nhwc"),
                        &[],
                        vec![("perm", perm)],
                    );
                    self.push("Flatten", name.clone(), &[], vec![("axis", Attr::Int(1))]);
                }
            }
            ExportLayer::Dense {
                name,
                kernel,
                bias,
                relu,
            } => {
                let (n, out) = (kernel.dims()[0], kernel.dims()[1]);
                // Gemm's B is (K, N) without transB: Keras's (in, out) kernel as it is.
                let k = self.constant(
                    format!("{name}.kernel"),
                    vec![n, out],
                    kernel.data().to_vec(),
                );
                let b = self.constant(format!("{name}.bias"), vec![out], bias.data().to_vec());
                self.push("Gemm", name.clone(), &[&k, &b], vec![]);
                if *relu {
                    self.push("Relu", format!("{name}_relu"), &[], vec![]);
                }
            }
            // Identity at inference: leaving it out is exact.
            ExportLayer::Dropout { .. } => {}
            ExportLayer::Softmax { name } => {
                self.push("Softmax", name.clone(), &[], vec![("axis", Attr::Int(-1))]);
            }
        }
    }
}

/// Keras's conv kernel `(kH, kW, Cin, Cout)` as ONNX's `(Cout, Cin, kH, kW)`.
fn hwio_to_oihw(kernel: &Tensor) -> Vec<f32> {
    let d = kernel.dims();
    let (kh, kw, ci, co) = (d[0], d[1], d[2], d[3]);
    let src = kernel.data();
    let mut out = vec![0f32; src.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((o * ci + i) * kh + y) * kw + x] = src[((y * kw + x) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// The ONNX node list and constants of `graph`.
pub fn plan(graph: &ExportGraph) -> Result<Plan> {
    let shapes = graph.input_shapes()?;
    let mut p = Planner {
        plan: Plan {
            nodes: Vec::new(),
            initializers: Vec::new(),
            classes: graph.classes.len(),
        },
        current: INPUT.to_string(),
    };
    let perm = Attr::Ints(vec![0, 3, 1, 2]);
    p.push("Transpose", "input_nchw".into(), &[], vec![("perm", perm)]);
    for (layer, &input) in graph.layers.iter().zip(&shapes) {
        p.layer(layer, input);
    }
    if let Some(last) = p.plan.nodes.last_mut() {
        last.output = OUTPUT.to_string();
    }
    // Tensor names must be unique in an ONNX graph; layer names from Keras's scheme are.
    let mut names = std::collections::HashSet::from([INPUT]);
    let outputs = p.plan.nodes.iter().map(|n| n.output.as_str());
    let constants = p.plan.initializers.iter().map(|i| i.name.as_str());
    if let Some(dup) = outputs.chain(constants).find(|n| !names.insert(n)) {
        return Err(Error::Invalid(format!(
            "two tensors would be named {dup}: rename a layer"
        )));
    }
    Ok(p.plan)
}

/// What the input must be, said in the file itself (graph and input `doc_string`).
fn input_contract(graph: &ExportGraph) -> String {
    let [h, w, _] = graph.input;
    format!(
        "float32 [batch, {h}, {w}, 3], NHWC, preprocessed as Keras's \
         keras.applications.{}.preprocess_input (caffe mode): RGB to BGR, then the ImageNet \
         means [103.939, 116.779, 123.68] (B, G, R) subtracted from the 0-255 pixel values, no \
         scaling; images resized to {h}x{w} first",
        graph.model
    )
}

/// The whole `ModelProto` of `graph`.
pub fn encode(graph: &ExportGraph) -> Result<Vec<u8>> {
    let plan = plan(graph)?;
    // Protobuf messages are limited to 2 GiB, and keel writes no external-data files.
    let weight_bytes: usize = plan.initializers.iter().map(|i| i.data.len() * 4).sum();
    if weight_bytes > i32::MAX as usize - (1 << 20) {
        return Err(Error::Invalid(format!(
            "the weights take {weight_bytes} bytes, more than one ONNX file holds (2 GiB)"
        )));
    }
    let [h, w, c] = graph.input;
    let contract = input_contract(graph);
    let input = messages::value_info(
        INPUT,
        &[
            Dim::Param(BATCH),
            Dim::Value(h),
            Dim::Value(w),
            Dim::Value(c),
        ],
        &contract,
    );
    let output = messages::value_info(
        OUTPUT,
        &[Dim::Param(BATCH), Dim::Value(plan.classes)],
        "class probabilities, in the order of the metadata's `classes`",
    );
    let doc = format!(
        "{} transfer-learning model exported by keel. Input: {contract}. Output: \
         probabilities [batch, {}].",
        graph.model, plan.classes
    );
    let g = messages::graph(
        &format!("keel_{}", graph.model),
        &doc,
        &plan.nodes,
        &plan.initializers,
        &[input],
        &[output],
    );
    let classes = serde_json::to_string(&graph.classes)
        .map_err(|e| Error::Invalid(format!("class names: {e}")))?;
    let metadata = [
        ("classes", classes),
        ("model", graph.model.clone()),
        ("input_size", format!("{h}x{w}")),
        ("layout", "NHWC".to_string()),
        ("preprocessing", "caffe".to_string()),
    ];
    let header = ModelHeader {
        ir_version: IR_VERSION,
        opset: OPSET,
        producer_version: env!("CARGO_PKG_VERSION"),
        doc: &doc,
        metadata: &metadata,
    };
    Ok(messages::model(&header, &g))
}

/// Write `graph` as an ONNX model at `path`, atomically: the file appears whole or not at all.
pub fn write(graph: &ExportGraph, path: &Path) -> Result<()> {
    let bytes = encode(graph).map_err(|e| Error::file(path, format!("cannot export: {e}")))?;
    crate::io::atomic::write_atomic(path, |w| w.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_vec(dims.to_vec(), &v).unwrap()
    }

    fn conv(name: &str, cin: usize, cout: usize) -> ExportLayer {
        ExportLayer::Conv2d {
            name: name.into(),
            kernel: t(&[3, 3, cin, cout]),
            bias: t(&[cout]),
        }
    }

    fn dense(name: &str, i: usize, o: usize, relu: bool) -> ExportLayer {
        ExportLayer::Dense {
            name: name.into(),
            kernel: t(&[i, o]),
            bias: t(&[o]),
            relu,
        }
    }

    fn graph(head: Vec<ExportLayer>) -> ExportGraph {
        let mut layers = vec![
            conv("block1_conv1", 3, 4),
            ExportLayer::MaxPool {
                name: "block1_pool".into(),
            },
        ];
        layers.extend(head);
        layers.push(ExportLayer::Softmax {
            name: "predictions".into(),
        });
        ExportGraph {
            model: "vgg16".into(),
            input: [5, 4, 3],
            layers,
            classes: vec!["a".into(), "b".into()],
        }
    }

    fn ops(p: &Plan) -> Vec<&str> {
        p.nodes.iter().map(|n| n.op).collect()
    }

    #[test]
    fn gap_head() {
        let g = graph(vec![
            ExportLayer::GlobalPool {
                name: "global_average_pooling2d".into(),
                kind: GlobalPool::Avg,
            },
            dense("dense", 4, 6, true),
            ExportLayer::Dropout {
                name: "dropout".into(),
                rate: 0.5,
            },
            dense("dense_1", 6, 2, false),
        ]);
        let p = plan(&g).unwrap();
        assert_eq!(
            ops(&p),
            [
                "Transpose",
                "Conv",
                "Relu",
                "MaxPool",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
                "Relu",
                "Gemm",
                "Softmax"
            ]
        );
        // A chain: every node reads the one before it.
        assert_eq!(p.nodes[0].inputs, [INPUT]);
        for pair in p.nodes.windows(2) {
            assert_eq!(pair[1].inputs[0], pair[0].output);
        }
        assert_eq!(p.nodes.last().unwrap().output, OUTPUT);
        assert_eq!(p.nodes[0].attrs, [("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
        assert_eq!(
            p.nodes[1].inputs,
            ["input_nchw", "block1_conv1.kernel", "block1_conv1.bias"]
        );
        assert_eq!(p.nodes[9].attrs, [("axis", Attr::Int(-1))]);
        let names: Vec<&str> = p.initializers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "block1_conv1.kernel",
                "block1_conv1.bias",
                "dense.kernel",
                "dense.bias",
                "dense_1.kernel",
                "dense_1.bias"
            ]
        );
        assert_eq!(p.initializers[0].dims, [4, 3, 3, 3]);
        assert_eq!(p.initializers[2].dims, [4, 6]);
        assert_eq!(p.initializers[2].data, t(&[4, 6]).data());
    }

    #[test]
    fn flatten_head_goes_back_to_nhwc() {
        // 5x4 input, pooled to 2x2 with 4 channels: 16 features.
        let g = graph(vec![
            ExportLayer::Flatten {
                name: "flatten".into(),
            },
            dense("dense", 16, 2, false),
        ]);
        let p = plan(&g).unwrap();
        assert_eq!(
            ops(&p),
            [
                "Transpose",
                "Conv",
                "Relu",
                "MaxPool",
                "Transpose",
                "Flatten",
                "Gemm",
                "Softmax"
            ]
        );
        assert_eq!(p.nodes[4].attrs, [("perm", Attr::Ints(vec![0, 2, 3, 1]))]);
        assert_eq!(p.nodes[5].attrs, [("axis", Attr::Int(1))]);
    }

    #[test]
    fn gmp_head() {
        let g = graph(vec![
            ExportLayer::GlobalPool {
                name: "global_max_pooling2d".into(),
                kind: GlobalPool::Max,
            },
            dense("dense", 4, 2, false),
        ]);
        assert_eq!(
            ops(&plan(&g).unwrap()),
            [
                "Transpose",
                "Conv",
                "Relu",
                "MaxPool",
                "GlobalMaxPool",
                "Flatten",
                "Gemm",
                "Softmax"
            ]
        );
    }

    #[test]
    fn conv_kernel_is_oihw() {
        let k = t(&[3, 3, 2, 5]);
        let oihw = hwio_to_oihw(&k);
        for (y, x, i, o) in [(0, 0, 0, 0), (2, 1, 1, 3), (1, 2, 0, 4), (2, 2, 1, 4)] {
            assert_eq!(
                oihw[((o * 2 + i) * 3 + y) * 3 + x],
                k.data()[((y * 3 + x) * 2 + i) * 5 + o]
            );
        }
    }

    #[test]
    fn shape_errors() {
        // The dense layer's input is 4 wide, not 16.
        let g = graph(vec![
            ExportLayer::GlobalPool {
                name: "gap".into(),
                kind: GlobalPool::Avg,
            },
            dense("dense", 16, 2, false),
        ]);
        let e = plan(&g).unwrap_err().to_string();
        assert!(e.contains("dense") && e.contains("input of 4"), "{e}");
        // Three classes declared, two outputs.
        let mut g = graph(vec![
            ExportLayer::GlobalPool {
                name: "gap".into(),
                kind: GlobalPool::Avg,
            },
            dense("dense", 4, 2, false),
        ]);
        g.classes.push("c".into());
        let e = plan(&g).unwrap_err().to_string();
        assert!(e.contains("3 classes"), "{e}");
        // A dense layer on a feature map.
        let g = graph(vec![dense("dense", 4, 2, false)]);
        assert!(plan(&g).unwrap_err().to_string().contains("flat input"));
        // A conv kernel of the wrong input depth.
        let mut g = graph(vec![]);
        g.layers.insert(1, conv("block1_conv2", 3, 4));
        assert!(plan(&g).unwrap_err().to_string().contains("block1_conv2"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let g = graph(vec![
            ExportLayer::GlobalPool {
                name: "block1_conv1".into(),
                kind: GlobalPool::Avg,
            },
            dense("dense", 4, 2, false),
        ]);
        let e = plan(&g).unwrap_err().to_string();
        assert!(e.contains("block1_conv1"), "{e}");
    }

    #[test]
    fn encoded_model_starts_with_ir_version() {
        let g = graph(vec![
            ExportLayer::GlobalPool {
                name: "gap".into(),
                kind: GlobalPool::Avg,
            },
            dense("dense", 4, 2, false),
        ]);
        let bytes = encode(&g).unwrap();
        assert_eq!(&bytes[..2], [0x08, IR_VERSION as u8]);
        let has = |s: &[u8]| bytes.windows(s.len()).any(|w| w == s);
        assert!(has(br#"["a","b"]"#));
        assert!(has(b"GlobalAveragePool"));
    }
}
