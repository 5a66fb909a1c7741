//! A layer's filters as pictures (`keel visualize filters`).
//!
//! Only the first convolution's kernels live in pixel space: a 3x3x3 kernel *is* a tiny RGB
//! picture, once its input channels (BGR, the caffe order keel feeds VGG) are put back in RGB
//! order. Each is scaled symmetrically around zero, so mid-grey means weight 0 and the colour
//! says which channel mix the filter responds to.
//!
//! A deeper channel's kernel mixes earlier channels, not colours; what it responds to is shown
//! instead as the input that excites it most: seeded near-grey noise pushed uphill on the
//! channel's mean activation (before its ReLU) for a few steps (all chosen channels in one batch, one sample
//! each). Each step moves the input by the gradient divided by its RMS, so the step size is in
//! pixel units whatever the layer's gradient scale, and the input is kept to valid pixels.

use super::maps::{Tile, grid_png, upscale_factor, upscale_nearest};
use crate::error::{Error, Result};
use crate::nn::{CAFFE_BGR_MEAN, ConvTail, LayerKind, Vgg};
use crate::rng::Rng;
use crate::tensor::{Activation, Backend, Conv2dSpec, Shape, Tensor, Wanted};

/// First-layer kernels drawn by default: all of VGG's 64.
pub const DEFAULT_FIRST_LAYER: usize = 64;
/// Deeper channels drawn by default: each costs a sample in every ascent step.
pub const DEFAULT_DEEPER: usize = 16;

/// `kernel` (Keras's `(kh, kw, cin, cout)`) output channel `o` as RGB: input channel `2 - j`
/// is colour `j` (BGR to RGB), and `v / max|v| * 127.5 + 127.5`, so 0 is mid-grey. An all-zero
/// kernel is all grey.
pub fn kernel_rgb(kernel: &[f32], dims: [usize; 4], o: usize) -> Result<Vec<u8>> {
    let [kh, kw, cin, cout] = dims;
    if cin != 3 || o >= cout || kernel.len() != kh * kw * cin * cout {
        return Err(Error::Shape(format!(
            "a first-layer kernel is (kh, kw, 3, cout) with filter < cout; got {dims:?} with \
             {} values, filter {o}",
            kernel.len()
        )));
    }
    let at = |y: usize, x: usize, c: usize| kernel[((y * kw + x) * cin + c) * cout + o];
    let mut peak = 0f32;
    for y in 0..kh {
        for x in 0..kw {
            for c in 0..3 {
                let v = at(y, x, c);
                if v.is_finite() {
                    peak = peak.max(v.abs());
                }
            }
        }
    }
    let mut rgb = Vec::with_capacity(kh * kw * 3);
    for y in 0..kh {
        for x in 0..kw {
            for j in 0..3 {
                let v = at(y, x, 2 - j);
                let s = if peak > 0.0 && v.is_finite() {
                    v / peak
                } else {
                    0.0
                };
                rgb.push((s * 127.5 + 127.5).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Ok(rgb)
}

/// The `channels` of a first-layer `kernel` tensor as labelled, upscaled tiles.
pub fn first_layer_tiles(kernel: &Tensor, channels: &[usize]) -> Result<Vec<Tile>> {
    let dims: [usize; 4] = kernel.dims().try_into().map_err(|_| {
        Error::Shape(format!(
            "a convolution kernel has 4 dimensions, got {}",
            kernel.shape()
        ))
    })?;
    let values = kernel.values::<f32>()?;
    let (kh, kw) = (dims[0], dims[1]);
    let k = upscale_factor(kh, kw);
    channels
        .iter()
        .map(|&o| {
            let rgb = kernel_rgb(values, dims, o)?;
            Ok(Tile {
                label: o.to_string(),
                width: (kw * k) as u32,
                height: (kh * k) as u32,
                rgb: upscale_nearest(&rgb, kh, kw, k),
            })
        })
        .collect()
}

/// How the input patterns of deeper channels are searched for.
#[derive(Clone, Copy, Debug)]
pub struct AscentOptions {
    pub steps: usize,
    pub seed: u64,
    /// Input size (H, W) the patterns are searched at; VGG needs at least 32x32.
    pub input: [usize; 2],
    /// How far one step moves the input, as an RMS over its values, in pixel units (0..255).
    pub step_size: f32,
}

impl Default for AscentOptions {
    fn default() -> Self {
        AscentOptions {
            steps: 20,
            seed: 0,
            input: [64, 64],
            step_size: 2.0,
        }
    }
}

/// What gradient ascent found.
pub struct Ascent {
    /// `(N, H, W, 3)`, preprocessed (caffe BGR) inputs, one per channel asked for.
    pub patterns: Tensor,
    /// `means[step][i]`: the mean pre-ReLU activation of channel `i` (in the order asked) on
    /// its own sample before step `step`; `steps + 1` rows, the last after the final step.
    pub means: Vec<Vec<f32>>,
}

/// The layers from the first convolution up to `layer`, as a trainable stack: its backward
/// pass gives the gradient with respect to the input image.
pub fn stack_to(vgg: &Vgg, layer: &str) -> Result<ConvTail> {
    let first = vgg
        .layer_specs()
        .find(|s| matches!(s.kind, LayerKind::Conv2d { .. }))
        .map(|s| s.name.clone())
        .ok_or_else(|| Error::Invalid("the model has no convolution".into()))?;
    let whole = vgg.tail(&first)?;
    let end = whole
        .layers()
        .iter()
        .position(|l| l.spec.name == layer)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{layer} is not a convolution or pool of the conv base"
            ))
        })?;
    ConvTail::new(
        whole.layers()[..=end].to_vec(),
        Shape::new(whole.input_shape().to_vec()),
    )
}

