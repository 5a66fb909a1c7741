//! Operation parameters and the geometry they resolve to (output sizes, padding), shared by
//! every backend so that all of them agree on it.

use super::{Real, Shape, real};
use crate::error::{Error, Result};

/// An element-wise activation fused into the op that precedes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Linear,
    Relu,
}

impl Activation {
    #[inline]
    pub fn apply<T: Real>(self, v: T) -> T {
        match self {
            Activation::Linear => v,
            Activation::Relu => real::relu(v),
        }
    }
}

/// Global pooling kind (Keras's `pooling='avg'` / `'max'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalPool {
    Avg,
    Max,
}

/// Spatial padding, with Keras/TensorFlow semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding; windows that do not fit are dropped (Keras's floor).
    #[default]
    Valid,
    /// Output size `ceil(in / stride)`; the padding is split with the extra pixel at the end,
    /// as TensorFlow does.
    Same,
    /// Explicit pixels before and after, per axis: `[top, bottom, left, right]`.
    Explicit([usize; 4]),
}

/// One spatial axis after padding is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    /// Pixels of padding before the first input pixel.
    pub pad_before: usize,
    /// Output length.
    pub out: usize,
}

impl Padding {
    /// Resolve padding for one axis of length `input`, window `k`, `stride`; `axis` is 0 for
    /// height and 1 for width.
    pub fn resolve(self, input: usize, k: usize, stride: usize, axis: usize) -> Result<Axis> {
        if k == 0 || stride == 0 {
            return Err(Error::Invalid(format!(
                "window {k} and stride {stride} must be positive"
            )));
        }
        let (before, after) = match self {
            Padding::Valid => (0, 0),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out.saturating_sub(1)) * stride + k).saturating_sub(input);
                (total / 2, total - total / 2)
            }
            Padding::Explicit(p) => (p[2 * axis], p[2 * axis + 1]),
        };
        let padded = input + before + after;
        if padded < k {
            let dim = ["height", "width"][axis.min(1)];
            return Err(Error::Shape(format!(
                "input {dim} {input} (padded {padded}) is smaller than the window {k}"
            )));
        }
        Ok(Axis {
            pad_before: before,
            out: (padded - k) / stride + 1,
        })
    }
}

/// Convolution parameters beyond the tensors themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub stride: [usize; 2],
    pub padding: Padding,
    pub activation: Activation,
}

impl Conv2dSpec {
    /// Keras's VGG convolution: 3x3 (from the kernel), stride 1, `padding='same'`, ReLU.
    pub fn same_relu() -> Self {
        Conv2dSpec {
            stride: [1, 1],
            padding: Padding::Same,
            activation: Activation::Relu,
        }
    }

    /// Check the operands and resolve the output geometry.
    pub fn geometry(
        &self,
        x: &Shape,
        kernel: &Shape,
        bias: Option<&Shape>,
    ) -> Result<ConvGeometry> {
        let [n, h, w, cin] = x.nhwc("conv2d input")?;
        let [kh, kw, kcin, cout] = kernel.dims_n::<4>("conv2d kernel")?;
        if kcin != cin {
            return Err(Error::Shape(format!(
                "conv2d kernel {kernel} expects {kcin} input channels but the input {x} has {cin}"
            )));
        }
        if let Some(b) = bias
            && b.dims() != [cout]
        {
            return Err(Error::Shape(format!(
                "conv2d bias {b} does not match the kernel's {cout} output channels"
            )));
        }
        let ay = self.padding.resolve(h, kh, self.stride[0], 0)?;
        let ax = self.padding.resolve(w, kw, self.stride[1], 1)?;
        Ok(ConvGeometry {
            n,
            h,
            w,
            cin,
            kh,
            kw,
            cout,
            oh: ay.out,
            ow: ax.out,
            stride: self.stride,
            pad_top: ay.pad_before,
            pad_left: ax.pad_before,
        })
    }
}

/// Everything a convolution kernel needs to know about its loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub cout: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: [usize; 2],
    pub pad_top: usize,
    pub pad_left: usize,
}

impl ConvGeometry {
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.n, self.oh, self.ow, self.cout])
    }

    pub fn input_shape(&self) -> Shape {
        Shape::new([self.n, self.h, self.w, self.cin])
    }

    pub fn kernel_shape(&self) -> Shape {
        Shape::new([self.kh, self.kw, self.cin, self.cout])
    }

    /// Multiply-adds times two, the usual FLOP count.
    pub fn flops(&self) -> u64 {
        2 * (self.n * self.oh * self.ow) as u64 * (self.kh * self.kw * self.cin * self.cout) as u64
    }
}

/// Pooling window parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    pub size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding,
}

impl Pool2dSpec {
    /// Keras's `MaxPooling2D((2, 2), strides=(2, 2))`: odd sizes are floored.
    pub fn vgg() -> Self {
        Pool2dSpec {
            size: [2, 2],
            stride: [2, 2],
            padding: Padding::Valid,
        }
    }

