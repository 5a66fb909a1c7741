//! VGG's architecture as a table: blocks of named layers, from which VGG16 and VGG19 are both
//! built, with the names, shapes and options of `keras.applications.VGG16/VGG19`.

use std::fmt;

use crate::error::{Error, Result};
use crate::tensor::{GlobalPool, Shape};

/// Output channels of blocks 1-5 in the ImageNet models.
pub const IMAGENET_WIDTHS: [usize; 5] = [64, 128, 256, 512, 512];
/// Units of `fc1` and `fc2` in the ImageNet models.
pub const IMAGENET_FC_UNITS: usize = 4096;
/// Classes of the ImageNet `predictions` layer.
pub const IMAGENET_CLASSES: usize = 1000;
/// The smallest input Keras accepts: five 2x2 poolings must leave at least one pixel.
pub const MIN_INPUT: usize = 32;

/// Which VGG: they differ only in the number of convolutions in blocks 3-5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Vgg16,
    Vgg19,
}

impl Arch {
    /// Convolutions per block (Simonyan & Zisserman's configurations D and E).
    pub fn convs_per_block(self) -> [usize; 5] {
        match self {
            Arch::Vgg16 => [2, 2, 3, 3, 3],
            Arch::Vgg19 => [2, 2, 4, 4, 4],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
        }
    }

    /// The architecture with these convolutions per block, if any.
    pub fn from_convs_per_block(counts: [usize; 5]) -> Option<Arch> {
        [Arch::Vgg16, Arch::Vgg19]
            .into_iter()
            .find(|a| a.convs_per_block() == counts)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Vgg16 => "VGG16",
            Arch::Vgg19 => "VGG19",
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "vgg16" => Ok(Arch::Vgg16),
            "vgg19" => Ok(Arch::Vgg19),
            _ => Err(format!("unknown model '{s}': expected vgg16 or vgg19")),
        }
    }
}

/// Keras's `pooling` argument, used when `include_top` is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pooling {
    #[default]
    None,
    Avg,
    Max,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Pooling::None),
            "avg" => Ok(Pooling::Avg),
            "max" => Ok(Pooling::Max),
            _ => Err(format!("unknown pooling '{s}': expected none, avg or max")),
        }
    }
}

/// Keras's `classifier_activation`: softmax probabilities, or the raw logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClassifierActivation {
    #[default]
    Softmax,
    Linear,
}

/// The arguments of `keras.applications.VGG16(...)`, plus the widths, which the mini test
/// models and any custom VGG-shaped network change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VggConfig {
    pub arch: Arch,
    pub include_top: bool,
    pub pooling: Pooling,
    /// Input height and width.
    pub input: [usize; 2],
    pub classes: usize,
    pub classifier_activation: ClassifierActivation,
    /// Output channels of blocks 1-5.
    pub widths: [usize; 5],
    /// Units of `fc1` and `fc2`.
    pub fc_units: usize,
}

impl VggConfig {
    /// Keras's defaults: ImageNet widths, with the top, 224x224, 1000 classes, softmax.
    pub fn new(arch: Arch) -> Self {
        VggConfig {
            arch,
            include_top: true,
            pooling: Pooling::None,
            input: [224, 224],
            classes: IMAGENET_CLASSES,
            classifier_activation: ClassifierActivation::Softmax,
            widths: IMAGENET_WIDTHS,
            fc_units: IMAGENET_FC_UNITS,
        }
    }

    /// Keras's defaults without the top (the convolutional base).
    pub fn notop(arch: Arch) -> Self {
        VggConfig {
            include_top: false,
            ..Self::new(arch)
        }
    }

