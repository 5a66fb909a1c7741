//! `keel export --format keras`: the Keras 3 `.weights.h5` (written by keel's own HDF5 writer)
//! holds, group for group, what Keras 3's `save_weights` writes for the model the `.py` beside
//! it builds, with the trained model's weights bit for bit; h5py (libhdf5) reads it and the
//! writer's odd shapes; bad input fails cleanly without leaving a file.
//!
//! Keras itself is not in CI: `scripts/check_keras_export.py` loads the export in Keras and
//! compares its predictions with keel's (see `docs/export.md` for the commands and numbers).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run::{assert_fails_with, assert_ok, keel_in, s, stderr, stdout, test_python};
use common::run::{trained_model, weights};
use keel::io::hdf5;

fn export(home: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["export", s(model), "--format", "keras", "-o", s(out)];
    args.extend_from_slice(extra);
    keel_in(home, &args)
}

/// Nothing in `dir` but `keep`: no other output, no temporary file of a write.
#[track_caller]
fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "files in {}", dir.display());
}

/// One layer as Keras 3 stores it: its group under `/layers`, its name, and where keel keeps
/// its kernel and bias (`file`, the tensor names there); `None` for layers without weights.
struct Expected {
    key: String,
    name: String,
    weights: Option<(PathBuf, String)>,
}

/// The layers of the default head (`gap,dense256,relu,dropout0.5`) on the micro VGG16 base,
/// in Keras's model order, with Keras's keys: the specification the file is checked against,
/// written out here rather than derived from keel's export code. Convolutions of `tuned`
/// blocks come from the model folder's `tuned.safetensors`, the others from the base file.
fn expected_layers(model: &Path, tuned: &[&str]) -> Vec<Expected> {
    let mut out = Vec::new();
    let (mut convs, mut pools) = (0, 0);
    let counted = |class: &str, n: usize| {
        if n == 0 {
            class.to_string()
        } else {
            format!("{class}_{n}")
        }
    };
    for (block, n) in [2, 2, 3, 3, 3].into_iter().enumerate() {
        let block = format!("block{}", block + 1);
        for i in 1..=n {
            let name = format!("{block}_conv{i}");
            let file = if tuned.contains(&block.as_str()) {
                model.join("tuned.safetensors")
            } else {
                weights()
            };
            out.push(Expected {
                key: counted("conv2d", convs),
                weights: Some((file, name.clone())),
                name,
            });
            convs += 1;
        }
        out.push(Expected {
            key: counted("max_pooling2d", pools),
            name: format!("{block}_pool"),
            weights: None,
        });
        pools += 1;
    }
    let head = model.join("head.safetensors");
    let plain = |key: &str| Expected {
        key: key.into(),
        name: key.into(),
        weights: None,
    };
    out.push(plain("global_average_pooling2d"));
    out.push(Expected {
        key: "dense".into(),
        name: "dense1".into(),
        weights: Some((head.clone(), "dense1".into())),
    });
    out.push(plain("dropout"));
    // The classifier, with the softmax as its activation, takes Keras's name `predictions`.
    out.push(Expected {
        key: "dense_1".into(),
        name: "predictions".into(),
        weights: Some((head, "dense2".into())),
    });
    out
}

/// The little-endian bytes and the shape of keel's `layer` weight `which` (0 kernel, 1 bias),
/// read from the model folder's safetensors or the base `.h5`, not through the export.
fn keel_weight(file: &Path, layer: &str, which: usize) -> (Vec<u8>, Vec<u64>) {
    let suffix = ["kernel", "bias"][which];
    if file.extension().is_some_and(|e| e == "safetensors") {
        let bytes = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(&format!("{layer}.{suffix}")).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let shape = t.shape().iter().map(|&d| d as u64).collect();
        (t.data().to_vec(), shape)
    } else {
        let set = keel::io::keras::read_weights(file).unwrap();
        let t = &set.get(layer).unwrap().tensors[which].tensor;
        let bytes = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        (bytes, t.dims().iter().map(|&d| d as u64).collect())
    }
}

