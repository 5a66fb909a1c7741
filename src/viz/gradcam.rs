//! Grad-CAM and saliency: why a model chose a class (`keel visualize gradcam|saliency`).
//!
//! Both need the gradient of one class's logit with respect to something below the classifier:
//! a conv layer's output (Grad-CAM, Selvaraju et al. 2017) or the input pixels (saliency,
//! Simonyan et al. 2014). Rather than a second set of backward formulas, the network is cut at
//! that point and the part above the cut is run as what fine-tuning already trains: a
//! [`ConvTail`] (its backward pass gives the input gradient) and then the head's own backward
//! pass, or the ImageNet top's dense layers through [`Backend::dense_backward`]. Gradients are
//! of the logit, not the probability: the softmax would couple every class into the map and
//! saturate it for confident predictions.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::image::RgbImage;
use crate::nn::head::{Head, HeadLayer, HeadSpec, Mode};
use crate::nn::{ConvTail, LayerKind, TailTape, Vgg};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, DType, LayerParams, Shape, Tensor, Wanted};
use crate::transfer::{FrozenBase, TrainedModel};

/// The layer Grad-CAM reads by default: VGG's last convolution, the most semantic map that
/// still has a spatial layout.
pub const DEFAULT_LAYER: &str = "block5_conv3";

/// How much of the heat colour covers the photo where the Grad-CAM is at its maximum (it fades
/// to nothing where the map is 0).
pub const OVERLAY_ALPHA: f64 = 0.6;

/// A single-channel map over an image grid, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f64>,
}

/// A Grad-CAM result: the map at the layer's resolution and what it explains.
#[derive(Clone, Debug)]
pub struct GradCam {
    pub map: Map,
    /// The channel weights alpha_k: each channel's mean gradient over the map.
    pub alpha: Vec<f64>,
    pub class: usize,
    pub logit: f64,
    pub probability: f64,
}

/// A saliency result: `max over channels of |d logit / d pixel|` at the input's size.
#[derive(Clone, Debug)]
pub struct Saliency {
    pub map: Map,
    pub class: usize,
    pub logit: f64,
    pub probability: f64,
}

/// What turns the conv base's features into class logits.
#[derive(Clone, Debug)]
enum Classifier {
    /// A trained head, dropout removed (it is off at inference; with rate 0 the head still
    /// records the tape its backward pass needs).
    Head(Head),
    /// The ImageNet top: flatten, then dense layers, ReLU on all but the last (whose softmax
    /// is left out: the logits are wanted).
    Dense(Vec<LayerParams>),
}

/// The layers above a cut, as one function from the cut's activations to the class logits.
#[derive(Clone, Debug)]
pub struct Above {
    tail: Option<ConvTail>,
    classifier: Classifier,
}

/// The tapes of [`Above::forward_train`].
struct AboveTape {
    tail: Option<TailTape>,
    /// The features the classifier read (for their shape, and as the dense layers' input).
    features: Tensor,
    head: Option<crate::nn::head::HeadTape>,
    /// Each dense layer's input and output.
    dense: Vec<(Tensor, Tensor)>,
}

