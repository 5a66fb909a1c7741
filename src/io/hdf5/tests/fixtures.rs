//! The generated files of `tests/data/h5` (see its README.md): Keras-layout micro VGGs in
//! every encoding, damaged Keras files, and reader corner cases.

use super::*;

const VGG16_LAYERS: [&str; 19] = [
    "input_1",
    "block1_conv1",
    "block1_conv2",
    "block1_pool",
    "block2_conv1",
    "block2_conv2",
    "block2_pool",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_pool",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block4_pool",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
    "block5_pool",
];

fn strings(group: &Group, attr: &str) -> Vec<String> {
    group
        .attr(attr)
        .unwrap()
        .unwrap_or_else(|| panic!("no attribute {attr}"))
        .read_strings()
        .unwrap()
}

fn dataset(file: &File, path: &str) -> Dataset {
    file.root()
        .unwrap()
        .dataset(path)
        .unwrap()
        .unwrap_or_else(|| panic!("no dataset {path}"))
}

fn err<T>(result: super::super::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Every dataset of a file as (path, values).
fn all_values(file: &File) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<_> = all_datasets(&file.root().unwrap())
        .iter()
        .map(|d| (d.path().to_string(), d.read_f32().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn micro_vgg16_reads_like_h5py() {
    let file = open_fixture("micro_vgg16_notop.h5");
    let root = file.root().unwrap();
    assert_eq!(strings(&root, "layer_names"), VGG16_LAYERS);
    assert_eq!(
        root.attr("layer_names").unwrap().unwrap().dtype(),
        &Dtype::VarString { utf8: false }
    );
    assert_eq!(
        root.attr("backend")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "tensorflow"
    );
    assert_eq!(
        root.attr("keras_version")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "2.13.1"
    );
    assert_eq!(
        root.attr("nope").unwrap().map(|a| a.name().to_string()),
        None
    );
    let conv = root.group("block1_conv1").unwrap().unwrap();
    assert_eq!(
        strings(&conv, "weight_names"),
        ["block1_conv1/kernel:0", "block1_conv1/bias:0"]
    );
    let pool = root.group("block1_pool").unwrap().unwrap();
    assert_eq!(strings(&pool, "weight_names"), Vec::<String>::new());
    assert_eq!(
        pool.attr("weight_names").unwrap().unwrap().dtype(),
        &Dtype::Float {
            size: 8,
            little_endian: true
        }
    );

    let kernel = dataset(&file, "block1_conv1/block1_conv1/kernel:0");
    assert_eq!(kernel.shape(), &[3, 3, 3, 2]);
    assert_eq!(kernel.dtype().to_string(), "float32");
    let values = kernel.read_f32().unwrap();
    // Exact: the values are float16-representable (compared as f64 to keep every digit).
    let as_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    assert_eq!(
        as_f64(&values[..4]),
        [
            -0.1287841796875,
            -0.10791015625,
            0.05584716796875,
            -0.2841796875
        ]
    );
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - 0.44016075134277344).abs() < 1e-12);
    let bias = dataset(&file, "block5_conv3/block5_conv3/bias:0")
        .read_f32()
        .unwrap();
    let expected = [
        0.1221923828125,
        0.94140625,
        -0.890625,
        0.66064453125,
        -0.1859130859375,
        0.6923828125,
    ];
    assert_eq!(as_f64(&bias), expected);
    // Same dataset through nested group handles.
    let inner = root
        .group("block5_conv3")
        .unwrap()
        .unwrap()
        .group("block5_conv3")
        .unwrap()
        .unwrap();
    assert_eq!(inner.path(), "/block5_conv3/block5_conv3");
    assert_eq!(
        inner
            .dataset("bias:0")
            .unwrap()
            .unwrap()
            .read_f32()
            .unwrap(),
        bias
    );
    assert_eq!(all_datasets(&root).len(), 26);
}

/// Every encoding of the same model loads to bit-identical f32 values.
#[test]
fn micro_vgg16_encodings_hold_identical_values() {
    let reference = all_values(&open_fixture("micro_vgg16_notop.h5"));
    for (name, dtype) in [
        ("micro_vgg16_notop_f16.h5", "float16"),
        ("micro_vgg16_notop_f64.h5", "float64"),
        ("micro_vgg16_notop_bigendian.h5", "float32 (big-endian)"),
        ("micro_vgg16_notop_fixedstr.h5", "float32"),
        ("micro_vgg16_notop_latest.h5", "float32"),
        ("micro_vgg16_notop_split_names.h5", "float32"),
    ] {
        let file = open_fixture(name);
        let values = all_values(&file);
        assert_eq!(values.len(), reference.len(), "{name}");
        for ((path, v), (ref_path, ref_v)) in values.iter().zip(&reference) {
            assert_eq!(path, ref_path, "{name}");
            let same = v.iter().zip(ref_v).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && v.len() == ref_v.len(), "{name} {path}");
        }
        let kernel = dataset(&file, "block2_conv1/block2_conv1/kernel:0");
        assert_eq!(kernel.dtype().to_string(), dtype, "{name}");
    }
}

