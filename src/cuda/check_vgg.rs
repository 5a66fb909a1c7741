//! `keel gpu-check`'s whole-network half: VGG16's conv base on the device, first checked
//! against keel's CPU backend (which the tests hold to Keras's numbers), then timed batch by
//! batch and op by op with CUDA events, with the most device memory it held.
//!
//! Random He-initialised weights stand in for ImageNet's: speed does not depend on the values,
//! and the 58 MB weight file does not travel to a lent GPU. Parity with Keras's real weights is
//! `tests/imagenet_vgg16.rs` on the CPU plus this check's GPU-against-CPU comparison.

use std::sync::Arc;

use serde::Serialize;

use super::backend::CudaBackend;
use super::check::relative_error;
use super::gemm::Precision;
use super::gpu::Gpu;
use crate::error::{Error, Result};
use crate::nn::{Arch, Vgg, VggConfig};
use crate::rng::Rng;
use crate::tensor::{Backend, Tensor};

/// VGG16's conv base for `size`x`size` images, with seeded random weights (a fresh copy each
/// call: a model's weight cache belongs to the first backend that runs it).
pub fn vgg16(size: usize) -> Result<Vgg> {
    let config = VggConfig {
        input: [size, size],
        ..VggConfig::notop(Arch::Vgg16)
    };
    Vgg::random(config, 16)
}

/// A batch of inputs in the range preprocessed photos have (caffe mode: about ±128).
pub fn input(batch: usize, size: usize, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    Tensor::from_vec(
        [batch, size, size, 3],
        &rng.uniform_vec(batch * size * size * 3, -128.0, 128.0),
    )
}

/// The device's conv base against the CPU's, in one precision.
#[derive(Clone, Debug, Serialize)]
pub struct Parity {
    /// What ran: `random weights`, or the Keras reference image's name.
    pub case: String,
    pub precision: &'static str,
    pub batch: usize,
    pub size: usize,
    /// `max |gpu - cpu| / max |cpu|` over block5_pool.
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// The error VGG16's base may have against the CPU's fp32 result, relative to the output's
/// largest magnitude. fp32: the bound the CPU itself meets against Keras (`1e-4`). TF32 and
/// BF16 round every convolution's operands (to 10 and 7 mantissa bits), 13 times over. What
/// that costs was measured twice, by the CPU build on the micro VGG16 (TF32 4.9e-4, BF16
/// 8.7e-3) and by the same rounding on the real base's features (7.1e-4, 5.9e-3); the bounds
/// are 6-10 times that, so a broken kernel fails while honest rounding passes.
pub fn parity_tolerance(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => 1e-4,
        Precision::Tf32 => 5e-3,
        Precision::Bf16 => 5e-2,
    }
}

/// Run VGG16's base on `batch` random images of `size` on the device in `precision` and on
/// the CPU backend, and compare block5_pool.
pub fn parity(gpu: &Arc<Gpu>, precision: Precision, batch: usize, size: usize) -> Result<Parity> {
    let x = input(batch, size, 5)?;
    let cuda = CudaBackend::new(gpu.clone()).with_precision(precision);
    let got = cuda.to_host(vgg16(size)?.forward(&cuda, &x)?)?;
    let cpu = crate::cpu::Cpu::new();
    let want = vgg16(size)?.forward(&cpu, &x)?;
    if got.dims() != want.dims() {
        return Err(Error::Shape(format!(
            "VGG16 on the device gave {}, on the CPU {}",
            got.shape(),
            want.shape()
        )));
    }
    let w: Vec<f64> = want.data().iter().map(|&v| v as f64).collect();
    let error = relative_error(got.data(), &w);
    let tolerance = parity_tolerance(precision);
    Ok(Parity {
        case: "random weights".into(),
        precision: precision.name(),
        batch,
        size,
        error,
        tolerance,
        passed: error <= tolerance,
    })
}

/// One op of the timed pass.
#[derive(Clone, Debug, Serialize)]
pub struct OpTime {
    /// `block1_conv1`, or `block1_conv2+pool` for a fused convolution and pool.
    pub op: String,
    pub ms: f64,
    pub gflops: f64,
}

/// VGG16's base timed on the device.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub framework: &'static str,
    pub precision: &'static str,
    pub batch: usize,
    pub size: usize,
    /// Median milliseconds per batch over `runs` (CUDA events around the whole pass, input
    /// already on the device, output left there).
    pub ms: f64,
    pub runs: usize,
    pub images_per_s: f64,
    /// The most device memory keel held during a pass: weights, input and activations.
    pub peak_bytes: usize,
    /// Per op, from one more pass with an event after each.
    pub ops: Vec<OpTime>,
}

