//! The 36 real Keras files of `../shared/fixtures/keras` and the real VGG16 weights.

use super::*;

/// Renders our view of a file exactly as `gen_mini.py::dump_layout` renders h5py's, so the
/// two can be compared line by line: every group, every attribute (type, shape, value) and
/// every dataset (shape, dtype, offset).
fn dump(file: &File) -> Vec<String> {
    let root = file.root().unwrap();
    let mut lines = vec!["/".to_string()];
    dump_attrs(&root, "  ", &mut lines);
    dump_group(&root, "", &mut lines);
    lines
}

fn dump_group(group: &Group, prefix: &str, lines: &mut Vec<String>) {
    let mut names = group.member_names().unwrap();
    names.sort();
    for name in names {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let ind = "  ".repeat(rel.matches('/').count() + 1);
        match group.member_kind(&name).unwrap().unwrap() {
            ObjectKind::Group => {
                lines.push(format!("{ind}/{rel}/"));
                let sub = group.group(&name).unwrap().unwrap();
                assert_eq!(sub.path(), format!("/{rel}"));
                dump_attrs(&sub, &format!("{ind}  "), lines);
                dump_group(&sub, &rel, lines);
            }
            ObjectKind::Dataset => {
                let d = group.dataset(&name).unwrap().unwrap();
                assert_eq!(d.path(), format!("/{rel}"));
                let offset = d
                    .data_offset()
                    .map_or("None".to_string(), |o| o.to_string());
                lines.push(format!(
                    "{ind}/{rel}  shape={} dtype={} offset={offset}",
                    py_shape(d.shape()),
                    numpy_str(d.dtype())
                ));
            }
            ObjectKind::Other => panic!("unexpected object {rel}"),
        }
    }
}

fn dump_attrs(group: &Group, ind: &str, lines: &mut Vec<String>) {
    let mut names = group.attr_names().unwrap();
    names.sort();
    for name in names {
        let attr = group.attr(&name).unwrap().unwrap();
        let mut value = attr_repr(&attr);
        let chars = value.chars().count();
        if chars > 300 {
            value = format!(
                "{}...({chars} chars)",
                value.chars().take(300).collect::<String>()
            );
        }
        lines.push(format!(
            "{ind}@{name} [{}, shape {}] = {value}",
            str_type(attr.dtype()),
            py_shape(attr.shape())
        ));
    }
}

/// What `repr(attrs[name].tolist())` prints in Python.
fn attr_repr(attr: &Attribute) -> String {
    let strings = attr.read_strings().unwrap();
    let bytes = matches!(attr.dtype(), Dtype::FixedString { .. });
    let items: Vec<String> = strings.iter().map(|s| py_repr(s, bytes)).collect();
    match (attr.shape(), items.as_slice()) {
        ([], [one]) if bytes => format!("np.bytes_({one})"),
        ([], [one]) => one.clone(),
        ([_], _) => format!("[{}]", items.join(", ")),
        (shape, _) => panic!("unexpected attribute shape {shape:?}"),
    }
}

/// The dump file, split into (file name, expected size, lines).
fn dump_sections(text: &str) -> Vec<(String, u64, Vec<String>)> {
    let mut out: Vec<(String, u64, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("# ") {
            let (name, size) = head.split_once("  (").unwrap();
            let size = size.trim_end_matches(" bytes)").parse().unwrap();
            out.push((name.to_string(), size, Vec::new()));
        } else if !line.is_empty() {
            out.last_mut().unwrap().2.push(line.to_string());
        }
    }
    out
}

#[test]
fn every_keras_file_matches_the_h5py_dump() {
    let Some(dir) = shared("fixtures/keras") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("layouts/all_files.txt")).unwrap();
    let sections = dump_sections(&text);
    assert_eq!(sections.len(), 36);
    for (name, size, expected) in sections {
        let path = dir.join(&name);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "{name}");
        let file = File::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = dump(&file);
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(a, b, "{name}, line {i}");
        }
        assert_eq!(ours.len(), expected.len(), "{name}");
        // Every dataset reads, and as many f32 values as its shape says.
        for d in all_datasets(&file.root().unwrap()) {
            let n: u64 = d.shape().iter().product();
            assert_eq!(d.read_f32().unwrap().len() as u64, n, "{name} {}", d.path());
            assert_eq!(d.read_raw().unwrap().len() as u64, n * 4);
        }
    }
}

/// The weights group of a file of each flavour, and where a layer's kernel and bias are.
fn kernel_and_bias(file: &File, flavour: &str, layer: &str) -> (Dataset, Dataset) {
    let root = file.root().unwrap();
    let group = match flavour {
        "k1" | "keras2" | "keras2_fixedstr" => root,
        _ => root.group("model_weights").unwrap().unwrap(),
    };
    let layer_group = group.group(layer).unwrap().unwrap();
    let names = layer_group
        .attr("weight_names")
        .unwrap()
        .unwrap()
        .read_strings()
        .unwrap();
    assert_eq!(names.len(), 2, "{flavour} {layer}");
    let get = |n: &str| {
        // K1 datasets sit directly in the layer group; K2 under `<layer>/<name>`.
        layer_group
            .dataset(n)
            .unwrap()
            .unwrap_or_else(|| panic!("{flavour}: {layer}/{n} missing"))
    };
    (get(&names[0]), get(&names[1]))
}

