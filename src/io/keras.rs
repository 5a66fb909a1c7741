//! Keras weight files (`.h5`), in every flavour Keras has written, read natively.
//!
//! | flavour | written by | where the weights are |
//! |---|---|---|
//! | Keras 1 download layout | the files `keras.applications` downloads | root attr `layer_names`; `/<layer>/<layer>_W_1:0` |
//! | Keras 2 `save_weights` | tf.keras / tf_keras | root attr `layer_names`; `/<layer>/<layer>/kernel:0` |
//! | full model | `model.save("x.h5")` (Keras 2 and 3) | the same under `/model_weights` |
//! | Keras 3 `.weights.h5` | Keras 3 `save_weights` | `/layers/<class>[_N]/vars/<i>` |
//!
//! In the first three, each layer group's `weight_names` attribute lists its datasets by paths
//! relative to the group, in Keras's order (kernel, bias). Layers are taken in the order of
//! `layer_names` (which Keras splits into `layer_names0`, `layer_names1`, ... when it is long),
//! never in HDF5's storage order, which is alphabetical. Keras 3 files name their groups after
//! the layer class with a counter (`conv2d`, `conv2d_1`, ..., `conv2d_10`: alphabetical order
//! would put `conv2d_10` before `conv2d_2`); the `vars` group's `name` attribute (Keras >= 3.15)
//! gives the real layer name, and without it the counter gives the order.

use std::path::Path;

use super::hdf5;
use crate::error::{Error, Result};
use crate::nn::{Arch, LayerWeights, NamedTensor, VggConfig, WeightSet};
use crate::tensor::{Shape, Tensor};

/// Read the weights of a Keras `.h5` file.
pub fn read_weights(path: &Path) -> Result<WeightSet> {
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a directory, not a Keras .h5 weights file",
        ));
    }
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len == 0 {
        return Err(Error::file(
            path,
            "is empty (0 bytes), not a Keras .h5 weights file",
        ));
    }
    let file = hdf5::File::open(path)
        .map_err(|e| Error::file(path, format!("not a readable HDF5 file: {e}")))?;
    from_h5(&file, path)
}

/// Read the weights of an opened HDF5 file; `path` names it in messages.
pub fn from_h5(file: &hdf5::File, path: &Path) -> Result<WeightSet> {
    let h5 = |e: hdf5::Error| Error::file(path, format!("malformed HDF5 file: {e}"));
    let root = file.root().map_err(h5)?;
    let keras_version = root
        .attr("keras_version")
        .map_err(h5)?
        .and_then(|a| a.read_string().ok());
    let version = keras_version.as_deref().unwrap_or("?");
    if let Some(group) = root.group("model_weights").map_err(h5)? {
        let names = read_split_attr(&group, "layer_names")
            .map_err(|e| Error::file(path, format!("cannot read /model_weights layer_names: {e}")))?
            .ok_or_else(|| Error::file(path, "/model_weights has no layer_names attribute"))?;
        let layers = read_layer_names_layout(&group, &names, path)?;
        return finish(
            path,
            format!("Keras full model .h5 (keras {version})"),
            layers,
        );
    }
    let names = read_split_attr(&root, "layer_names")
        .map_err(|e| Error::file(path, format!("cannot read attribute layer_names: {e}")))?;
    if let Some(names) = names {
        let format = match keras_version {
            Some(v) => format!("Keras save_weights .h5 (keras {v})"),
            None => "Keras 1 download layout .h5".to_string(),
        };
        let layers = read_layer_names_layout(&root, &names, path)?;
        return finish(path, format, layers);
    }
    if let Some(group) = root.group("layers").map_err(h5)? {
        let layers = read_keras3(&group, path)?;
        return finish(path, "Keras 3 .weights.h5".into(), layers);
    }
    let members = root.member_names().map_err(h5)?;
    Err(Error::file(
        path,
        format!(
            "not a Keras weights file: no `layer_names` attribute, no /model_weights and no \
             /layers group (top-level members: {})",
            if members.is_empty() {
                "none".to_string()
            } else {
                members.join(", ")
            }
        ),
    ))
}

fn finish(path: &Path, format: String, layers: Vec<LayerWeights>) -> Result<WeightSet> {
    WeightSet::new(path, format, layers)
}

/// An attribute of strings, also in Keras's split form (`name0`, `name1`, ...), which
/// `save_attributes_to_hdf5_group` uses when the list would exceed HDF5's 64 KB header limit.
fn read_split_attr(group: &hdf5::Group, name: &str) -> hdf5::Result<Option<Vec<String>>> {
    if let Some(a) = group.attr(name)? {
        return a.read_strings().map(Some);
    }
    let mut all = Vec::new();
    let mut chunk = 0;
    while let Some(a) = group.attr(&format!("{name}{chunk}"))? {
        all.extend(a.read_strings()?);
        chunk += 1;
    }
    Ok((chunk > 0).then_some(all))
}