/// Seeded near-grey noise in preprocessed space: pixel values 128 +- 20 in every channel.
fn start_noise(n: usize, [h, w]: [usize; 2], seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(n * h * w * 3);
    for _ in 0..n * h * w {
        for mean in CAFFE_BGR_MEAN {
            v.push(128.0 + rng.uniform(-20.0, 20.0) - mean);
        }
    }
    Tensor::from_vec([n, h, w, 3], &v)
}

/// Mean of channel `channels[i]` over sample `i` of a host `(N, H, W, C)` output.
fn channel_means(y: &Tensor, channels: &[usize]) -> Result<Vec<f32>> {
    let [_, h, w, c] = y.shape().nhwc("layer output")?;
    let data = y.values::<f32>()?;
    let per = h * w * c;
    Ok(channels
        .iter()
        .enumerate()
        .map(|(i, &ch)| {
            let s: f64 = (0..h * w)
                .map(|p| f64::from(data[i * per + p * c + ch]))
                .sum();
            (s / (h * w).max(1) as f64) as f32
        })
        .collect())
}

/// The gradient of each sample's own channel mean with respect to the layer output.
fn mean_seed(dims: [usize; 4], channels: &[usize]) -> Result<Tensor> {
    let [n, h, w, c] = dims;
    let mut dy = vec![0f32; n * h * w * c];
    let share = 1.0 / (h * w).max(1) as f32;
    for (i, &ch) in channels.iter().enumerate() {
        for p in 0..h * w {
            dy[(i * h * w + p) * c + ch] = share;
        }
    }
    Tensor::from_vec([n, h, w, c], &dy)
}

/// Move each sample by its own gradient over that gradient's RMS, keeping every value a valid
/// pixel (0..255 before preprocessing). A channel with zero gradient (dead here) stays put.
fn step_inputs(x: &mut [f32], g: &[f32], n: usize, step: f32) {
    let per = x.len() / n.max(1);
    for (xs, gs) in x.chunks_mut(per).zip(g.chunks(per)) {
        let ms = gs.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / per.max(1) as f64;
        let rms = ms.sqrt() as f32;
        if !(rms.is_finite() && rms > 0.0) {
            continue;
        }
        for (k, (xv, gv)) in xs.iter_mut().zip(gs).enumerate() {
            let mean = CAFFE_BGR_MEAN[k % 3];
            *xv = (*xv + step * gv / rms).clamp(-mean, 255.0 - mean);
        }
    }
}