/// Time VGG16's base on `batch` images of `size` in `precision`: two warm-up passes (which
/// compile and upload), then `runs` timed ones.
pub fn time(
    gpu: &Arc<Gpu>,
    precision: Precision,
    batch: usize,
    size: usize,
    runs: usize,
) -> Result<Timing> {
    let d = gpu
        .cuda_device()
        .ok_or_else(|| Error::cuda("cuEventRecord", "timing needs a real GPU"))?;
    let ev = |e: cudarc::driver::DriverError| Error::cuda("CUDA event", format!("{e:?}"));
    let cuda = CudaBackend::new(gpu.clone()).with_precision(precision);
    let vgg = vgg16(size)?;
    let x = cuda.upload(input(batch, size, 6)?)?;
    for _ in 0..2 {
        drop(vgg.forward(&cuda, &x)?);
    }
    gpu.synchronize()?;
    gpu.reset_memory_peak();
    let (start, end) = (d.timing_event()?, d.timing_event()?);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        start.record(&d.stream).map_err(ev)?;
        let y = vgg.forward(&cuda, &x)?;
        end.record(&d.stream).map_err(ev)?;
        end.synchronize().map_err(ev)?;
        drop(y);
        times.push(start.elapsed_ms(&end).map_err(ev)? as f64);
    }
    let peak_bytes = gpu.memory_peak();
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];

    // One more pass with an event after each op.
    let mut marks = vec![(String::new(), d.timing_event()?)];
    marks[0].1.record(&d.stream).map_err(ev)?;
    let y = vgg.forward_observed(&cuda, &x, &mut |op| {
        let e = d.timing_event()?;
        e.record(&d.stream).map_err(ev)?;
        marks.push((op.to_string(), e));
        Ok(())
    })?;
    gpu.synchronize()?;
    drop(y);
    let flops: std::collections::HashMap<&str, u64> = vgg
        .layer_specs()
        .map(|s| (s.name.as_str(), s.flops()))
        .collect();
    let mut ops = Vec::new();
    for pair in marks.windows(2) {
        let op = &pair[1].0;
        let op_ms = pair[0].1.elapsed_ms(&pair[1].1).map_err(ev)? as f64;
        let conv = op.trim_end_matches("+pool");
        let f = flops.get(conv).copied().unwrap_or(0) as f64 * batch as f64;
        ops.push(OpTime {
            op: op.clone(),
            ms: op_ms,
            gflops: f / (op_ms.max(1e-9) * 1e6),
        });
    }
    Ok(Timing {
        framework: "keel",
        precision: precision.name(),
        batch,
        size,
        ms,
        runs: times.len(),
        images_per_s: batch as f64 / (ms / 1e3),
        peak_bytes,
        ops,
    })
}

/// Keras's own numbers: the real VGG16 base (`weights`) on the device in fp32 against the
/// block5_pool outputs Keras computed (`ref_dir/preprocess/NAME.npy` in,
/// `ref_dir/block5_pool/NAME_block5_pool.npy` out, the layout of `../shared/weights/ref`),
/// held to `1e-4 * max|ref|` per image.
pub fn keras_parity(
    gpu: &Arc<Gpu>,
    weights: &std::path::Path,
    ref_dir: &std::path::Path,
) -> Result<Vec<Parity>> {
    let set = crate::io::load_weights(weights)?;
    let inputs = ref_dir.join("preprocess");
    let mut names: Vec<_> = std::fs::read_dir(&inputs)
        .map_err(|e| Error::io(&inputs, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::file(&inputs, "holds no .npy inputs"));
    }
    let cuda = CudaBackend::new(gpu.clone());
    let mut vgg: Option<Vgg> = None;
    let mut out = Vec::new();
    for input in names {
        let x = crate::io::npy::read(&input)?.to_tensor()?;
        let [_, h, w, _] = x.shape().nhwc("Keras reference input")?;
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let want_path = ref_dir
            .join("block5_pool")
            .join(format!("{stem}_block5_pool.npy"));
        let want = crate::io::npy::read(&want_path)?.to_tensor()?;
        let model = match &vgg {
            Some(v) if v.config().input == [h, w] => v,
            _ => vgg.insert(Vgg::new(set.identity().base_config([h, w]), set.clone())?),
        };
        let got = cuda.to_host(model.forward(&cuda, &x)?)?;
        let w: Vec<f64> = want.values::<f32>()?.iter().map(|&v| v as f64).collect();
        if got.numel() != w.len() {
            return Err(Error::file(
                &want_path,
                format!(
                    "holds {} values; the device computed {}",
                    w.len(),
                    got.shape()
                ),
            ));
        }
        let error = relative_error(got.data(), &w);
        out.push(Parity {
            case: stem,
            precision: "fp32",
            batch: 1,
            size: h,
            error,
            tolerance: 1e-4,
            passed: error <= 1e-4,
        });
    }
    Ok(out)
}