/// Keras 1/2 and full-model files: the groups `names` lists (its `layer_names`), then each
/// layer's `weight_names`.
fn read_layer_names_layout(
    base: &hdf5::Group,
    names: &[String],
    path: &Path,
) -> Result<Vec<LayerWeights>> {
    let bad = |problem: String| Error::file(path, problem);
    let h5 = |e: hdf5::Error| Error::file(path, format!("malformed HDF5 file: {e}"));
    let mut layers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(bad(format!("layer_names lists layer {name} twice")));
        }
        let group = base.group(name).map_err(h5)?.ok_or_else(|| {
            bad(format!(
                "layer_names lists layer {name} but the file has no group for it"
            ))
        })?;
        let weight_names = read_split_attr(&group, "weight_names")
            .map_err(|e| bad(format!("layer {name}: cannot read weight_names: {e}")))?
            .unwrap_or_default();
        let mut tensors = Vec::new();
        for wname in weight_names {
            let ds = group.dataset(&wname).map_err(h5)?.ok_or_else(|| {
                bad(format!(
                    "layer {name}: weight_names lists {wname} but there is no such dataset"
                ))
            })?;
            tensors.push(NamedTensor {
                tensor: read_tensor(&ds, path, name)?,
                name: wname,
            });
        }
        if !tensors.is_empty() {
            layers.push(LayerWeights {
                layer: name.clone(),
                tensors,
            });
        }
    }
    Ok(layers)
}

/// Keras 3 `.weights.h5`: `/layers/<key>/vars/<i>`.
fn read_keras3(layers_group: &hdf5::Group, path: &Path) -> Result<Vec<LayerWeights>> {
    let bad = |problem: String| Error::file(path, problem);
    let h5 = |e: hdf5::Error| Error::file(path, format!("malformed HDF5 file: {e}"));
    // (class, counter, key, layer name from the `name` attribute)
    let mut entries: Vec<(String, usize, String, Option<String>)> = Vec::new();
    for key in layers_group.member_names().map_err(h5)? {
        let Some(vars) = layers_group.group(&format!("{key}/vars")).map_err(h5)? else {
            continue;
        };
        if vars.member_names().map_err(h5)?.is_empty() {
            continue; // pooling, flatten, input: no weights
        }
        let name = match vars.attr("name").map_err(h5)? {
            Some(a) => Some(
                a.read_string()
                    .map_err(|e| bad(format!("/layers/{key}/vars: name attribute: {e}")))?,
            ),
            None => None,
        };
        let (class, counter) = match key.rsplit_once('_') {
            Some((c, n)) if n.parse::<usize>().is_ok() => (c.to_string(), n.parse().unwrap_or(0)),
            _ => (key.clone(), 0),
        };
        entries.push((class, counter, key, name));
    }
    entries.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let needs_names = entries.iter().any(|e| e.3.is_none());
    let convs: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].0 == "conv2d")
        .collect();
    let denses: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].0 == "dense")
        .collect();
    if needs_names {
        // Older Keras 3 files: name layers by position within their class, as Keras assigns them.
        let arch = [Arch::Vgg16, Arch::Vgg19]
            .into_iter()
            .find(|a| a.convs_per_block().iter().sum::<usize>() == convs.len())
            .ok_or_else(|| {
                bad(format!(
                    "Keras 3 file without layer names has {} Conv2D layers: neither VGG16 (13) nor VGG19 (16)",
                    convs.len()
                ))
            })?;
        // Model order: the convolutions, then fc1, fc2, predictions.
        let names = VggConfig::new(arch).weighted_layer_names();
        let (conv_names, dense_names) = names.split_at(convs.len());
        for (&i, name) in convs.iter().zip(conv_names) {
            entries[i].3.get_or_insert(name.clone());
        }
        for (&i, name) in denses.iter().zip(dense_names) {
            entries[i].3.get_or_insert(name.clone());
        }
    }
    let mut layers = Vec::new();
    for (class, _, key, name) in entries {
        let name = name.ok_or_else(|| {
            bad(format!(
                "/layers/{key}: cannot tell which layer this {class} is"
            ))
        })?;
        let vars = layers_group
            .group(&format!("{key}/vars"))
            .map_err(h5)?
            .ok_or_else(|| bad(format!("/layers/{key}/vars vanished")))?;
        let mut tensors = Vec::new();
        for i in 0.. {
            let Some(ds) = vars.dataset(&i.to_string()).map_err(h5)? else {
                break;
            };
            tensors.push(NamedTensor {
                tensor: read_tensor(&ds, path, &name)?,
                name: format!("/layers/{key}/vars/{i}"),
            });
        }
        layers.push(LayerWeights {
            layer: name,
            tensors,
        });
    }
    Ok(layers)
}

/// Read one weight dataset as f32 into aligned storage, refusing non-float data.
fn read_tensor(ds: &hdf5::Dataset, path: &Path, layer: &str) -> Result<Tensor> {
    let bad = |problem: String| {
        Error::file(
            path,
            format!("layer {layer}: weight {}: {problem}", ds.path()),
        )
    };
    let dims: Vec<usize> = ds
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_>>()?;
    let shape = Shape::new(dims);
    match ds.dtype() {
        hdf5::Dtype::Float { .. } => {}
        other => {
            return Err(bad(format!(
                "has dtype {other}; weights must be floating point"
            )));
        }
    }
    // A corrupt header can declare any shape: make sure the file holds the data before
    // allocating room for it.
    // (The reader's own errors already name the dataset.)
    let h5 = |e: hdf5::Error| Error::file(path, format!("layer {layer}: {e}"));
    ds.check_readable().map_err(h5)?;
    let mut t = Tensor::zeros(shape)?;
    ds.read_f32_into(t.data_mut()).map_err(h5)?;
    Ok(t)
}