/// What the ascent differentiates: the layers below `layer` as a trainable stack (none when
/// `layer` is the first), and `layer` itself, whose ReLU the ascent leaves out.
struct AscentNet {
    below: Option<ConvTail>,
    top: ConvTail,
}

/// The ascent's network for `layer`, its weights on `be`.
fn ascent_net(vgg: &Vgg, be: &dyn Backend, layer: &str) -> Result<AscentNet> {
    let whole = stack_to(vgg, layer)?;
    let layers = whole.layers();
    let (last, below) = layers.split_last().expect("a stack has a layer");
    if !matches!(last.spec.kind, LayerKind::Conv2d { .. }) {
        return Err(Error::Invalid(format!(
            "{layer} is not a convolution: the ascent maximises a convolution's channels"
        )));
    }
    let below = if below.is_empty() {
        None
    } else {
        Some(ConvTail::new(below.to_vec(), Shape::new(whole.input_shape().to_vec()))?.upload(be)?)
    };
    let top_input = below
        .as_ref()
        .map_or(whole.input_shape(), |b| b.output_shape())
        .to_vec();
    let top = ConvTail::new(vec![last.clone()], Shape::new(top_input))?.upload(be)?;
    Ok(AscentNet { below, top })
}

/// `layer`'s convolution without its ReLU.
fn pre_relu() -> Conv2dSpec {
    Conv2dSpec {
        activation: Activation::Linear,
        ..Conv2dSpec::same_relu()
    }
}

/// Gradient ascent on the mean of each of `channels` of convolution `layer`, taken before the
/// layer's ReLU (as Lucid does): after it, a channel that is negative everywhere on the starting
/// noise (most of block5's are) has a zero gradient and never moves.
pub fn ascend(
    vgg: &Vgg,
    be: &dyn Backend,
    layer: &str,
    channels: &[usize],
    opts: &AscentOptions,
) -> Result<Ascent> {
    if channels.is_empty() {
        return Err(Error::Invalid("no channels to visualize".into()));
    }
    let vgg = vgg.with_input(opts.input)?;
    let net = ascent_net(&vgg, be, layer)?;
    let width = net.top.output_shape().last().copied().unwrap_or(0);
    if let Some(&ch) = channels.iter().find(|&&ch| ch >= width) {
        return Err(Error::Invalid(format!(
            "channel {ch} is outside {layer}'s {width} channels"
        )));
    }
    let weights = net.top.layers()[0].weights()?;
    let n = channels.len();
    let mut x = start_noise(n, opts.input, opts.seed)?;
    let mut means = Vec::with_capacity(opts.steps + 1);
    for step in 0..=opts.steps {
        let (a, tape) = match &net.below {
            Some(below) => {
                let (a, tape) = below.forward_train(be, x.clone())?;
                (a, Some(tape))
            }
            None => (be.upload(x.clone())?, None),
        };
        let y = be.conv2d(&a, weights, &pre_relu())?;
        let y_host = be.to_host(y.clone())?;
        means.push(channel_means(&y_host, channels)?);
        if step == opts.steps {
            break;
        }
        let dims: [usize; 4] = y_host.shape().nhwc("layer output")?;
        let dy = be.upload(mean_seed(dims, channels)?)?;
        let wanted = Wanted {
            input: true,
            params: false,
        };
        let da = be
            .conv2d_backward(&a, &y, &dy, weights, &pre_relu(), wanted)?
            .input
            .ok_or_else(|| Error::Invalid("the input gradient is missing".into()))?;
        let dx = match (&net.below, &tape) {
            (Some(below), Some(tape)) => below
                .backward(be, tape, &da, true)?
                .1
                .ok_or_else(|| Error::Invalid("the input gradient is missing".into()))?,
            _ => da,
        };
        let g = be.to_host(dx)?;
        step_inputs(
            x.values_mut::<f32>()?,
            g.values::<f32>()?,
            n,
            opts.step_size,
        );
    }
    Ok(Ascent { patterns: x, means })
}