#[test]
fn weights_match_index_json() {
    let Some(dir) = shared("fixtures/keras") else {
        return;
    };
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    for (model, info) in index["models"].as_object().unwrap() {
        for flavour in [
            "k1",
            "keras2",
            "keras2_fixedstr",
            "full.keras2",
            "full.keras3",
        ] {
            let file = File::open(&dir.join(format!("models/{model}.{flavour}.h5"))).unwrap();
            // The complete layer list, in model order, with the flavour's input layer name.
            let root = file.root().unwrap();
            let weights_group = if flavour.starts_with("full") {
                root.group("model_weights").unwrap().unwrap()
            } else {
                root
            };
            let listed = weights_group
                .attr("layer_names")
                .unwrap()
                .unwrap()
                .read_strings()
                .unwrap();
            let input = if flavour == "full.keras3" {
                "input_layer"
            } else {
                "input_1"
            };
            let mut expected = vec![input.to_string()];
            expected.extend(
                info["layer_names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string()),
            );
            assert_eq!(listed, expected, "{model}.{flavour}");

            for (layer, w) in info["layers"].as_object().unwrap() {
                let (kernel, bias) = kernel_and_bias(&file, flavour, layer);
                for (d, key) in [(kernel, "kernel"), (bias, "bias")] {
                    let shape: Vec<u64> = w[format!("{key}_shape")]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap())
                        .collect();
                    assert_eq!(d.shape(), shape.as_slice());
                    let values = d.read_f32().unwrap();
                    // JSON holds the f32 values printed as f64; serde_json's parse may be off in
                    // the last f64 bit, which the rounding to f32 removes.
                    let first4 = &values[..4];
                    let want: Vec<f32> = w[format!("{key}_first4")]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect();
                    assert_eq!(first4, want, "{model}.{flavour} {layer} {key}");
                    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
                    let want_sum = w[format!("{key}_sum_f64")].as_f64().unwrap();
                    assert!(
                        (sum - want_sum).abs() <= 1e-9 * (1.0 + want_sum.abs()),
                        "{model} {layer} {key}: {sum}"
                    );
                }
            }
        }
    }
}

#[test]
fn keras3_weights_file_names_its_layers() {
    let Some(dir) = shared("fixtures/keras/models/mini_vgg16_top.weights.h5") else {
        return;
    };
    let file = File::open(&dir).unwrap();
    let vars = file
        .root()
        .unwrap()
        .group("layers/dense_2/vars")
        .unwrap()
        .unwrap();
    assert_eq!(
        vars.attr("name").unwrap().unwrap().read_string().unwrap(),
        "predictions"
    );
    assert_eq!(
        vars.attr("name").unwrap().unwrap().dtype(),
        &Dtype::VarString { utf8: true }
    );
    assert_eq!(vars.dataset("0").unwrap().unwrap().shape(), &[32, 10]);
    assert!(vars.dataset("2").unwrap().is_none());
}

#[test]
fn real_vgg16_notop_loads_completely() {
    let Some(path) = shared("weights/vgg16_imagenet_notop.h5") else {
        return;
    };
    let file = File::open(&path).unwrap();
    let root = file.root().unwrap();
    let layers = root
        .attr("layer_names")
        .unwrap()
        .unwrap()
        .read_strings()
        .unwrap();
    assert_eq!(layers.len(), 19);
    let datasets = all_datasets(&root);
    assert_eq!(datasets.len(), 26);
    let mut params = 0usize;
    for d in &datasets {
        let values = d.read_f32().unwrap();
        assert_eq!(values.len() as u64, d.shape().iter().product::<u64>());
        assert!(values.iter().all(|v| v.is_finite()), "{}", d.path());
        params += values.len();
    }
    assert_eq!(params, 14_714_688);
    let conv = root
        .dataset("block5_conv3/block5_conv3_W_1:0")
        .unwrap()
        .unwrap();
    assert_eq!(conv.shape(), &[3, 3, 512, 512]);
}

/// A file one byte shorter than its superblock says is refused as truncated.
#[test]
fn truncated_keras_file_is_refused() {
    let Some(path) = shared("fixtures/keras/models/mini_vgg16_notop.k1.h5") else {
        return;
    };
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    bytes.pop();
    let err = File::from_bytes(bytes).err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "file is truncated: the HDF5 superblock says it is {len} bytes long but it has {}",
            len - 1
        )
    );
}
