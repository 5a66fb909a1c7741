//! A trained model as one plain list of layers with host weights, from the preprocessed image
//! to the class probabilities: what every export format writes (`io::keras_export`,
//! `io::onnx`), so none of them walks keel's own structures or decides again what the model is.

use crate::error::{Error, Result};
use crate::nn::LayerKind;
use crate::nn::head::HeadLayer;
use crate::tensor::{GlobalPool, Tensor};

use super::{FrozenBase, TrainedModel};

/// One layer, with Keras's name and Keras's weight layouts.
#[derive(Clone, Debug)]
pub enum ExportLayer {
    /// 3x3, stride 1, `padding='same'`, ReLU; kernel `(3, 3, Cin, Cout)`, bias `(Cout,)`.
    Conv2d {
        name: String,
        kernel: Tensor,
        bias: Tensor,
    },
    /// 2x2, stride 2, `padding='valid'` (odd sizes floored).
    MaxPool { name: String },
    /// Over H and W, giving `(C,)`.
    GlobalPool { name: String, kind: GlobalPool },
    /// NHWC order, as Keras flattens a channels-last tensor.
    Flatten { name: String },
    /// `x @ kernel + bias`, kernel `(in, out)`, then ReLU if `relu`.
    Dense {
        name: String,
        kernel: Tensor,
        bias: Tensor,
        relu: bool,
    },
    /// Identity at inference; kept so a Keras model has the same layer list.
    Dropout { name: String, rate: f64 },
    /// Softmax over the classes: the last layer.
    Softmax { name: String },
}

impl ExportLayer {
    pub fn name(&self) -> &str {
        match self {
            ExportLayer::Conv2d { name, .. }
            | ExportLayer::MaxPool { name }
            | ExportLayer::GlobalPool { name, .. }
            | ExportLayer::Flatten { name }
            | ExportLayer::Dense { name, .. }
            | ExportLayer::Dropout { name, .. }
            | ExportLayer::Softmax { name } => name,
        }
    }
}

/// What reaches a layer, per image: a feature map (Keras's `(H, W, C)`) or a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowShape {
    Image { h: usize, w: usize, c: usize },
    Flat(usize),
}

/// The whole model: input `(H, W, 3)` preprocessed as Keras's `preprocess_input` (caffe mode:
/// BGR, ImageNet means subtracted), NHWC, output `(classes,)` probabilities.
#[derive(Clone, Debug)]
pub struct ExportGraph {
    /// `vgg16` or `vgg19`.
    pub model: String,
    /// `(H, W, 3)`.
    pub input: [usize; 3],
    pub layers: Vec<ExportLayer>,
    pub classes: Vec<String>,
}

impl ExportGraph {
    /// The graph of `model` on `base` (the base it was trained on, fine-tuned layers in
    /// place: see [`TrainedModel::tuned_base`]).
    pub fn new(model: &TrainedModel, base: &FrozenBase) -> Result<ExportGraph> {
        let host = |t: &Tensor| -> Result<Tensor> { base.backend().to_host(t.clone()) };
        let [h, w] = base.info().input;
        let mut layers = Vec::new();
        for (spec, params) in base.vgg().layers_with_weights() {
            let name = spec.name.clone();
            match spec.kind {
                LayerKind::Input => {}
                LayerKind::Conv2d { .. } => {
                    let p = params.ok_or_else(|| missing(&name))?;
                    let bias = p.bias().ok_or_else(|| missing(&name))?;
                    layers.push(ExportLayer::Conv2d {
                        kernel: host(p.kernel())?,
                        bias: host(bias)?,
                        name,
                    });
                }
                LayerKind::MaxPool => layers.push(ExportLayer::MaxPool { name }),
                LayerKind::Flatten => layers.push(ExportLayer::Flatten { name }),
                LayerKind::GlobalPool(kind) => layers.push(ExportLayer::GlobalPool { name, kind }),
                LayerKind::Dense { .. } => {
                    return Err(Error::Invalid(format!(
                        "the model's base ends at {}, inside VGG's top: export supports bases that \
                         end at a conv or pool layer",
                        base.info().layer
                    )));
                }
            }
            if spec.name == base.info().layer {
                break;
            }
        }
        let head: Vec<_> = model.head.layers_with_weights().collect();
        let (mut gap, mut gmp, mut flat, mut drop) = (0, 0, 0, 0);
        for (i, (layer, weights)) in head.iter().enumerate() {
            let relu_next = matches!(head.get(i + 1), Some((HeadLayer::Relu, _)));
            match (*layer, weights) {
                (HeadLayer::GlobalAvgPool, _) => {
                    gap += 1;
                    layers.push(ExportLayer::GlobalPool {
                        name: numbered("global_average_pooling2d", gap),
                        kind: GlobalPool::Avg,
                    });
                }
                (HeadLayer::GlobalMaxPool, _) => {
                    gmp += 1;
                    layers.push(ExportLayer::GlobalPool {
                        name: numbered("global_max_pooling2d", gmp),
                        kind: GlobalPool::Max,
                    });
                }
                (HeadLayer::Flatten, _) => {
                    flat += 1;
                    layers.push(ExportLayer::Flatten {
                        name: numbered("flatten", flat),
                    });
                }
                (HeadLayer::Dense(_), Some((name, p))) => {
                    let bias = p.bias().ok_or_else(|| missing(name))?;
                    layers.push(ExportLayer::Dense {
                        name: name.to_string(),
                        kernel: host(p.kernel())?,
                        bias: host(bias)?,
                        relu: relu_next,
                    });
                }
                (HeadLayer::Dense(_), None) => return Err(missing("a head dense layer")),
                // Folded into the dense layer before it (Keras's `activation='relu'`).
                (HeadLayer::Relu, _) => {
                    if !matches!(head.get(i.wrapping_sub(1)), Some((HeadLayer::Dense(_), _))) {
                        return Err(Error::Invalid(
                            "export needs every head relu right after a dense layer".into(),
                        ));
                    }
                }
                (HeadLayer::Dropout(rate), _) => {
                    drop += 1;
                    layers.push(ExportLayer::Dropout {
                        name: numbered("dropout", drop),
                        rate,
                    });
                }
            }
        }
        layers.push(ExportLayer::Softmax {
            name: "predictions".into(),
        });
        Ok(ExportGraph {
            model: base.info().model.clone(),
            input: [h, w, 3],
            layers,
            classes: model.card.classes.clone(),
        })
    }
}