    /// Keras's name for the model (`vgg16`, `vgg19`).
    pub fn model_name(&self) -> &'static str {
        self.arch.name()
    }

    /// Spatial size after the five poolings.
    pub fn block5_hw(&self) -> [usize; 2] {
        self.input.map(|d| d >> 5)
    }

    /// Check the combination the way `keras.applications` does, with keel's messages.
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.input;
        if h < MIN_INPUT || w < MIN_INPUT {
            return Err(Error::Invalid(format!(
                "input {h}x{w} is too small: {} needs at least {MIN_INPUT}x{MIN_INPUT} \
                 (five 2x2 poolings must leave one pixel)",
                self.arch
            )));
        }
        if self.widths.contains(&0)
            || (self.include_top && (self.fc_units == 0 || self.classes == 0))
        {
            return Err(Error::Invalid(
                "layer widths and classes must be positive".into(),
            ));
        }
        if self.include_top && self.pooling != Pooling::None {
            return Err(Error::Invalid(
                "pooling applies only without the top (include_top=false), as in Keras".into(),
            ));
        }
        Ok(())
    }

    /// Names of the layers that have weights, in model order (the order Keras saves them).
    pub fn weighted_layer_names(&self) -> Vec<String> {
        self.layers()
            .into_iter()
            .filter(|l| !l.weight_shapes().is_empty())
            .map(|l| l.name)
            .collect()
    }

    /// The layers in order, with Keras's names and each layer's per-image output shape.
    pub fn layers(&self) -> Vec<LayerSpec> {
        let [mut h, mut w] = self.input;
        let mut c = 3;
        let mut layers = vec![LayerSpec::new("input_1", LayerKind::Input, [h, w, c])];
        for (b, (&convs, &width)) in self
            .arch
            .convs_per_block()
            .iter()
            .zip(&self.widths)
            .enumerate()
        {
            for i in 1..=convs {
                let kind = LayerKind::Conv2d {
                    cin: c,
                    cout: width,
                };
                c = width;
                layers.push(LayerSpec::new(
                    format!("block{}_conv{i}", b + 1),
                    kind,
                    [h, w, c],
                ));
            }
            (h, w) = (h / 2, w / 2);
            layers.push(LayerSpec::new(
                format!("block{}_pool", b + 1),
                LayerKind::MaxPool,
                [h, w, c],
            ));
        }
        if self.include_top {
            let flat = h * w * c;
            layers.push(LayerSpec::new("flatten", LayerKind::Flatten, [flat]));
            for (name, fin) in [("fc1", flat), ("fc2", self.fc_units)] {
                let kind = LayerKind::Dense {
                    fin,
                    fout: self.fc_units,
                    activation: DenseActivation::Relu,
                };
                layers.push(LayerSpec::new(name, kind, [self.fc_units]));
            }
            let activation = match self.classifier_activation {
                ClassifierActivation::Softmax => DenseActivation::Softmax,
                ClassifierActivation::Linear => DenseActivation::Linear,
            };
            let kind = LayerKind::Dense {
                fin: self.fc_units,
                fout: self.classes,
                activation,
            };
            layers.push(LayerSpec::new("predictions", kind, [self.classes]));
        } else {
            let pool = match self.pooling {
                Pooling::None => None,
                Pooling::Avg => Some(("global_average_pooling2d", GlobalPool::Avg)),
                Pooling::Max => Some(("global_max_pooling2d", GlobalPool::Max)),
            };
            if let Some((name, kind)) = pool {
                layers.push(LayerSpec::new(name, LayerKind::GlobalPool(kind), [c]));
            }
        }
        layers
    }
}

/// The activation a dense layer ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseActivation {
    Linear,
    Relu,
    Softmax,
}

/// What a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Input,
    /// 3x3, stride 1, `padding='same'`, ReLU.
    Conv2d {
        cin: usize,
        cout: usize,
    },
    /// 2x2, stride 2, valid (floors odd sizes).
    MaxPool,
    /// NHWC order, as Keras flattens a channels-last tensor.
    Flatten,
    Dense {
        fin: usize,
        fout: usize,
        activation: DenseActivation,
    },
    GlobalPool(GlobalPool),
}

/// One layer of the table: name, kind and per-image output shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    pub name: String,
    pub kind: LayerKind,
    /// Output shape without the batch dimension.
    pub output: Shape,
}

impl LayerSpec {
    fn new<const N: usize>(name: impl Into<String>, kind: LayerKind, output: [usize; N]) -> Self {
        LayerSpec {
            name: name.into(),
            kind,
            output: Shape::new(output),
        }
    }

