//! A trained model as a Keras 3 `.weights.h5`, written by keel's own HDF5 writer, and beside
//! it the few lines of Python that build the same model in Keras and load the file.
//!
//! Keras 3's `load_weights` matches weights by *position*, not by layer name. The model's
//! layers (for a `keras.Sequential`, the input layer excluded) are the groups
//! `/layers/<class>[_<n>]`: the class name in snake case, counted per class in model order
//! (`conv2d`, `conv2d_1`, ..., `max_pooling2d`, ..., `dense`, `dense_1`). Each has a `vars`
//! group with the layer's variables as datasets `0`, `1`, ... (kernel, bias; none for pools
//! or dropout) and the layer's name as its `name` attribute; the model's own `/vars` group has
//! only the model's name. That is exactly what Keras 3.15's `save_weights` writes for the model
//! the `.py` builds (Keras ignores the `name` attributes when loading; they are there because
//! Keras writes them). `scripts/check_keras_export.py` loads both in Keras and compares its
//! predictions with keel's.
//!
//! The graph's final softmax becomes the classifier's `activation="softmax"`, and the
//! classifier takes the softmax's name, `predictions` (as in `keras.applications`): one layer
//! fewer than a separate `Activation`, and the shape Keras users expect. (A softmax after
//! anything but a plain dense layer would be written as an `Activation("softmax")` layer.)

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::hdf5::write::GroupBuilder;
use crate::tensor::{GlobalPool, Tensor};
use crate::transfer::{ExportGraph, ExportLayer};

/// The first line of every `.py` this writes: an existing `.py` without it is not replaced.
const MARKER: &str = "# Written by keel export";

/// Write `graph` as a Keras 3 `.weights.h5` at `path` (atomically), and the `.py` that builds
/// the model in Keras and loads it beside it (`model.weights.h5` → `model.py`). On error
/// neither file is left behind.
pub fn write(graph: &ExportGraph, path: &Path) -> Result<()> {
    let script = script_path(path)?;
    check_script_target(&script)?;
    let layers =
        keras_layers(graph).map_err(|e| Error::file(path, format!("cannot export: {e}")))?;
    let h5 = |e: crate::io::hdf5::Error| Error::file(path, e.to_string());
    let model_name = format!("keel_{}", graph.model);

    let mut root = GroupBuilder::new();
    root.group("vars")
        .map_err(h5)?
        .attr("name", &model_name)
        .map_err(h5)?;
    let group = root.group("layers").map_err(h5)?;
    for layer in &layers {
        let vars = group
            .group(&layer.key)
            .map_err(h5)?
            .group("vars")
            .map_err(h5)?;
        vars.attr("name", &layer.name).map_err(h5)?;
        for (i, t) in layer.vars.iter().enumerate() {
            vars.dataset(&i.to_string(), t.dims(), t.values::<f32>()?)
                .map_err(h5)?;
        }
    }
    let weights_name = path.file_name().unwrap_or_default().to_string_lossy();
    let source = python(graph, &layers, &model_name, &weights_name);

    root.write_file(path)?;
    let written = crate::io::atomic::write_atomic(&script, |w| w.write_all(source.as_bytes()));
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// `<stem>.weights.h5` → `<stem>.py`. Keras 3 loads this format only from a file whose name
/// ends in `.weights.h5` (any other `.h5` goes to its legacy loader), so other names are
/// refused up front rather than written into a file Keras would misread.
fn script_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match name.strip_suffix(".weights.h5") {
        Some(stem) if !stem.is_empty() => Ok(path.with_file_name(format!("{stem}.py"))),
        _ => Err(Error::file(
            path,
            "Keras 3 loads weights only from a file named <name>.weights.h5; name the output \
             like model.weights.h5",
        )),
    }
}

/// The `.py` is replaced only when keel wrote it: someone's own script of the same name stays.
fn check_script_target(script: &Path) -> Result<()> {
    if script.is_dir() {
        return Err(Error::file(
            script,
            "is a folder; the export writes its .py here",
        ));
    }
    if !script.exists() {
        return Ok(());
    }
    let text = std::fs::read(script).map_err(|e| Error::io(script, e))?;
    if !text.starts_with(MARKER.as_bytes()) {
        return Err(Error::file(
            script,
            "exists and was not written by keel export; the export writes its .py here, so move \
             it away or name the output differently",
        ));
    }
    Ok(())
}

/// One Keras layer of the `.py`, with what the file holds for it.
struct KerasLayer<'g> {
    /// Its group under `/layers`: `conv2d`, `conv2d_1`, ...
    key: String,
    name: String,
    /// The Python constructor without the name: `layers.Conv2D(64, (3, 3), ...`.
    call: String,
    /// Its variables in Keras's order (kernel, bias).
    vars: Vec<&'g Tensor>,
}