impl Above {
    /// The same layers computing in `dtype` (the finite-difference checks run in f64).
    pub fn cast(&self, dtype: DType) -> Result<Above> {
        let tail = self.tail.as_ref().map(|t| t.cast(dtype)).transpose()?;
        let classifier = match &self.classifier {
            Classifier::Head(h) => Classifier::Head(h.cast(dtype)?),
            Classifier::Dense(layers) => Classifier::Dense(
                layers
                    .iter()
                    .map(|p| map_layer(p, |t| t.cast(dtype)))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Above { tail, classifier })
    }

    /// The same layers with their weights on `be`'s device.
    pub fn upload(&self, be: &dyn Backend) -> Result<Above> {
        let tail = self.tail.as_ref().map(|t| t.upload(be)).transpose()?;
        let classifier = match &self.classifier {
            Classifier::Head(h) => Classifier::Head(h.upload(be)?),
            Classifier::Dense(layers) => Classifier::Dense(
                layers
                    .iter()
                    .map(|p| map_layer(p, |t| be.upload(t.clone())))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Above { tail, classifier })
    }

    /// The logits `(1, classes)` for a batch of one activation, in host memory.
    pub fn logits(&self, be: &dyn Backend, a: &Tensor) -> Result<Tensor> {
        let (logits, _) = self.forward_train(be, a.clone())?;
        be.to_host(logits)
    }

    /// The logits (host) and the gradient of logit `class` with respect to `a`, the
    /// activations at the cut (host, `a`'s shape and dtype).
    pub fn gradient(&self, be: &dyn Backend, a: Tensor, class: usize) -> Result<(Tensor, Tensor)> {
        let dtype = a.dtype();
        let (logits, tape) = self.forward_train(be, a)?;
        let logits = be.to_host(logits)?;
        let classes = logits.numel();
        if class >= classes {
            return Err(Error::Invalid(format!(
                "class {class} does not exist; the model has {classes} classes"
            )));
        }
        let mut onehot = vec![0.0; classes];
        onehot[class] = 1.0;
        let dlogits = be.upload(Tensor::from_values([1, classes], &onehot)?.cast(dtype)?)?;
        let dfeatures = self.classifier_backward(be, &tape, &dlogits)?;
        let da = match (&self.tail, &tape.tail) {
            (Some(t), Some(tt)) => t
                .backward(be, tt, &dfeatures, true)?
                .1
                .ok_or_else(|| Error::Invalid("the tail gave no input gradient".into()))?,
            _ => dfeatures,
        };
        Ok((logits, be.to_host(da)?))
    }

    fn forward_train(&self, be: &dyn Backend, a: Tensor) -> Result<(Tensor, AboveTape)> {
        let (features, tail) = match &self.tail {
            Some(t) => {
                let (y, tape) = t.forward_train(be, a)?;
                (y, Some(tape))
            }
            None => (be.upload(a)?, None),
        };
        let mut tape = AboveTape {
            tail,
            features,
            head: None,
            dense: Vec::new(),
        };
        let logits = match &self.classifier {
            Classifier::Head(h) => {
                // No dropout is left, so the generator is never drawn from.
                let (logits, ht) = h.forward(be, &tape.features, Mode::Train(&mut Rng::new(0)))?;
                tape.head = Some(ht);
                logits
            }
            Classifier::Dense(layers) => {
                let n = tape.features.dims().first().copied().unwrap_or(1);
                let per = tape.features.numel() / n.max(1);
                let mut x = tape.features.clone().reshape([n, per])?;
                for (i, p) in layers.iter().enumerate() {
                    let y = be.dense(&x, p, dense_activation(i, layers.len()))?;
                    tape.dense.push((x, y.clone()));
                    x = y;
                }
                x
            }
        };
        Ok((logits, tape))
    }

    /// The gradient with respect to the classifier's input (the features).
    fn classifier_backward(
        &self,
        be: &dyn Backend,
        tape: &AboveTape,
        dlogits: &Tensor,
    ) -> Result<Tensor> {
        match (&self.classifier, &tape.head) {
            (Classifier::Head(h), Some(ht)) => h
                .backward(be, ht, dlogits, true)?
                .1
                .ok_or_else(|| Error::Invalid("the head gave no input gradient".into())),
            (Classifier::Dense(layers), _) => {
                let mut dy = dlogits.clone();
                for (i, (p, (x, y))) in layers.iter().zip(&tape.dense).enumerate().rev() {
                    let act = dense_activation(i, layers.len());
                    dy = be
                        .dense_backward(x, y, &dy, p, act, Wanted::INPUT)?
                        .input
                        .ok_or_else(|| Error::Invalid("a dense layer gave no gradient".into()))?;
                }
                dy.reshape(tape.features.shape().clone())
            }
            _ => Err(Error::Invalid("the classifier's tape is missing".into())),
        }
    }
}

/// Hidden dense layers of VGG's top end in ReLU; the last is the classifier, read as logits.
fn dense_activation(i: usize, count: usize) -> Activation {
    if i + 1 == count {
        Activation::Linear
    } else {
        Activation::Relu
    }
}

fn map_layer(p: &LayerParams, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<LayerParams> {
    let (k, b) = (p.kernel(), p.bias());
    Ok(LayerParams::new(f(k)?, b.map(&f).transpose()?))
}

/// A VGG conv base with a classifier on top, to be cut open at a layer.
pub struct Explainer<'a> {
    vgg: &'a Vgg,
    /// The last conv-base layer the classifier reads.
    feature_layer: String,
    classifier: Classifier,
}

impl<'a> Explainer<'a> {
    /// A trained model folder's network: `base` (fine-tuned layers in place, as
    /// [`TrainedModel::tuned_base`] gives it), then the model's head.
    pub fn for_model(model: &TrainedModel, base: &'a FrozenBase) -> Result<Explainer<'a>> {
        Ok(Explainer {
            vgg: base.vgg(),
            feature_layer: base.info().layer.clone(),
            classifier: Classifier::Head(without_dropout(&model.head)?),
        })
    }

    /// A VGG with its ImageNet top (`fc1`, `fc2`, `predictions`).
    pub fn imagenet(vgg: &'a Vgg) -> Result<Explainer<'a>> {
        let mut dense = Vec::new();
        let mut feature_layer = None;
        for (spec, params) in vgg.layers_with_weights() {
            match (spec.kind, params) {
                (LayerKind::Conv2d { .. } | LayerKind::MaxPool, _) => {
                    feature_layer = Some(spec.name.clone());
                }
                (LayerKind::Dense { .. }, Some(p)) => dense.push(p.clone()),
                _ => {}
            }
        }
        match feature_layer {
            Some(feature_layer) if !dense.is_empty() => Ok(Explainer {
                vgg,
                feature_layer,
                classifier: Classifier::Dense(dense),
            }),
            _ => Err(Error::Invalid(format!(
                "this {} has no top (fc1, fc2, predictions) to explain; use the weights file \
                 with the top",
                vgg.config().arch
            ))),
        }
    }

    /// The conv layers Grad-CAM can read: those at or below the classifier's input.
    pub fn conv_layers(&self) -> Vec<&str> {
        let last = self.vgg.layer_index(&self.feature_layer).unwrap_or(0);
        self.vgg
            .layer_specs()
            .take(last + 1)
            .filter(|s| matches!(s.kind, LayerKind::Conv2d { .. }))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The layers above `layer` (a convolution at or below the classifier's input, or the
    /// input layer), on the host.
    pub fn above(&self, layer: &str) -> Result<Above> {
        let i = self.vgg.layer_index(layer)?;
        let last = self.vgg.layer_index(&self.feature_layer)?;
        let spec = self.vgg.layer_specs().nth(i).expect("an index of a layer");
        let valid = || self.conv_layers().join(", ");
        if i > last {
            return Err(Error::Invalid(format!(
                "layer {layer} is above {}, the layer the classifier reads; Grad-CAM reads a \
                 conv layer at or below it: {}",
                self.feature_layer,
                valid()
            )));
        }
        if !matches!(spec.kind, LayerKind::Conv2d { .. } | LayerKind::Input) {
            return Err(Error::Invalid(format!(
                "layer {layer} is a {}, not a convolution; Grad-CAM reads a conv layer's \
                 output: {}",
                spec.keras_type(),
                valid()
            )));
        }
        let tail = if i == last {
            None
        } else {
            let names = self.vgg.layer_names();
            let full = self.vgg.tail(names[i + 1])?;
            let layers = full.layers()[..last - i].to_vec();
            Some(ConvTail::new(layers, Shape::new(full.input_shape()))?)
        };
        Ok(Above {
            tail,
            classifier: self.classifier.clone(),
        })
    }

    /// The output of `layer` for a preprocessed batch of one `(1, H, W, 3)`, in host memory.
    pub fn activation(&self, be: &dyn Backend, x: &Tensor, layer: &str) -> Result<Tensor> {
        let mut out = self.vgg.forward_outputs(be, x, &[layer])?;
        be.to_host(out.remove(0))
    }

    /// Grad-CAM of `class` (default: the predicted one) at conv layer `layer` for a
    /// preprocessed batch of one.
    pub fn gradcam(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        layer: &str,
        class: Option<usize>,
    ) -> Result<GradCam> {
        let above = self.above(layer)?.upload(be)?;
        let a = self.activation(be, x, layer)?;
        let (logits, class) = chosen_class(&above, be, &a, class)?;
        let (_, da) = above.gradient(be, a.clone(), class)?;
        let (map, alpha) = cam(&a, &da)?;
        let (logit, probability) = score(&logits, class)?;
        Ok(GradCam {
            map,
            alpha,
            class,
            logit,
            probability,
        })
    }

    /// The saliency map of `class` (default: the predicted one) for a preprocessed batch of
    /// one.
    pub fn saliency(&self, be: &dyn Backend, x: &Tensor, class: Option<usize>) -> Result<Saliency> {
        let input = self.vgg.layer_names()[0].to_string();
        let above = self.above(&input)?.upload(be)?;
        let x = be.to_host(x.clone())?;
        let (logits, class) = chosen_class(&above, be, &x, class)?;
        let (_, dx) = above.gradient(be, x, class)?;
        let map = channel_max_abs(&dx)?;
        let (logit, probability) = score(&logits, class)?;
        Ok(Saliency {
            map,
            class,
            logit,
            probability,
        })
    }
}

/// `head` with every dropout rate set to 0: inference's behaviour, with a training tape.
fn without_dropout(head: &Head) -> Result<Head> {
    let layers = head
        .spec()
        .layers
        .iter()
        .map(|l| match l {
            HeadLayer::Dropout(_) => HeadLayer::Dropout(0.0),
            other => *other,
        })
        .collect();
    let spec = HeadSpec { layers };
    let params = head
        .params()
        .into_iter()
        .map(|p| (p.name, p.tensor.clone()))
        .collect();
    Head::from_params(spec, head.input_shape(), params)
}

/// The logits, and `class` or else the most probable class.
fn chosen_class(
    above: &Above,
    be: &dyn Backend,
    a: &Tensor,
    class: Option<usize>,
) -> Result<(Tensor, usize)> {
    let logits = above.logits(be, a)?;
    let values = host_f64(&logits)?;
    let class = match class {
        Some(c) => c,
        None => (0..values.len())
            .max_by(|&i, &j| values[i].total_cmp(&values[j]).then(j.cmp(&i)))
            .ok_or_else(|| Error::Invalid("the model has no classes".into()))?,
    };
    Ok((logits, class))
}

/// A class's logit and softmax probability.
fn score(logits: &Tensor, class: usize) -> Result<(f64, f64)> {
    let z = host_f64(logits)?;
    let logit = *z
        .get(class)
        .ok_or_else(|| Error::Invalid(format!("class {class} does not exist")))?;
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
    Ok((logit, (logit - max).exp() / sum))
}

/// A host tensor's values as f64.
pub fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.cast(DType::F64)?.values::<f64>()?.to_vec())
}

/// Grad-CAM from activations `a` and their gradient `da` (both `(1, h, w, K)`):
/// `alpha_k = mean_ij da[i, j, k]`, `cam = relu(sum_k alpha_k a_k)`.
pub fn cam(a: &Tensor, da: &Tensor) -> Result<(Map, Vec<f64>)> {
    let [_, h, w, k] = a.shape().nhwc("Grad-CAM activations")?;
    if da.dims() != a.dims() {
        return Err(Error::Shape(format!(
            "the gradient {} does not match the activations {}",
            da.shape(),
            a.shape()
        )));
    }
    let (av, gv) = (host_f64(a)?, host_f64(da)?);
    let cells = (h * w).max(1) as f64;
    let mut alpha = vec![0.0; k];
    for px in gv.chunks_exact(k.max(1)) {
        for (s, g) in alpha.iter_mut().zip(px) {
            *s += g / cells;
        }
    }
    let values = av
        .chunks_exact(k.max(1))
        .map(|px| {
            px.iter()
                .zip(&alpha)
                .map(|(a, s)| a * s)
                .sum::<f64>()
                .max(0.0)
        })
        .collect();
    Ok((
        Map {
            height: h,
            width: w,
            values,
        },
        alpha,
    ))
}

/// `max over channels of |g|` of an NHWC gradient of a batch of one.
pub fn channel_max_abs(g: &Tensor) -> Result<Map> {
    let [_, h, w, c] = g.shape().nhwc("saliency gradient")?;
    let values = host_f64(g)?
        .chunks_exact(c.max(1))
        .map(|px| px.iter().fold(0.0f64, |m, v| m.max(v.abs())))
        .collect();
    Ok(Map {
        height: h,
        width: w,
        values,
    })
}

impl Map {
    /// The map resized to `height` x `width` bilinearly, sampling at pixel centres (as
    /// OpenCV's and TensorFlow's half-pixel resize): a 2x2 cam stretched over a photo keeps its
    /// cells centred where the layer saw them.
    pub fn resized(&self, height: usize, width: usize) -> Map {
        let axis = |n_out: usize, n_in: usize| -> Vec<(usize, usize, f64)> {
            (0..n_out)
                .map(|o| {
                    let pos = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5)
                        .clamp(0.0, n_in.saturating_sub(1) as f64);
                    let lo = pos.floor() as usize;
                    let hi = (lo + 1).min(n_in.saturating_sub(1));
                    (lo, hi, pos - lo as f64)
                })
                .collect()
        };
        if self.values.is_empty() {
            return Map {
                height,
                width,
                values: vec![0.0; height * width],
            };
        }
        let (ys, xs) = (axis(height, self.height), axis(width, self.width));
        let at = |y: usize, x: usize| self.values[y * self.width + x];
        let mut values = Vec::with_capacity(height * width);
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                values.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        Map {
            height,
            width,
            values,
        }
    }

    /// The values scaled to [0, 1] by the largest (all zeros stay zeros; non-finite values
    /// count as 0).
    pub fn normalized(&self) -> Vec<f64> {
        let clean = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        let max = self.values.iter().copied().map(clean).fold(0.0, f64::max);
        self.values
            .iter()
            .map(|&v| if max > 0.0 { clean(v) / max } else { 0.0 })
            .collect()
    }
}

/// The colour of heat `v` in [0, 1]: dark red through red and orange to yellow, the usual
/// "hot" ramp, which reads as heat on any photo.
pub fn heat_colour(v: f64) -> [f64; 3] {
    let v = v.clamp(0.0, 1.0);
    [
        160.0 + 95.0 * (v / 0.4).min(1.0),
        255.0 * ((v - 0.3) / 0.7).clamp(0.0, 1.0),
        60.0 * ((v - 0.8) / 0.2).clamp(0.0, 1.0),
    ]
}

/// The cam over `photo` (any size): upsampled to it, coloured with [`heat_colour`] and blended
/// with an opacity of `alpha` times the heat, so the photo shows untouched where the class
/// score does not look and the heat stands out where it does.
pub fn overlay(photo: &RgbImage, cam: &Map, alpha: f64) -> RgbImage {
    let heat = cam.resized(photo.height, photo.width).normalized();
    let mut data = Vec::with_capacity(photo.data.len());
    for (px, &v) in photo.data.chunks_exact(3).zip(&heat) {
        let opacity = alpha * v;
        for (p, m) in px.iter().zip(heat_colour(v)) {
            let blended = (1.0 - opacity) * f64::from(*p) + opacity * m;
            data.push(blended.round().clamp(0.0, 255.0) as u8);
        }
    }
    RgbImage {
        height: photo.height,
        width: photo.width,
        data,
    }
}

/// The map as a greyscale picture of its own size: white where the class score is most
/// sensitive, black where it is not at all.
pub fn greyscale(map: &Map) -> RgbImage {
    let data = map
        .normalized()
        .iter()
        .flat_map(|v| [(v * 255.0).round() as u8; 3])
        .collect();
    RgbImage {
        height: map.height,
        width: map.width,
        data,
    }
}

/// Write `img` as a PNG at `path`, atomically: the file is whole or absent.
pub fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let bytes = super::plots::encode_png(img.data.clone(), (img.width as u32, img.height as u32))
        .map_err(|e| Error::file(path, e))?;
    crate::io::atomic::write_atomic(path, |w| w.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cam_weights_channels_by_their_mean_gradient() {
        // 1x2 map, 2 channels: alpha = (mean(1, 3), mean(-2, 0)) = (2, -1).
        let a = Tensor::from_vec([1, 1, 2, 2], &[1.0, 1.0, 0.5, 2.0]).unwrap();
        let g = Tensor::from_vec([1, 1, 2, 2], &[1.0, -2.0, 3.0, 0.0]).unwrap();
        let (map, alpha) = cam(&a, &g).unwrap();
        assert_eq!(alpha, vec![2.0, -1.0]);
        assert_eq!(map.values, vec![1.0, 0.0]); // 2 - 1 = 1; 1 - 2 < 0 -> 0
    }

    #[test]
    fn resize_keeps_constants_and_corners() {
        let m = Map {
            height: 2,
            width: 2,
            values: vec![0.0, 1.0, 2.0, 3.0],
        };
        let r = m.resized(4, 4);
        assert_eq!(r.values.len(), 16);
        assert_eq!(r.values[0], 0.0);
        assert_eq!(r.values[15], 3.0);
        let flat = Map {
            height: 1,
            width: 1,
            values: vec![5.0],
        };
        assert!(flat.resized(3, 7).values.iter().all(|&v| v == 5.0));
    }

    #[test]
    fn overlay_has_the_photo_size() {
        let photo = RgbImage {
            height: 5,
            width: 3,
            data: vec![100; 45],
        };
        let m = Map {
            height: 2,
            width: 2,
            values: vec![0.0, f64::NAN, 1.0, 2.0],
        };
        let o = overlay(&photo, &m, OVERLAY_ALPHA);
        assert_eq!((o.height, o.width, o.data.len()), (5, 3, 45));
    }

    #[test]
    fn overlay_leaves_cold_pixels_alone_and_reddens_hot_ones() {
        let photo = RgbImage {
            height: 1,
            width: 2,
            data: vec![90; 6],
        };
        let m = Map {
            height: 1,
            width: 2,
            values: vec![0.0, 3.0],
        };
        let o = overlay(&photo, &m, OVERLAY_ALPHA);
        assert_eq!(&o.data[..3], &[90, 90, 90], "zero heat keeps the photo");
        let [r, g, b] = [o.data[3], o.data[4], o.data[5]];
        assert!(
            r > 90 && g > 90 && b < r,
            "the hottest pixel turns yellow: {r} {g} {b}"
        );
        // The ramp climbs in red first, then green, then a little blue.
        let (lo, hi) = (heat_colour(0.2), heat_colour(0.9));
        assert!(lo[0] < hi[0] && lo[1] < hi[1] && lo[2] <= hi[2]);
        let top = heat_colour(1.0);
        for (got, want) in top.iter().zip([255.0, 255.0, 60.0]) {
            assert!((got - want).abs() < 1e-9, "heat 1 is {top:?}");
        }
    }
}
