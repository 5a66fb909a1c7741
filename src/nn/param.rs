//! Trainable tensors as the optimizer, the L2 penalty and the model files see them: a name
//! (`dense1.kernel`, `block5_conv3.bias`), the tensor, and whether weight decay applies.

use crate::error::Result;
use crate::tensor::{LayerParams, Tensor};

/// A trainable tensor, read-only.
#[derive(Clone, Debug)]
pub struct Param<'a> {
    pub name: String,
    pub tensor: &'a Tensor,
    /// Whether L2 and AdamW's weight decay apply (kernels yes, biases no, as Keras's
    /// `kernel_regularizer`).
    pub decay: bool,
}

/// A trainable tensor, to update. Taking it empties the layer's cache (see [`LayerParams`]).
#[derive(Debug)]
pub struct ParamMut<'a> {
    pub tensor: &'a mut Tensor,
    pub decay: bool,
}

/// `layer.kernel` and `layer.bias` of `p`, appended to `out`.
pub fn push_params<'a>(layer: &str, p: &'a LayerParams, out: &mut Vec<Param<'a>>) {
    out.push(Param {
        name: format!("{layer}.kernel"),
        tensor: p.kernel(),
        decay: true,
    });
    if let Some(b) = p.bias() {
        out.push(Param {
            name: format!("{layer}.bias"),
            tensor: b,
            decay: false,
        });
    }
}

/// The kernel and bias of `p`, to update, appended to `out`.
pub fn push_params_mut<'a>(p: &'a mut LayerParams, out: &mut Vec<ParamMut<'a>>) {
    let (k, b) = p.tensors_mut();
    out.push(ParamMut {
        tensor: k,
        decay: true,
    });
    if let Some(b) = b {
        out.push(ParamMut {
            tensor: b,
            decay: false,
        });
    }
}

/// `f` of every parameter, named: how a model is cast to f64, moved to a device or brought
/// back to host memory (then rebuilt from the named tensors).
pub fn map_params(
    params: Vec<Param<'_>>,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    params
        .into_iter()
        .map(|p| Ok((p.name, f(p.tensor)?)))
        .collect()
}
