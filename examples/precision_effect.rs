//! What TF32 and BF16 convolutions would do to transfer learning, measured on the CPU.
//!
//! The GPU's tensor-core convolutions (`--precision tf32|bf16`) round both operands of every
//! product, the activations and the weights, to TF32 (10 mantissa bits, ties away from zero,
//! as `cvt.rna.tf32.f32`) or BF16 (7 bits, ties to even) and accumulate in fp32. This example
//! applies exactly that rounding around keel's fp32 CPU convolutions, then runs the whole
//! transfer-learning job (features of the real VGG16 base, the default head, Keras's defaults)
//! on ants-vs-bees in each precision, and prints the features' error and the validation
//! accuracy. Only the summation order differs from the GPU's kernels.
//!
//! ```text
//! cargo run --release --example precision_effect -- ../shared/weights/vgg16_imagenet_notop.h5 \
//!     ../shared/datasets/hymenoptera
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use keel::cpu::Cpu;
use keel::error::Result;
use keel::io::dataset::scan_training_folder;
use keel::io::image::Interpolation;
use keel::tensor::{
    Activation, AdamStep, Backend, Conv2dSpec, CrossEntropy, Device, GlobalPool, LayerGrads,
    LayerParams, Pool2dSpec, Tensor, Wanted,
};
use keel::transfer::{FrozenBase, TrainOptions, train};

#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    Fp32,
    Tf32,
    Bf16,
}

impl Rounding {
    fn name(self) -> &'static str {
        match self {
            Rounding::Fp32 => "fp32",
            Rounding::Tf32 => "tf32",
            Rounding::Bf16 => "bf16",
        }
    }

    fn round(self, x: f32) -> f32 {
        match self {
            Rounding::Fp32 => x,
            Rounding::Tf32 => keel_round_tf32(x),
            Rounding::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    fn tensor(self, t: &Tensor) -> Result<Tensor> {
        let v: Vec<f32> = t.values::<f32>()?.iter().map(|&x| self.round(x)).collect();
        Tensor::from_vec(t.shape().clone(), &v)
    }
}

/// `cvt.rna.tf32.f32`: keep 10 mantissa bits, ties away from zero.
fn keel_round_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits().wrapping_add(0x1000)) & 0xffff_e000)
}

/// The CPU backend with its convolutions' operands rounded as the GPU's tensor cores round
/// them; every other op is the CPU's own.
struct Rounded {
    cpu: Cpu,
    rounding: Rounding,
}

impl Rounded {
    fn weights(&self, w: &LayerParams) -> Result<LayerParams> {
        Ok(LayerParams::new(
            self.rounding.tensor(w.kernel())?,
            w.bias().cloned(),
        ))
    }
}

impl Backend for Rounded {
    fn name(&self) -> &'static str {
        "cpu-rounded"
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn upload(&self, x: Tensor) -> Result<Tensor> {
        self.cpu.upload(x)
    }
    fn to_host(&self, x: Tensor) -> Result<Tensor> {
        self.cpu.to_host(x)
    }
    fn conv2d(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<Tensor> {
        // A fresh LayerParams each call: the CPU's derived-weights cache must not outlive
        // the rounding (slow, and this is a measurement, not a product path).
        self.cpu
            .conv2d(&self.rounding.tensor(x)?, &self.weights(w)?, spec)
    }
    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        self.cpu.max_pool2d(x, spec)
    }
    fn dense(&self, x: &Tensor, w: &LayerParams, activation: Activation) -> Result<Tensor> {
        self.cpu.dense(x, w, activation)
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        self.cpu.softmax(x)
    }
    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        self.cpu.global_pool(x, kind)
    }
    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        self.cpu.relu(x)
    }
    fn mul(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.cpu.mul(x, mask)
    }
    fn conv2d_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        wanted: Wanted,
    ) -> Result<LayerGrads> {
        self.cpu.conv2d_backward(x, y, dy, w, spec, wanted)
    }
    fn dense_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        activation: Activation,
        wanted: Wanted,
    ) -> Result<LayerGrads> {
        self.cpu.dense_backward(x, y, dy, w, activation, wanted)
    }
    fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
        self.cpu.max_pool2d_backward(x, dy, spec)
    }
    fn global_pool_backward(&self, x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
        self.cpu.global_pool_backward(x, dy, kind)
    }
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.cpu.relu_backward(y, dy)
    }
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy> {
        self.cpu.softmax_cross_entropy(logits, labels)
    }
    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        self.cpu.sum_squares(x)
    }
    fn axpy(&self, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
        self.cpu.axpy(alpha, x, y)
    }
    fn sgd_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        velocity: &mut Tensor,
        lr: f64,
        momentum: f64,
        nesterov: bool,
    ) -> Result<()> {
        self.cpu.sgd_step(w, g, velocity, lr, momentum, nesterov)
    }
    fn adam_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<()> {
        self.cpu.adam_step(w, g, m, v, step)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [weights, data] = args.as_slice() else {
        anyhow::bail!("usage: precision_effect WEIGHTS.h5 DATA_FOLDER");
    };
    let dataset = scan_training_folder(data, None, 1337)?;
    let mut reference: Option<Vec<f32>> = None;
    println!("precision  features error  val accuracy  val loss");
    for rounding in [Rounding::Fp32, Rounding::Tf32, Rounding::Bf16] {
        let backend: Arc<dyn Backend> = Arc::new(Rounded {
            cpu: Cpu::new(),
            rounding,
        });
        let base = FrozenBase::new(
            keel::io::load_weights(weights)?,
            "block5_pool",
            [224, 224],
            Interpolation::Bilinear,
            backend,
        )?;
        // The features of the first validation images, against fp32's.
        let images: Vec<_> = dataset.val[..8]
            .iter()
            .map(|s| base.load_image(&s.path))
            .collect::<Result<_>>()?;
        let f = base.run_images(&images)?;
        let f = f.values::<f32>()?.to_vec();
        let err = match &reference {
            None => 0.0,
            Some(r) => {
                let scale = r.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let diff = r
                    .iter()
                    .zip(&f)
                    .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
                diff / scale
            }
        };
        if reference.is_none() {
            reference = Some(f);
        }
        let outcome = train(&dataset, &base, &TrainOptions::default(), &mut |_| {})?;
        let val = outcome
            .report
            .validation
            .ok_or_else(|| anyhow::anyhow!("no validation set"))?;
        println!(
            "{:<10} {:>15.2e} {:>13.4} {:>9.4}",
            rounding.name(),
            err,
            val.metrics.accuracy,
            val.loss
        );
    }
    Ok(())
}