/// A preprocessed `h`x`w` input (caffe BGR) as an RGB picture, contrast-stretched as Keras's
/// filter-visualization example does (mean to mid-grey, +-3.3 standard deviations to the ends):
/// the patterns differ from grey by a few pixel values only.
pub fn pattern_rgb(x: &[f32], h: usize, w: usize) -> Vec<u8> {
    let rgb: Vec<f32> = x
        .chunks_exact(3)
        .take(h * w)
        .flat_map(|p| [0, 1, 2].map(|j| p[2 - j] + CAFFE_BGR_MEAN[2 - j]))
        .collect();
    let n = rgb.len().max(1) as f64;
    let mean = rgb.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = rgb
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    rgb.iter()
        .map(|&v| {
            let s = if std > 1e-9 {
                0.5 + 0.15 * (f64::from(v) - mean) / std
            } else {
                0.5
            };
            (s.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

/// The patterns of an [`Ascent`] as labelled tiles; a channel the ascent could not raise (no
/// gradient reached it through the ReLUs below) is marked.
pub fn pattern_tiles(ascent: &Ascent, channels: &[usize]) -> Result<Vec<Tile>> {
    let [n, h, w, _] = ascent.patterns.shape().nhwc("patterns")?;
    let data = ascent.patterns.values::<f32>()?;
    let per = h * w * 3;
    let k = upscale_factor(h, w);
    let (first, last) = match (ascent.means.first(), ascent.means.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(Error::Invalid("the ascent recorded no steps".into())),
    };
    (0..n.min(channels.len()))
        .map(|i| {
            let rgb = pattern_rgb(&data[i * per..(i + 1) * per], h, w);
            let stuck = last[i] <= first[i];
            Ok(Tile {
                label: if stuck {
                    format!("{} (stuck)", channels[i])
                } else {
                    channels[i].to_string()
                },
                width: (w * k) as u32,
                height: (h * k) as u32,
                rgb: upscale_nearest(&rgb, h, w, k),
            })
        })
        .collect()
}

/// The first conv layer's `channels` as a grid of RGB kernels, PNG bytes.
pub fn first_layer_png(
    layer: &str,
    kernel: &Tensor,
    channels: &[usize],
    columns: usize,
) -> Result<Vec<u8>> {
    let tiles = first_layer_tiles(kernel, channels)?;
    let d = kernel.dims();
    let title = format!(
        "{layer}: {} of {} filters ({}x{}, input channels shown as RGB; grey = 0)",
        channels.len(),
        d.get(3).copied().unwrap_or(0),
        d.first().copied().unwrap_or(0),
        d.get(1).copied().unwrap_or(0)
    );
    grid_png(&title, &tiles, columns, false)
}

/// The patterns that excite `channels` of `layer` most, as a grid, PNG bytes.
pub fn ascent_png(
    layer: &str,
    ascent: &Ascent,
    channels: &[usize],
    opts: &AscentOptions,
    columns: usize,
) -> Result<Vec<u8>> {
    let tiles = pattern_tiles(ascent, channels)?;
    let [h, w] = opts.input;
    let title = format!(
        "{layer}: inputs maximizing each channel's mean before ReLU ({} steps, seed {}, {h}x{w})",
        opts.steps, opts.seed
    );
    grid_png(&title, &tiles, columns, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keeps_pixels_valid_and_skips_dead_samples() {
        let mut x = vec![0.0; 6];
        let g = [1e6, 0.0, 0.0, 0.0, 0.0, 0.0];
        step_inputs(&mut x, &g, 2, 1000.0);
        assert!((x[0] - (255.0 - CAFFE_BGR_MEAN[0])).abs() < 1e-3);
        assert_eq!(&x[3..], &[0.0; 3]);
    }

    #[test]
    fn flat_pattern_is_grey() {
        let x: Vec<f32> = (0..4).flat_map(|_| CAFFE_BGR_MEAN.map(|m| -m)).collect();
        assert!(pattern_rgb(&x, 2, 2).iter().all(|&v| v == 128));
    }
}