/// The exported file, read with keel's reader, is exactly `expected`: `/vars` names the
/// model, `/layers` lists one group per layer in model order, each `vars` group names its
/// layer and holds its kernel and bias as `0` and `1`, bit for bit.
fn check_file(file: &Path, expected: &[Expected]) {
    let f = hdf5::File::open(file).unwrap();
    let root = f.root().unwrap();
    assert_eq!(root.member_names().unwrap(), ["vars", "layers"]);
    assert!(root.attr_names().unwrap().is_empty());
    let model_vars = root.group("vars").unwrap().unwrap();
    let name = model_vars.attr("name").unwrap().unwrap();
    assert_eq!(name.read_string().unwrap(), "keel_vgg16");
    assert!(model_vars.member_names().unwrap().is_empty());

    let layers = root.group("layers").unwrap().unwrap();
    let keys: Vec<&str> = expected.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(layers.member_names().unwrap(), keys);
    for e in expected {
        let group = layers.group(&e.key).unwrap().unwrap();
        assert_eq!(group.member_names().unwrap(), ["vars"], "{}", e.key);
        let vars = group.group("vars").unwrap().unwrap();
        let name = vars.attr("name").unwrap().unwrap();
        assert_eq!(name.read_string().unwrap(), e.name, "{}", e.key);
        let Some((source, layer)) = &e.weights else {
            assert!(vars.member_names().unwrap().is_empty(), "{}", e.key);
            continue;
        };
        assert_eq!(vars.member_names().unwrap(), ["0", "1"], "{}", e.key);
        for which in 0..2 {
            let ds = vars.dataset(&which.to_string()).unwrap().unwrap();
            let (want, shape) = keel_weight(source, layer, which);
            assert_eq!(ds.shape(), shape.as_slice(), "{}/{which}", e.key);
            let f32_le = hdf5::Dtype::Float {
                size: 4,
                little_endian: true,
            };
            assert_eq!(ds.dtype(), &f32_le, "{}/{which}", e.key);
            assert!(
                ds.read_raw().unwrap() == want,
                "{}/{which} ({layer}): values differ",
                e.key
            );
        }
    }
}

/// What h5py lists of the file, in `visititems` order (by name): a line per group (with its
/// attributes, `repr`'d, so a `str` shows as `'...'` and `bytes` as `b'...'`) and per
/// dataset (dtype, shape, storage: contiguous, uncompressed).
const H5PY_LIST: &str = r#"
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    print("G /", *(f"{k}={v!r}" for k, v in f.attrs.items()))
    def show(name, obj):
        if isinstance(obj, h5py.Dataset):
            print("D", name, obj.dtype.str, list(obj.shape), obj.chunks, obj.compression)
        else:
            print("G", name, *(f"{k}={v!r}" for k, v in obj.attrs.items()))
    f.visititems(show)
"#;

/// h5py (libhdf5) reads the file as Keras's `save_weights` would have written it.
fn check_with_h5py(file: &Path, expected: &[Expected]) {
    let Some(python) = test_python("the h5py check of the Keras export") else {
        return;
    };
    let out = Command::new(&python)
        .args(["-c", H5PY_LIST])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "h5py failed: {}", stderr(&out));
    let mut want = vec![
        "G /".to_string(),
        "G layers".into(),
        "G vars name='keel_vgg16'".into(),
    ];
    for e in expected {
        want.push(format!("G layers/{}", e.key));
        want.push(format!("G layers/{}/vars name='{}'", e.key, e.name));
        if let Some((source, layer)) = &e.weights {
            for which in 0..2 {
                let (_, shape) = keel_weight(source, layer, which);
                want.push(format!(
                    "D layers/{}/vars/{which} <f4 {shape:?} None None",
                    e.key
                ));
            }
        }
    }
    let mut got: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // The .py is valid Python (Keras itself is not needed to parse it).
    let py = file.with_file_name("model.py");
    let out = Command::new(&python)
        .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(&py)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", py.display(), stderr(&out));
}

/// The `.py` builds the expected layers, in order, from the right input to the classes.
fn check_script(py: &Path, expected: &[Expected]) {
    let text = std::fs::read_to_string(py).unwrap();
    assert!(text.starts_with("# Written by keel export"), "{text}");
    for needle in [
        "CLASSES = [\"blue\", \"red\"]",
        "INPUT_SHAPE = (40, 40, 3)",
        "model.weights.h5",
        "layers.Dense(2, activation=\"softmax\", name=\"predictions\")",
        "layers.Dense(256, activation=\"relu\", name=\"dense1\")",
        "layers.Dropout(0.5, name=\"dropout\")",
        "def load_model(",
        "model.load_weights(weights)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in {}", py.display());
    }
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("name=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut want: Vec<&str> = expected.iter().map(|e| e.name.as_str()).collect();
    want.push("keel_vgg16");
    assert_eq!(names, want, "layer names in {}", py.display());
}