/// The graph as Keras layers (its shapes checked by [`ExportGraph::input_shapes`], so the
/// `.py` builds exactly the variables the file holds).
fn keras_layers(graph: &ExportGraph) -> Result<Vec<KerasLayer<'_>>> {
    let mut out: Vec<KerasLayer> = Vec::new();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut push = |class: &'static str, snake: &'static str, name: &str, args: String, vars| {
        let n = match counts.iter_mut().find(|(s, _)| *s == snake) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counts.push((snake, 0));
                0
            }
        };
        let key = if n == 0 {
            snake.to_string()
        } else {
            format!("{snake}_{n}")
        };
        let sep = if args.is_empty() { "" } else { ", " };
        out.push(KerasLayer {
            key,
            name: name.to_string(),
            call: format!("layers.{class}({args}{sep}"),
            vars,
        });
    };
    graph.input_shapes()?; // the shapes every writer relies on, checked once
    let mut layers = graph.layers.iter().peekable();
    while let Some(layer) = layers.next() {
        let name = layer.name();
        match layer {
            ExportLayer::Conv2d { kernel, bias, .. } => {
                let cout = kernel.dims()[3];
                let args = format!("{cout}, (3, 3), activation=\"relu\", padding=\"same\"");
                push("Conv2D", "conv2d", name, args, vec![kernel, bias]);
            }
            ExportLayer::MaxPool { .. } => {
                push(
                    "MaxPooling2D",
                    "max_pooling2d",
                    name,
                    "(2, 2), strides=(2, 2)".into(),
                    vec![],
                );
            }
            ExportLayer::GlobalPool { kind, .. } => match kind {
                GlobalPool::Avg => push(
                    "GlobalAveragePooling2D",
                    "global_average_pooling2d",
                    name,
                    String::new(),
                    vec![],
                ),
                GlobalPool::Max => push(
                    "GlobalMaxPooling2D",
                    "global_max_pooling2d",
                    name,
                    String::new(),
                    vec![],
                ),
            },
            ExportLayer::Flatten { .. } => {
                push("Flatten", "flatten", name, String::new(), vec![]);
            }
            ExportLayer::Dense {
                kernel, bias, relu, ..
            } => {
                let nout = kernel.dims()[1];
                let (activation, name) = match layers.peek().copied() {
                    Some(next @ ExportLayer::Softmax { .. }) if !relu => {
                        layers.next();
                        (", activation=\"softmax\"", next.name())
                    }
                    _ if *relu => (", activation=\"relu\"", name),
                    _ => ("", name),
                };
                push(
                    "Dense",
                    "dense",
                    name,
                    format!("{nout}{activation}"),
                    vec![kernel, bias],
                );
            }
            ExportLayer::Dropout { rate, .. } => {
                push("Dropout", "dropout", name, format!("{rate:?}"), vec![]);
            }
            ExportLayer::Softmax { .. } => {
                push(
                    "Activation",
                    "activation",
                    name,
                    "\"softmax\"".into(),
                    vec![],
                );
            }
        }
    }
    Ok(out)
}

/// The `.py`: `build_model()` (the Keras model, layer for layer), `load_model()` (with the
/// weights file beside it), the class names and the input shape.
fn python(graph: &ExportGraph, layers: &[KerasLayer], model_name: &str, weights: &str) -> String {
    let [h, w, c] = graph.input;
    let classes: Vec<String> = graph.classes.iter().map(|c| py_str(c)).collect();
    let mut s = format!(
        "{MARKER}: builds the trained model in Keras 3 (any backend) and loads its weights.\n\
         \"\"\"A {model} transfer-learning model exported by `keel export --format keras`.\n\
         \n\
         `python` this file to print the model; import it (or exec it) and call `load_model()`\n\
         to get the Keras model with keel's trained weights from the .weights.h5 file beside it.\n\
         \n\
         Input: images of INPUT_SHAPE, preprocessed as keras.applications.{model}.preprocess_input\n\
         does (\"caffe\" mode: RGB to BGR, ImageNet channel means subtracted), channels last.\n\
         Output: the probabilities of CLASSES, in that order.\n\
         \"\"\"\n\
         import os\n\
         \n\
         import keras\n\
         from keras import layers\n\
         \n\
         CLASSES = [{classes}]\n\
         INPUT_SHAPE = ({h}, {w}, {c})\n\
         WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), {weights})\n\
         \n\
         \n\
         def build_model():\n\
         \x20   \"\"\"The model with fresh weights, layer for layer what keel ran.\"\"\"\n\
         \x20   return keras.Sequential(\n\
         \x20       [\n\
         \x20           keras.Input(shape=INPUT_SHAPE),\n",
        model = graph.model,
        classes = classes.join(", "),
        weights = py_str(weights),
    );
    for layer in layers {
        s += &format!("            {}name={}),\n", layer.call, py_str(&layer.name));
    }
    s += &format!(
        "        ],\n\
         \x20       name={},\n\
         \x20   )\n\
         \n\
         \n\
         def load_model(weights=WEIGHTS):\n\
         \x20   \"\"\"The model with keel's trained weights.\"\"\"\n\
         \x20   model = build_model()\n\
         \x20   model.load_weights(weights)\n\
         \x20   return model\n\
         \n\
         \n\
         if __name__ == \"__main__\":\n\
         \x20   load_model().summary()\n\
         \x20   print(\"classes:\", CLASSES)\n",
        py_str(model_name)
    );
    s
}

/// A Python string literal of `s` (double quotes; backslash, quote and control characters
/// escaped; everything else as is, Python source being UTF-8).
fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '\\' => out += "\\\\",
            '"' => out += "\\\"",
            '\n' => out += "\\n",
            '\t' => out += "\\t",
            '\r' => out += "\\r",
            c if c.is_control() => out += &format!("\\u{:04x}", u32::from(c)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strings_are_escaped() {
        assert_eq!(py_str("ants"), "\"ants\"");
        assert_eq!(py_str("a\"b\\c\nd\u{7}é"), "\"a\\\"b\\\\c\\nd\\u0007é\"");
    }

    #[test]
    fn only_weights_h5_names_are_accepted() {
        let py = script_path(Path::new("out/model.weights.h5")).unwrap();
        assert_eq!(py, Path::new("out/model.py"));
        for bad in ["model.h5", ".weights.h5", "model.weights.h5.tmp", "out/"] {
            let err = script_path(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(".weights.h5"), "{bad}: {err}");
        }
    }
}