    /// The Keras class name, as `model.summary()` prints it.
    pub fn keras_type(&self) -> &'static str {
        match self.kind {
            LayerKind::Input => "InputLayer",
            LayerKind::Conv2d { .. } => "Conv2D",
            LayerKind::MaxPool => "MaxPooling2D",
            LayerKind::Flatten => "Flatten",
            LayerKind::Dense { .. } => "Dense",
            LayerKind::GlobalPool(GlobalPool::Avg) => "GlobalAveragePooling2D",
            LayerKind::GlobalPool(GlobalPool::Max) => "GlobalMaxPooling2D",
        }
    }

    /// Shapes of the layer's weights in Keras's order (kernel, bias); empty when it has none.
    pub fn weight_shapes(&self) -> Vec<Shape> {
        match self.kind {
            LayerKind::Conv2d { cin, cout } => {
                vec![Shape::new([3, 3, cin, cout]), Shape::new([cout])]
            }
            LayerKind::Dense { fin, fout, .. } => vec![Shape::new([fin, fout]), Shape::new([fout])],
            _ => Vec::new(),
        }
    }

    pub fn params(&self) -> usize {
        self.weight_shapes().iter().map(Shape::numel).sum()
    }

    /// FLOPs per image (a multiply-add counts 2; bias, ReLU and pooling are not counted).
    pub fn flops(&self) -> u64 {
        let pixels = |s: &Shape| (s.dims()[0] * s.dims()[1]) as u64;
        match self.kind {
            LayerKind::Conv2d { cin, cout } => 2 * pixels(&self.output) * 9 * (cin * cout) as u64,
            LayerKind::Dense { fin, fout, .. } => 2 * (fin * fout) as u64,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_matches_keras_layer_names_and_params() {
        let layers = VggConfig::new(Arch::Vgg16).layers();
        let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), 23);
        assert_eq!(
            &names[..4],
            &["input_1", "block1_conv1", "block1_conv2", "block1_pool"]
        );
        assert_eq!(
            &names[18..],
            &["block5_pool", "flatten", "fc1", "fc2", "predictions"]
        );
        // Keras: VGG16 total params 138,357,544; conv base 14,714,688.
        assert_eq!(
            layers.iter().map(LayerSpec::params).sum::<usize>(),
            138_357_544
        );
        let base = VggConfig::notop(Arch::Vgg16).layers();
        assert_eq!(
            base.iter().map(LayerSpec::params).sum::<usize>(),
            14_714_688
        );
        assert_eq!(layers[19].output, Shape::new([25088]));
    }

    #[test]
    fn vgg19_has_four_convs_in_blocks_3_to_5() {
        let layers = VggConfig::new(Arch::Vgg19).layers();
        assert_eq!(layers.len(), 26);
        assert!(layers.iter().any(|l| l.name == "block5_conv4"));
        // Keras: VGG19 total params 143,667,240.
        assert_eq!(
            layers.iter().map(LayerSpec::params).sum::<usize>(),
            143_667_240
        );
    }

    #[test]
    fn odd_inputs_floor_and_pooling_adds_a_layer() {
        let mut c = VggConfig::notop(Arch::Vgg16);
        c.input = [100, 70];
        c.pooling = Pooling::Avg;
        let layers = c.layers();
        let pool5 = layers.iter().find(|l| l.name == "block5_pool").unwrap();
        assert_eq!(pool5.output, Shape::new([3, 2, 512]));
        assert_eq!(layers.last().unwrap().name, "global_average_pooling2d");
        assert!(c.validate().is_ok());
        c.input = [31, 64];
        assert!(c.validate().unwrap_err().to_string().contains("too small"));
    }

    #[test]
    fn flops_of_vgg16_base_at_224() {
        let gflop: u64 = VggConfig::notop(Arch::Vgg16)
            .layers()
            .iter()
            .map(LayerSpec::flops)
            .sum();
        // 15.35 GMACs is the usual figure for the VGG16 conv base at 224x224.
        assert_eq!(gflop, 30_693_261_312);
    }
}
