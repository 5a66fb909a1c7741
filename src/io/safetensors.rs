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
use crate::nn::{Arch, LayerWeights, NamedTensor, VggConfig, WeightSet};
use crate::tensor::{DType, Tensor};

/// Metadata keys keel writes.
pub const META_FORMAT: &str = "keel.format";
pub const META_LAYERS: &str = "keel.layers";

/// Names of the weights of a Keras Conv2D/Dense layer, in Keras's order.
const WEIGHT_NAMES: [&str; 2] = ["kernel", "bias"];

/// Write `weights` to `path` (atomically) with tensors stored as `dtype`.
pub fn write_weights(path: &Path, weights: &WeightSet, dtype: DType) -> Result<()> {
    let id = weights.identity();
    let st_dtype = match dtype {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    };
    let mut entries: Vec<(String, Vec<usize>, Cow<[u8]>)> = Vec::new();
    for layer in weights.layers() {
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
    let layers: Vec<&str> = weights.layers().iter().map(|l| l.layer.as_str()).collect();
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
            StDtype::F64 => DType::F64,
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
            // No layer list: network order from VGG19's table, which holds every VGG16 name
            // too; anything else goes last and is refused by identification.
            let table = VggConfig::new(Arch::Vgg19).weighted_layer_names();
            let mut names: Vec<String> = by_layer.keys().cloned().collect();
            names.sort_by_key(|n| {
                (
                    table.iter().position(|t| t == n).unwrap_or(usize::MAX),
                    n.clone(),
                )
            });
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
    WeightSet::new(path, "safetensors", layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file written elsewhere, without keel's layer list, still loads in network
    /// order (safetensors itself stores tensors sorted by name: block1_conv1, block1_conv2,
    /// block2_conv1, ..., which breaks for fc1/fc2/predictions and VGG19's conv4).
    #[test]
    fn foreign_file_without_layer_list_loads_in_network_order() {
        let h5 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h5/micro_vgg16_top.h5");
        let original = crate::io::keras::read_weights(&h5).unwrap();
        let mut views = Vec::new();
        for l in original.layers().iter().rev() {
            for (t, w) in l.tensors.iter().zip(WEIGHT_NAMES) {
                let bytes: &[u8] = bytemuck::cast_slice(t.tensor.data());
                views.push((
                    format!("{}.{w}", l.layer),
                    TensorView::new(StDtype::F32, t.tensor.dims().to_vec(), bytes).unwrap(),
                ));
            }
        }
        let dir = std::env::temp_dir().join(format!("keel-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("foreign.safetensors");
        safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
        let back = read_weights(&path).unwrap();
        let names = |w: &WeightSet| {
            w.layers()
                .iter()
                .map(|l| l.layer.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&back), names(&original));
        assert_eq!(back.identity(), original.identity());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
