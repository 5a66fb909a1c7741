//! The op surface: the operations VGG, its head, the loss and the optimizers need, which every
//! backend implements.
//!
//! `src/nn` calls only these, on [`Tensor`]s that may live on any device, so a model runs
//! unchanged on the CPU reference kernels, the fast CPU kernels or a GPU. The caller picks the
//! backend once (the CLI, from `--device`, `--isa` and `--algo`) and hands it down.
//!
//! What a backend derives from a layer's weights (Winograd filters, the flipped kernel of the
//! input gradient, device copies) lives in that layer's [`LayerParams`] cache, which empties
//! itself whenever the weights are taken to be changed ([`LayerParams::tensors_mut`], what the
//! optimizer calls): invalidation is part of the parameters, not a call a caller could forget.
//!
//! Forward ops fuse what VGG fuses (bias and ReLU into convolutions and dense layers, a block's
//! max pool into its last convolution); each backward op undoes exactly one forward op, fused
//! parts included: [`Backend::conv2d_backward`] applies the ReLU's mask itself because
//! [`Backend::conv2d`] applied the ReLU.

use super::{Activation, Conv2dSpec, Device, GlobalPool, LayerParams, Pool2dSpec, Tensor};
use crate::error::Result;

/// Which gradients a backward op should compute: fine-tuning needs no input gradient at its
/// first trainable layer, and a saliency map needs no weight gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The gradient with respect to the layer's input.
    pub input: bool,
    /// The gradients with respect to the kernel and bias.
    pub params: bool,
}

impl Wanted {
    pub const ALL: Wanted = Wanted {
        input: true,
        params: true,
    };
    pub const PARAMS: Wanted = Wanted {
        input: false,
        params: true,
    };
    pub const INPUT: Wanted = Wanted {
        input: true,
        params: false,
    };
}

/// The gradients of a layer with weights, as [`Wanted`].
#[derive(Clone, Debug)]
pub struct LayerGrads {
    pub input: Option<Tensor>,
    pub kernel: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// Softmax cross-entropy of a batch: the mean loss, its gradient with respect to the logits
/// (`(softmax - onehot) / batch`) and the probabilities.
#[derive(Clone, Debug)]
pub struct CrossEntropy {
    pub loss: f64,
    pub dlogits: Tensor,
    pub probs: Tensor,
}

/// One Adam update's constants (Keras's rule, bias correction folded into `alpha`):
/// `w *= 1 - decay; m += (g - m)(1 - beta1); v += (g^2 - v)(1 - beta2);
/// w -= alpha m / (sqrt(v) + epsilon)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub alpha: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// AdamW's decoupled weight decay for this step, `lr * weight_decay` (0 for Adam).
    pub decay: f64,
}

/// The operations a backend provides. All activations are NHWC.
pub trait Backend: Send + Sync {
    /// A short name for traces and benchmark tables ("cpu-reference", "cpu-avx512", ...).
    fn name(&self) -> &'static str;

    // ---- where tensors live -------------------------------------------------------------

    /// The device this backend computes on; its ops take and return tensors there.
    fn device(&self) -> Device;

    /// The arithmetic of its convolutions when it is not plain fp32 (`tf32`, `bf16`): results
    /// computed so differ, and caches keep them apart.
    fn reduced_precision(&self) -> Option<&'static str> {
        None
    }

    /// `x` on this backend's device: a host tensor is copied there, one already there comes
    /// back as it is.
    fn upload(&self, x: Tensor) -> Result<Tensor>;

    /// `x` in host memory (f32 or f64), where files are written and results printed.
    fn to_host(&self, x: Tensor) -> Result<Tensor>;

    // ---- forward ------------------------------------------------------------------------

    /// 2-D convolution of NHWC `x` with `w` (kernel `(kH, kW, Cin, Cout)`, optional bias), then
    /// the activation. The backend may keep what it derives from the weights in their cache.
    fn conv2d(&self, x: &Tensor, w: &LayerParams, spec: &Conv2dSpec) -> Result<Tensor>;

    /// [`Backend::conv2d`] then [`Backend::max_pool2d`], for a convolution whose full-size
    /// output is not needed: a backend may fuse the two.
    fn conv2d_pool(
        &self,
        x: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        pool: &Pool2dSpec,
    ) -> Result<Tensor> {
        let y = self.conv2d(x, w, spec)?;
        self.max_pool2d(&y, pool)
    }

    /// Max pooling over windows of NHWC `x`; NaN wins.
    fn max_pool2d(&self, x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor>;

    /// `x (N, in) @ kernel (in, out) + bias`, then the activation.
    fn dense(&self, x: &Tensor, w: &LayerParams, activation: Activation) -> Result<Tensor>;

    /// Softmax over the last axis.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;

    /// Average or maximum over H and W of NHWC `x`, giving `(N, C)`.
    fn global_pool(&self, x: &Tensor, kind: GlobalPool) -> Result<Tensor>;

    /// `max(x, 0)` element-wise, NaN kept.
    fn relu(&self, x: &Tensor) -> Result<Tensor>;

    /// Element-wise `x * mask` (dropout, forward and backward).
    fn mul(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor>;

    // ---- backward -----------------------------------------------------------------------

    /// Gradients of [`Backend::conv2d`] given `dy`, the gradient with respect to its output
    /// `y`. With a ReLU in `spec`, `dy` is first masked where `y` is not positive (`y` is read
    /// only then).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        spec: &Conv2dSpec,
        wanted: Wanted,
    ) -> Result<LayerGrads>;

    /// Gradients of [`Backend::dense`], as [`Backend::conv2d_backward`].
    #[allow(clippy::too_many_arguments)]
    fn dense_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        w: &LayerParams,
        activation: Activation,
        wanted: Wanted,
    ) -> Result<LayerGrads>;

    /// The gradient of [`Backend::max_pool2d`] with respect to its input `x`: each window's
    /// gradient goes to its maximum (the first one in row-major order on ties, as TensorFlow
    /// and PyTorch route it).
    fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor>;

    /// The gradient of [`Backend::global_pool`] with respect to its input `x`.
    fn global_pool_backward(&self, x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor>;

    /// The gradient of [`Backend::relu`] given its output `y`: `dy` where `y > 0`, else 0.
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor>;

    /// Mean softmax cross-entropy of `(N, classes)` logits against integer labels.
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[usize]) -> Result<CrossEntropy>;

    // ---- optimizer ----------------------------------------------------------------------

    /// `sum(x^2)`, summed in f64 (the L2 penalty).
    fn sum_squares(&self, x: &Tensor) -> Result<f64>;

    /// `y += alpha * x` (the L2 penalty's gradient).
    fn axpy(&self, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()>;

    /// Keras's SGD: `v = momentum v - lr g; w += v` (Nesterov: `w += momentum v - lr g`).
    fn sgd_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        velocity: &mut Tensor,
        lr: f64,
        momentum: f64,
        nesterov: bool,
    ) -> Result<()>;

    /// Keras's Adam/AdamW, see [`AdamStep`].
    fn adam_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<()>;
}