    /// Check the input and resolve the output geometry.
    pub fn geometry(&self, x: &Shape) -> Result<PoolGeometry> {
        let [n, h, w, c] = x.nhwc("pool input")?;
        let ay = self.padding.resolve(h, self.size[0], self.stride[0], 0)?;
        let ax = self.padding.resolve(w, self.size[1], self.stride[1], 1)?;
        Ok(PoolGeometry {
            n,
            h,
            w,
            c,
            oh: ay.out,
            ow: ax.out,
            size: self.size,
            stride: self.stride,
            pad_top: ay.pad_before,
            pad_left: ax.pad_before,
        })
    }
}

/// Everything a pooling kernel needs to know about its loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub size: [usize; 2],
    pub stride: [usize; 2],
    pub pad_top: usize,
    pub pad_left: usize,
}

impl PoolGeometry {
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.n, self.oh, self.ow, self.c])
    }
}

/// Check that the gradient a backward op was given has the shape of the forward op's output.
pub fn check_grad_shape(op: &str, dy: &Shape, output: &Shape) -> Result<()> {
    if dy != output {
        return Err(Error::Shape(format!(
            "{op} backward: the output gradient has shape {dy}, the output {output}"
        )));
    }
    Ok(())
}

/// Check that an element-wise op's two operands have one shape.
pub fn check_same_shape(op: &str, a: &Shape, b: &Shape) -> Result<()> {
    if a != b {
        return Err(Error::Shape(format!(
            "{op}: operands of shapes {a} and {b}"
        )));
    }
    Ok(())
}

/// Check `(batch, classes)` logits against one label per row, each below `classes`; returns
/// `(batch, classes)`.
pub fn cross_entropy_geometry(logits: &Shape, labels: &[usize]) -> Result<[usize; 2]> {
    let [batch, classes] = logits.dims_n::<2>("logits")?;
    if labels.len() != batch {
        return Err(Error::Shape(format!(
            "{} labels for {batch} rows of logits",
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::Invalid(format!(
            "label {bad} is out of range for {classes} classes"
        )));
    }
    Ok([batch, classes])
}

/// Check the operands of a dense layer; returns `(batch, in, out)`.
pub fn dense_geometry(x: &Shape, kernel: &Shape, bias: Option<&Shape>) -> Result<[usize; 3]> {
    let [n, fin] = x.dims_n::<2>("dense input")?;
    let [kin, out] = kernel.dims_n::<2>("dense kernel")?;
    if kin != fin {
        return Err(Error::Shape(format!(
            "dense kernel {kernel} expects {kin} inputs but the input {x} has {fin}"
        )));
    }
    if let Some(b) = bias
        && b.dims() != [out]
    {
        return Err(Error::Shape(format!(
            "dense bias {b} does not match the kernel's {out} outputs"
        )));
    }
    Ok([n, fin, out])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // TF: out = ceil(in / s); total = max((out - 1) * s + k - in, 0); before = total / 2.
        let a = Padding::Same.resolve(224, 3, 1, 0).unwrap();
        assert_eq!((a.pad_before, a.out), (1, 224));
        let a = Padding::Same.resolve(7, 3, 2, 0).unwrap();
        assert_eq!((a.pad_before, a.out), (1, 4));
        let a = Padding::Same.resolve(8, 3, 2, 1).unwrap();
        assert_eq!((a.pad_before, a.out), (0, 4)); // total 1: the extra pixel goes after
        let a = Padding::Same.resolve(1, 5, 1, 0).unwrap();
        assert_eq!((a.pad_before, a.out), (2, 1));
    }

    #[test]
    fn valid_pool_floors_odd_sizes() {
        let g = Pool2dSpec::vgg()
            .geometry(&Shape::new([1, 5, 3, 2]))
            .unwrap();
        assert_eq!((g.oh, g.ow), (2, 1));
        let err = Pool2dSpec::vgg()
            .geometry(&Shape::new([1, 1, 4, 2]))
            .unwrap_err();
        assert!(err.to_string().contains("smaller than the window"), "{err}");
    }

    #[test]
    fn conv_geometry_checks_channels_and_bias() {
        let spec = Conv2dSpec::same_relu();
        let x = Shape::new([2, 9, 7, 3]);
        let g = spec
            .geometry(&x, &Shape::new([3, 3, 3, 8]), Some(&Shape::new([8])))
            .unwrap();
        assert_eq!(g.output_shape(), Shape::new([2, 9, 7, 8]));
        assert_eq!(g.flops(), 2 * 2 * 9 * 7 * 27 * 8);
        assert!(spec.geometry(&x, &Shape::new([3, 3, 4, 8]), None).is_err());
        assert!(
            spec.geometry(&x, &Shape::new([3, 3, 3, 8]), Some(&Shape::new([7])))
                .is_err()
        );
    }

    #[test]
    fn dense_geometry_checks_inputs() {
        let d = dense_geometry(
            &Shape::new([3, 5]),
            &Shape::new([5, 2]),
            Some(&Shape::new([2])),
        );
        assert_eq!(d.unwrap(), [3, 5, 2]);
        assert!(dense_geometry(&Shape::new([3, 4]), &Shape::new([5, 2]), None).is_err());
    }

    #[test]
    fn relu_keeps_nan() {
        assert!(Activation::Relu.apply(f32::NAN).is_nan());
        assert_eq!(Activation::Relu.apply(-2.0f32), 0.0);
        assert_eq!(Activation::Relu.apply(3.0f64), 3.0);
    }
}