#[test]
fn string_attribute_encodings() {
    let fixed = open_fixture("micro_vgg16_notop_fixedstr.h5")
        .root()
        .unwrap();
    let names = fixed.attr("layer_names").unwrap().unwrap();
    assert_eq!(
        names.dtype(),
        &Dtype::FixedString {
            len: 12,
            padding: StrPad::NullPad,
            utf8: false
        }
    );
    assert_eq!(names.dtype().to_string(), "string[12]");
    assert_eq!(names.read_strings().unwrap(), VGG16_LAYERS);
    assert_eq!(
        fixed
            .attr("backend")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "tensorflow"
    );
    let weight_names = strings(
        &fixed.group("block3_conv1").unwrap().unwrap(),
        "weight_names",
    );
    assert_eq!(
        weight_names,
        ["block3_conv1/kernel:0", "block3_conv1/bias:0"]
    );

    // Keras splits a long attribute into name0, name1, ...; the reader just sees three.
    let split = open_fixture("micro_vgg16_notop_split_names.h5")
        .root()
        .unwrap();
    assert!(split.attr("layer_names").unwrap().is_none());
    let mut attrs = split.attr_names().unwrap();
    attrs.sort();
    assert_eq!(
        attrs,
        [
            "backend",
            "keras_version",
            "layer_names0",
            "layer_names1",
            "layer_names2"
        ]
    );
    let joined: Vec<String> = (0..3)
        .flat_map(|i| strings(&split, &format!("layer_names{i}")))
        .collect();
    assert_eq!(joined, VGG16_LAYERS);
}

/// libver='latest': superblock v3, v2 object headers with times and creation order,
/// compact link-message groups, v3 attribute messages, layout message v4.
#[test]
fn latest_format() {
    let file = open_fixture("micro_vgg16_notop_latest.h5");
    let root = file.root().unwrap();
    // Link messages keep creation order, which Keras makes alphabetical.
    let mut sorted = VGG16_LAYERS.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(root.member_names().unwrap(), sorted);
    assert_eq!(strings(&root, "layer_names"), VGG16_LAYERS);
    assert_eq!(
        root.member_kind("block1_conv1").unwrap(),
        Some(ObjectKind::Group)
    );
    assert_eq!(root.member_kind("missing").unwrap(), None);
    let conv = root.group("block4_conv3").unwrap().unwrap();
    assert_eq!(
        conv.member_kind("block4_conv3").unwrap(),
        Some(ObjectKind::Group)
    );
    assert_eq!(
        dataset(&file, "block4_conv3/block4_conv3/kernel:0").shape(),
        &[3, 3, 5, 5]
    );
}

#[test]
fn top_and_vgg19_shapes() {
    let top = open_fixture("micro_vgg16_top.h5");
    let names = strings(&top.root().unwrap(), "layer_names");
    assert_eq!(names[19..], ["flatten", "fc1", "fc2", "predictions"]);
    assert_eq!(dataset(&top, "fc1/fc1/kernel:0").shape(), &[6, 7]);
    assert_eq!(dataset(&top, "fc2/fc2/kernel:0").shape(), &[7, 7]);
    assert_eq!(
        dataset(&top, "predictions/predictions/kernel:0").shape(),
        &[7, 5]
    );
    assert_eq!(
        dataset(&top, "predictions/predictions/bias:0").shape(),
        &[5]
    );

    let vgg19 = open_fixture("micro_vgg19_notop.h5");
    let names = strings(&vgg19.root().unwrap(), "layer_names");
    assert_eq!(names.iter().filter(|n| n.contains("conv")).count(), 16);
    assert_eq!(
        dataset(&vgg19, "block5_conv4/block5_conv4/kernel:0").shape(),
        &[3, 3, 6, 6]
    );
}

