//! safetensors in and out, with Keras's names and layouts.
//!
//! Tensors are named `<layer>.<weight>` (`block1_conv1.kernel`, `fc1.bias`) and stored exactly
//! as Keras holds them (conv kernels `(kH, kW, Cin, Cout)`, dense kernels `(in, out)`), so a
//! converted file loads back into keel, or into Keras code, with no transposes. The metadata
//! says so, and records the layer order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::nn::{Identity, LayerWeights, NamedTensor, WeightSet};
use crate::tensor::{DType, Tensor};

/// Metadata keys keel writes.
pub const META_FORMAT: &str = "keel.format";
pub const META_LAYERS: &str = "keel.layers";

/// Names of the weights of a Keras Conv2D/Dense layer, in Keras's order.
const WEIGHT_NAMES: [&str; 2] = ["kernel", "bias"];

/// Write `weights` to `path` (atomically) with tensors stored as `dtype`.
pub fn write_weights(path: &Path, weights: &WeightSet, id: &Identity, dtype: DType) -> Result<()> {
    let st_dtype = match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    };
    let mut entries: Vec<(String, Vec<usize>, Cow<[u8]>)> = Vec::new();
    for layer in &weights.layers {
        if layer.tensors.len() > WEIGHT_NAMES.len() {
            return Err(Error::Invalid(format!(
                "layer {} has more than a kernel and a bias",
                layer.layer
            )));
        }
        for (t, wname) in layer.tensors.iter().zip(WEIGHT_NAMES) {
            let bytes = match dtype {
                DType::F32 => Cow::Borrowed(bytemuck::cast_slice(t.tensor.data())),
                _ => Cow::Owned(dtype.encode(t.tensor.data())),
            };
            entries.push((
                format!("{}.{wname}", layer.layer),
                t.tensor.dims().to_vec(),
                bytes,
            ));
        }
    }
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let layers: Vec<&str> = weights.layers.iter().map(|l| l.layer.as_str()).collect();
    let source = weights
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = HashMap::from([
        (META_FORMAT.to_string(), "keras".to_string()),
        (
            "keel.layout".to_string(),
            "Keras: conv kernels (kH, kW, Cin, Cout), dense kernels (in, out), NHWC activations, \
             flatten in HWC order"
                .to_string(),
        ),
        ("keel.model".to_string(), id.arch.name().to_string()),
        ("keel.include_top".to_string(), id.include_top.to_string()),
        (META_LAYERS.to_string(), layers.join(",")),
        ("keel.source".to_string(), source),
        ("keel.dtype".to_string(), dtype.to_string()),
    ]);
    super::atomic::create_atomic(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| Error::file(path, format!("cannot write safetensors: {e}")))
    })
}

/// Read a safetensors file of Keras-named weights (`<layer>.kernel`, `<layer>.bias`) as f32.
pub fn read_weights(path: &Path) -> Result<WeightSet> {
    if path.is_dir() {
        return Err(Error::file(path, "is a directory, not a safetensors file"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |problem: String| Error::file(path, problem);
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;

    let mut by_layer: HashMap<String, Vec<(usize, NamedTensor)>> = HashMap::new();
    for (name, view) in st.tensors() {
        let (layer, wname) = name.rsplit_once('.').ok_or_else(|| {
            bad(format!(
                "tensor '{name}' is not named <layer>.kernel or <layer>.bias"
            ))
        })?;
        let slot = WEIGHT_NAMES
            .iter()
            .position(|w| *w == wname)
            .ok_or_else(|| {
                bad(format!(
                    "tensor '{name}': unknown weight '{wname}' (expected kernel or bias)"
                ))
            })?;
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(bad(format!(
                    "tensor '{name}' has dtype {other:?}; expected a float type"
                )));
            }
        };
        let values = dtype.decode(view.data()).ok_or_else(|| {
            bad(format!(
                "tensor '{name}': data length does not match its dtype"
            ))
        })?;
        let tensor = Tensor::from_vec(view.shape().to_vec(), &values)
            .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        by_layer.entry(layer.to_string()).or_default().push((
            slot,
            NamedTensor {
                name: name.clone(),
                tensor,
            },
        ));
    }

    let order: Vec<String> = match meta.metadata().as_ref().and_then(|m| m.get(META_LAYERS)) {
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => {
            let mut names: Vec<String> = by_layer.keys().cloned().collect();
            names.sort_by_key(|n| canonical_rank(n));
            names
        }
    };
    let mut layers = Vec::new();
    for name in order {
        let mut tensors = by_layer.remove(&name).ok_or_else(|| {
            bad(format!(
                "metadata lists layer {name} but the file has no tensors for it"
            ))
        })?;
        tensors.sort_by_key(|(slot, _)| *slot);
        layers.push(LayerWeights {
            layer: name,
            tensors: tensors.into_iter().map(|(_, t)| t).collect(),
        });
    }
    if let Some(extra) = by_layer.keys().next() {
        return Err(bad(format!(
            "tensors of layer {extra} are not in the metadata's layer list"
        )));
    }
    let set = WeightSet {
        source: path.to_path_buf(),
        format: "safetensors".into(),
        layers,
    };
    set.check_finite()?;
    Ok(set)
}

/// Sort key putting VGG layers in network order when a file carries no layer list.
fn canonical_rank(name: &str) -> (usize, usize, String) {
    let conv = name
        .strip_prefix("block")
        .and_then(|r| r.split_once("_conv"))
        .and_then(|(b, i)| Some((b.parse().ok()?, i.parse().ok()?)));
    match (conv, name) {
        (Some((b, i)), _) => (b, i, String::new()),
        (None, "fc1") => (6, 0, String::new()),
        (None, "fc2") => (6, 1, String::new()),
        (None, "predictions") => (6, 2, String::new()),
        _ => (7, 0, name.to_string()),
    }
}