/// Train, export, and check the file and the script; returns the test's folder and model.
fn export_and_check(kind: &str, extra: &[&str], tuned: &[&str]) -> (PathBuf, PathBuf) {
    let home = common::temp_dir(&format!("keras-{kind}"));
    let model = trained_model(&home, extra);
    let out_dir = home.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join("model.weights.h5");
    let out = export(&home, &model, &file, &[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("model.weights.h5"),
        "{}",
        stderr(&out)
    );
    assert_only(&out_dir, &["model.py", "model.weights.h5"]);
    let expected = expected_layers(&model, tuned);
    check_file(&file, &expected);
    check_script(&out_dir.join("model.py"), &expected);
    check_with_h5py(&file, &expected);
    (home, model)
}

#[test]
fn trained_model_exports() {
    let (home, _) = export_and_check("plain", &[], &[]);
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn fine_tuned_model_exports_the_tuned_weights() {
    let (home, model) = export_and_check("tuned", &["--fine-tune", "block5"], &["block5"]);
    // The tuned weights are not the base's: the check above could tell them apart.
    let (tuned, _) = keel_weight(&model.join("tuned.safetensors"), "block5_conv3", 0);
    let (base, _) = keel_weight(&weights(), "block5_conv3", 0);
    assert_ne!(tuned, base, "fine-tuning left block5_conv3 unchanged");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn bad_input_fails_cleanly() {
    let home = common::temp_dir("keras-bad");
    let model = trained_model(&home, &[]);
    let out_dir = home.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join("model.weights.h5");

    // An unknown format: clap's usage error.
    let out = keel_in(
        &home,
        &["export", s(&model), "--format", "tflite", "-o", s(&file)],
    );
    assert_fails_with(&out, &["tflite"]);
    // Keras 3 reads this format only from *.weights.h5.
    let h5 = out_dir.join("model.h5");
    assert_fails_with(
        &export(&home, &model, &h5, &[]),
        &["model.h5", ".weights.h5"],
    );
    assert_only(&out_dir, &[]);
    // Someone's own model.py is not replaced, and nothing is written.
    std::fs::write(out_dir.join("model.py"), "print('mine')\n").unwrap();
    let out = export(&home, &model, &file, &[]);
    assert_fails_with(&out, &["model.py", "not written by keel export"]);
    assert_eq!(out.status.code(), Some(1));
    assert_only(&out_dir, &["model.py"]);
    std::fs::remove_file(out_dir.join("model.py")).unwrap();

    // An existing output: refused without --overwrite (untouched), replaced with it.
    assert_ok(&export(&home, &model, &file, &[]));
    std::fs::write(&file, b"old").unwrap();
    let out = export(&home, &model, &file, &[]);
    assert_fails_with(&out, &["model.weights.h5", "--overwrite"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"old");
    assert_ok(&export(&home, &model, &file, &["--overwrite"]));
    check_file(&file, &expected_layers(&model, &[]));
    assert_only(&out_dir, &["model.py", "model.weights.h5"]);

    // A damaged model folder: the error names the file, nothing is written.
    let head = model.join("head.safetensors");
    let bytes = std::fs::read(&head).unwrap();
    std::fs::write(&head, &bytes[..bytes.len() / 2]).unwrap();
    let again = out_dir.join("again.weights.h5");
    let out = export(&home, &model, &again, &[]);
    assert_fails_with(&out, &["head.safetensors"]);
    assert_eq!(out.status.code(), Some(1));
    assert_only(&out_dir, &["model.py", "model.weights.h5"]);
    std::fs::remove_dir_all(&home).unwrap();
}

/// Odd shapes, scalars, empty datasets, a group beyond libhdf5's compact default of 8 links,
/// and non-ASCII names and values, written by keel's writer: h5py reads every value bit for
/// bit and every attribute as a `str`.
#[test]
fn h5py_reads_the_writers_odd_trees() {
    let Some(python) = test_python("the h5py check of keel's HDF5 writer") else {
        return;
    };
    let home = common::temp_dir("keras-h5py-writer");
    let shapes: [&[usize]; 9] = [
        &[],
        &[1],
        &[3],
        &[17],
        &[3, 17],
        &[17, 3, 1],
        &[3, 3, 3, 17],
        &[0],
        &[2, 0],
    ];
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            (0..n)
                .map(|j| (i * 1000 + j) as f32 * -0.37 + 1e-39)
                .collect()
        })
        .collect();
    let mut root = hdf5::write::GroupBuilder::new();
    root.attr("name", "racine é \u{1f41d}").unwrap();
    let many = root.group("many").unwrap();
    for i in 0..12 {
        many.group(&format!("g{i}"))
            .unwrap()
            .attr("i", &i.to_string())
            .unwrap();
    }
    let data = root.group("données").unwrap();
    for (i, (shape, v)) in shapes.iter().zip(&values).enumerate() {
        data.dataset(&format!("d{i}"), shape, v).unwrap();
    }
    let file = home.join("odd.h5");
    root.write_file(&file).unwrap();

    let script = r#"
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    print("root", repr(f.attrs["name"]))
    print("many", *(f"{k}:{v.attrs['i']!r}" for k, v in f["many"].items()))
    for k, d in f["données"].items():
        print(k, d.dtype.str, list(d.shape), d[()].tobytes().hex())
"#;
    let out = Command::new(&python)
        .env("PYTHONIOENCODING", "utf-8")
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "h5py failed: {}", stderr(&out));
    let mut want = vec![
        "root 'racine é \u{1f41d}'".to_string(),
        format!("many {}", {
            // h5py lists members by name: g0, g1, g10, g11, g2, ...
            let mut names: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
            names.sort();
            let items: Vec<String> = names.iter().map(|n| format!("{n}:'{}'", &n[1..])).collect();
            items.join(" ")
        }),
    ];
    for (i, (shape, v)) in shapes.iter().zip(&values).enumerate() {
        let hex: String = v
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .map(|b| format!("{b:02x}"))
            .collect();
        want.push(format!("d{i} <f4 {shape:?} {hex}"));
    }
    want[2..].sort(); // h5py lists d0, d1, ..., by name; all below 10 sort the same
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), want);
    std::fs::remove_dir_all(&home).unwrap();
}