impl ExportGraph {
    /// The shape reaching each layer, in order, after checking the whole graph once for every
    /// writer: each weight fits what reaches its layer, layer names are unique, and the model
    /// ends in a softmax over its classes. A writer then only translates.
    pub fn input_shapes(&self) -> Result<Vec<FlowShape>> {
        let [h, w, c] = self.input;
        let mut cur = FlowShape::Image { h, w, c };
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let name = layer.name();
            if self.layers[..i].iter().any(|l| l.name() == name) {
                return Err(Error::Invalid(format!("two layers are named {name}")));
            }
            let image = || match cur {
                FlowShape::Image { h, w, c } => Ok((h, w, c)),
                FlowShape::Flat(n) => Err(Error::Invalid(format!(
                    "{name} needs a feature map, but its input is a flat vector of {n}"
                ))),
            };
            out.push(cur);
            cur = match layer {
                ExportLayer::Conv2d { kernel, bias, .. } => {
                    let (h, w, c) = image()?;
                    match *kernel.dims() {
                        [3, 3, cin, cout] if cin == c && bias.dims() == [cout] => {
                            FlowShape::Image { h, w, c: cout }
                        }
                        _ => {
                            return Err(Error::Shape(format!(
                                "{name}: kernel {:?} and bias {:?} do not fit a 3x3 \
                                 convolution of {c} channels",
                                kernel.dims(),
                                bias.dims()
                            )));
                        }
                    }
                }
                ExportLayer::MaxPool { .. } => {
                    let (h, w, c) = image()?;
                    if h < 2 || w < 2 {
                        return Err(Error::Shape(format!(
                            "{name}: cannot pool 2x2 over {h}x{w}"
                        )));
                    }
                    FlowShape::Image {
                        h: h / 2,
                        w: w / 2,
                        c,
                    }
                }
                ExportLayer::GlobalPool { .. } => FlowShape::Flat(image()?.2),
                // Keras's Flatten of a vector is the identity.
                ExportLayer::Flatten { .. } => match cur {
                    FlowShape::Image { h, w, c } => FlowShape::Flat(h * w * c),
                    flat => flat,
                },
                ExportLayer::Dense { kernel, bias, .. } => {
                    let FlowShape::Flat(n) = cur else {
                        return Err(Error::Invalid(format!(
                            "{name}: a dense layer needs a flat input (a Flatten or global \
                             pooling before it)"
                        )));
                    };
                    match *kernel.dims() {
                        [nin, nout] if nin == n && bias.dims() == [nout] => FlowShape::Flat(nout),
                        _ => {
                            return Err(Error::Shape(format!(
                                "{name}: kernel {:?} and bias {:?} do not fit an input of {n}",
                                kernel.dims(),
                                bias.dims()
                            )));
                        }
                    }
                }
                ExportLayer::Dropout { rate, .. } => {
                    if !(0.0..1.0).contains(rate) {
                        return Err(Error::Invalid(format!(
                            "{name}: dropout rate {rate} is not in [0, 1)"
                        )));
                    }
                    cur
                }
                ExportLayer::Softmax { .. } => cur,
            };
        }
        let ends_in_softmax = matches!(self.layers.last(), Some(ExportLayer::Softmax { .. }));
        if !ends_in_softmax || cur != FlowShape::Flat(self.classes.len()) {
            return Err(Error::Invalid(format!(
                "the model does not end in a softmax over its {} classes",
                self.classes.len()
            )));
        }
        Ok(out)
    }
}

/// Keras's default layer names: `dropout`, `dropout_1`, ...
fn numbered(base: &str, n: usize) -> String {
    if n <= 1 {
        base.to_string()
    } else {
        format!("{base}_{}", n - 1)
    }
}

fn missing(layer: &str) -> Error {
    Error::Invalid(format!("{layer} has no weights to export"))
}