#[test]
fn damaged_keras_files_read_as_stored() {
    let nan = dataset(
        &open_fixture("bad_nan.h5"),
        "block3_conv2/block3_conv2/kernel:0",
    )
    .read_f32()
    .unwrap();
    assert_eq!(nan.iter().position(|v| v.is_nan()), Some(83));
    assert_eq!(nan.iter().filter(|v| v.is_nan()).count(), 1);
    let inf = dataset(
        &open_fixture("bad_inf.h5"),
        "block4_conv1/block4_conv1/bias:0",
    )
    .read_f32()
    .unwrap();
    assert_eq!(inf[2], f32::INFINITY);

    let int = dataset(
        &open_fixture("bad_int_kernel.h5"),
        "block2_conv1/block2_conv1/kernel:0",
    );
    assert_eq!(
        int.dtype(),
        &Dtype::Int {
            size: 4,
            signed: true,
            little_endian: true
        }
    );
    assert_eq!(
        err(int.read_f32()),
        "dataset /block2_conv1/block2_conv1/kernel:0 has dtype int32; expected floating point"
    );
    let raw = int.read_raw().unwrap();
    let first: Vec<i32> = raw
        .chunks_exact(4)
        .take(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(first, [-13, 26, -39, -1]);

    let missing = open_fixture("bad_missing_layer.h5").root().unwrap();
    assert!(missing.group("block4_conv2").unwrap().is_none());
    assert!(!strings(&missing, "layer_names").contains(&"block4_conv2".to_string()));

    let no_bias = open_fixture("bad_missing_bias.h5").root().unwrap();
    assert_eq!(
        strings(
            &no_bias.group("block2_conv1").unwrap().unwrap(),
            "weight_names"
        ),
        ["block2_conv1/kernel:0"]
    );
    assert!(
        no_bias
            .dataset("block2_conv1/block2_conv1/bias:0")
            .unwrap()
            .is_none()
    );

    let shape = open_fixture("bad_kernel_shape.h5");
    assert_eq!(
        dataset(&shape, "block3_conv1/block3_conv1/kernel:0").shape(),
        &[3, 3, 5, 4]
    );
    let five = open_fixture("bad_kernel_5x5.h5");
    assert_eq!(
        dataset(&five, "block1_conv1/block1_conv1/kernel:0").shape(),
        &[5, 5, 3, 2]
    );

    let dangling = open_fixture("bad_weight_names_dangling.h5").root().unwrap();
    let layer = dangling.group("block1_conv2").unwrap().unwrap();
    assert_eq!(strings(&layer, "weight_names")[0], "block1_conv2/kernel:0");
    assert!(layer.dataset("block1_conv2/kernel:0").unwrap().is_none());
    assert!(layer.dataset("block1_conv2/kernel_1:0").unwrap().is_some());
}

#[test]
fn other_network_is_readable() {
    let file = open_fixture("other_network.h5");
    let names = strings(&file.root().unwrap(), "layer_names");
    assert_eq!(
        names[..4],
        ["input_1", "conv1_pad", "conv1_conv", "conv1_bn"]
    );
    assert_eq!(
        dataset(&file, "conv1_conv/conv1_conv/kernel:0").shape(),
        &[7, 7, 3, 4]
    );
    assert_eq!(dataset(&file, "conv1_bn/conv1_bn/gamma:0").shape(), &[4]);
}

#[test]
fn chunked_datasets_are_refused_by_name() {
    let file = open_fixture("chunked.h5");
    let kernel = dataset(&file, "block2_conv1/block2_conv1/kernel:0");
    assert_eq!(kernel.shape(), &[3, 3, 2, 3]);
    assert_eq!(kernel.data_offset(), None);
    assert_eq!(
        err(kernel.read_f32()),
        "dataset /block2_conv1/block2_conv1/kernel:0: chunked storage not supported"
    );
    let gzip = dataset(&file, "block1_conv1/block1_conv1/kernel:0");
    assert!(
        err(gzip.read_raw())
            .contains("chunked storage not supported (the dataset is also filtered")
    );
    // Biases are contiguous and read fine.
    assert_eq!(
        dataset(&file, "block2_conv1/block2_conv1/bias:0")
            .read_f32()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn compact_layout() {
    let file = open_fixture("compact.h5");
    let compact = dataset(&file, "compact");
    assert_eq!(compact.shape(), &[3, 4]);
    assert_eq!(compact.data_offset(), None);
    let expected: Vec<f32> = (0..12).map(|i| i as f32 / 4.0).collect();
    assert_eq!(compact.read_f32().unwrap(), expected);
    assert_eq!(dataset(&file, "contiguous").read_f32().unwrap(), expected);
    assert!(dataset(&file, "contiguous").data_offset().is_some());
}

#[test]
fn deep_group_btree() {
    let file = open_fixture("many_members.h5");
    let group = file.root().unwrap().group("many").unwrap().unwrap();
    let names = group.member_names().unwrap();
    let expected: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
    assert_eq!(names, expected);
    for (i, name) in names.iter().enumerate() {
        let d = group.dataset(name).unwrap().unwrap();
        assert_eq!(d.shape(), &[] as &[u64]);
        assert_eq!(d.read_f32().unwrap(), [i as f32]);
    }
}

#[test]
fn element_types() {
    let file = open_fixture("dtypes.h5");
    let f16 = dataset(&file, "f16");
    assert_eq!(f16.dtype().to_string(), "float16");
    let v = f16.read_f32().unwrap();
    assert_eq!(
        v[..7],
        [
            1.0,
            -2.0,
            65504.0,
            2f32.powi(-24),
            2f32.powi(-14),
            f32::INFINITY,
            f32::NEG_INFINITY
        ]
    );
    assert!(v[7].is_nan());
    assert!(v[8] == 0.0 && v[8].is_sign_negative());
    assert_eq!(v[9], 0.333_251_95);
    let be = dataset(&file, "f16_be").read_f32().unwrap();
    assert!(be.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(
        dataset(&file, "f64_be").read_f32().unwrap(),
        [1.5, -2.25, f32::INFINITY]
    );

    let i8 = dataset(&file, "i8");
    assert_eq!(i8.dtype().to_string(), "int8");
    assert_eq!(i8.read_raw().unwrap(), [0xff, 2]);
    let u16 = dataset(&file, "u16");
    assert_eq!(u16.dtype().to_string(), "uint16");
    assert_eq!(u16.read_raw().unwrap(), [1, 0, 0xff, 0xff]);
    assert!(err(u16.read_f32()).ends_with("has dtype uint16; expected floating point"));
    assert_eq!(
        dataset(&file, "i64_be").dtype().to_string(),
        "int64 (big-endian)"
    );

    let scalar = dataset(&file, "scalar");
    assert_eq!(scalar.shape(), &[] as &[u64]);
    assert_eq!(scalar.read_f32().unwrap(), [2.5]);
    let empty = dataset(&file, "empty");
    assert_eq!(empty.shape(), &[0, 3]);
    assert_eq!(empty.read_f32().unwrap(), Vec::<f32>::new());
    assert_eq!(
        err(dataset(&file, "unwritten").read_f32()),
        "dataset /unwritten: dataset has no data written (its storage address is undefined)"
    );
    assert_eq!(
        dataset(&file, "compound").dtype(),
        &Dtype::Other("compound".into())
    );
    assert!(err(dataset(&file, "compound").read_f32()).contains("has dtype compound"));
    assert_eq!(
        dataset(&file, "vlen_seq").dtype(),
        &Dtype::Other("vlen sequence".into())
    );
    assert_eq!(dataset(&file, "strings").dtype().to_string(), "string[2]");
}

#[test]
fn attribute_types() {
    let root = open_fixture("attributes.h5").root().unwrap();
    let utf8 = root.attr("vlen_utf8").unwrap().unwrap();
    assert_eq!(utf8.dtype(), &Dtype::VarString { utf8: true });
    assert_eq!(utf8.read_strings().unwrap(), ["caf\u{e9}", "", "\u{fc}ber"]);
    assert!(err(utf8.read_string()).contains("expected one string, found 3"));
    assert_eq!(
        root.attr("vlen_scalar")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "tensorflow"
    );
    let two_d = root.attr("fixed_2d").unwrap().unwrap();
    assert_eq!(two_d.shape(), &[2, 2]);
    assert_eq!(two_d.read_strings().unwrap(), ["a", "bb", "ccc", "d"]);
    assert_eq!(
        root.attr("nullterm")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "ab"
    );
    assert_eq!(
        root.attr("spacepad")
            .unwrap()
            .unwrap()
            .read_string()
            .unwrap(),
        "ab cd"
    );
    assert!(
        err(root.attr("bad_utf8").unwrap().unwrap().read_strings())
            .starts_with("attribute 'bad_utf8' of /: string")
    );
    assert_eq!(
        root.attr("empty_f64")
            .unwrap()
            .unwrap()
            .read_strings()
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        err(root.attr("ints").unwrap().unwrap().read_strings()),
        "attribute 'ints' of /: has dtype int32; expected strings"
    );
    let long = format!("long_name_{}", "x".repeat(40));
    assert_eq!(
        root.attr(&long).unwrap().unwrap().read_string().unwrap(),
        "v"
    );
    assert_eq!(root.attr_names().unwrap().len(), 9);
}

/// A user block moves the superblock to offset 512; 4-byte addresses change every field width.
#[test]
fn userblock_and_small_offsets() {
    for name in ["userblock.h5", "small_offsets.h5"] {
        let file = open_fixture(name);
        let g = file.root().unwrap().group("g").unwrap().unwrap();
        assert_eq!(
            g.dataset("d").unwrap().unwrap().read_f32().unwrap(),
            [0.0, 1.0, 2.0, 3.0, 4.0],
            "{name}"
        );
        assert_eq!(strings(&g, "names"), ["a", "b"], "{name}");
    }
    let d = dataset(&open_fixture("userblock.h5"), "g/d");
    assert!(d.data_offset().unwrap() >= 512);
}

#[test]
fn links_and_shared_types() {
    let root = open_fixture("links.h5").root().unwrap();
    let mut names = root.member_names().unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "external",
            "hard",
            "shared_type",
            "soft",
            "target",
            "uses_shared_type"
        ]
    );
    assert_eq!(root.member_kind("soft").unwrap(), Some(ObjectKind::Other));
    assert_eq!(
        root.member_kind("external").unwrap(),
        Some(ObjectKind::Other)
    );
    assert_eq!(root.member_kind("hard").unwrap(), Some(ObjectKind::Dataset));
    assert_eq!(
        root.member_kind("shared_type").unwrap(),
        Some(ObjectKind::Other)
    );
    assert_eq!(
        root.dataset("hard").unwrap().unwrap().read_f32().unwrap(),
        [0.0, 1.0, 2.0]
    );
    assert_eq!(
        err(root.dataset("soft")),
        "unsupported HDF5 feature: soft link /soft -> /target"
    );
    assert_eq!(
        err(root.dataset("external")),
        "unsupported HDF5 feature: external link /external"
    );
    assert_eq!(
        err(root.dataset("uses_shared_type")),
        "dataset /uses_shared_type: unsupported HDF5 feature: shared (committed) datatype"
    );
    assert_eq!(
        err(root.group("target")),
        "/target is a dataset, not a group"
    );
    assert_eq!(
        err(root.dataset("target/x")),
        "/target is a dataset, not a group"
    );
    assert_eq!(
        err(root.group("shared_type")),
        "/shared_type is not a group"
    );
}

#[test]
fn dense_storage_is_reported() {
    let root = open_fixture("dense.h5").root().unwrap();
    let links = root.group("many_links").unwrap().unwrap();
    assert!(
        err(links.member_names())
            .starts_with("group /many_links: unsupported HDF5 feature: dense link storage")
    );
    let attrs = root.group("many_attrs").unwrap().unwrap();
    assert_eq!(
        err(attrs.attr_names()),
        "unsupported HDF5 feature: dense attribute storage (attributes of /many_attrs)"
    );
}
