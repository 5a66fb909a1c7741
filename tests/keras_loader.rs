//! The Keras loader gives the same weights, in the same layer order, from every encoding of one
//! model: float16/float64/big-endian storage, split `layer_names`, HDF5 "latest" format,
//! fixed-length strings, and Keras 3 layouts with and without layer names.

mod common;

use keel::nn::{Arch, WeightSet};

fn load(name: &str) -> WeightSet {
    keel::io::load_weights(&common::test_data(&format!("h5/{name}")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Same layers in the same order, same shapes, bit-identical values.
fn assert_same(a: &WeightSet, b: &WeightSet) {
    let names = |w: &WeightSet| {
        w.layers()
            .iter()
            .map(|l| l.layer.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(a),
        names(b),
        "{} vs {}",
        a.source.display(),
        b.source.display()
    );
    for (la, lb) in a.layers().iter().zip(b.layers()) {
        assert_eq!(la.tensors.len(), lb.tensors.len(), "{}", la.layer);
        for (ta, tb) in la.tensors.iter().zip(&lb.tensors) {
            assert_eq!(ta.tensor.dims(), tb.tensor.dims(), "{}", la.layer);
            let same = ta
                .tensor
                .data()
                .iter()
                .zip(tb.tensor.data())
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{} {}: values differ from {}",
                b.source.display(),
                tb.name,
                a.source.display()
            );
        }
    }
}

#[test]
fn every_encoding_of_the_micro_vgg16_base_loads_identically() {
    let reference = load("micro_vgg16_notop.h5");
    let id = reference.identity().clone();
    assert_eq!(
        (id.arch, id.include_top, id.widths),
        (Arch::Vgg16, false, [2, 3, 4, 5, 6])
    );
    // Model order, not HDF5's alphabetical order.
    assert_eq!(reference.layers()[0].layer, "block1_conv1");
    assert_eq!(reference.layers()[12].layer, "block5_conv3");
    assert!(reference.layers().iter().all(|l| l.tensors.len() == 2));
    for variant in [
        "micro_vgg16_notop_f16.h5",
        "micro_vgg16_notop_f64.h5",
        "micro_vgg16_notop_bigendian.h5",
        "micro_vgg16_notop_split_names.h5",
        "micro_vgg16_notop_latest.h5",
        "micro_vgg16_notop_fixedstr.h5",
    ] {
        let w = load(variant);
        assert_same(&reference, &w);
        assert_eq!(w.identity().clone(), id, "{variant}");
    }
}

#[test]
fn keras3_files_map_class_counters_to_layers() {
    let reference = load("micro_vgg16_top.h5");
    for variant in [
        "micro_vgg16_top_k3.weights.h5",
        "micro_vgg16_top_k3_noname.weights.h5",
    ] {
        let w = load(variant);
        assert!(w.format.contains("Keras 3"), "{}", w.format);
        assert_same(&reference, &w);
    }
}

#[test]
fn identify_reads_vgg19_and_the_top() {
    let id = load("micro_vgg19_notop.h5").identity().clone();
    assert_eq!((id.arch, id.include_top), (Arch::Vgg19, false));
    let id = load("micro_vgg16_top.h5").identity().clone();
    assert_eq!(
        (id.arch, id.include_top, id.fc_units, id.classes),
        (Arch::Vgg16, true, 7, 5)
    );
    let base = load("micro_vgg16_top.h5").conv_base();
    assert!(!base.identity().clone().include_top);
    assert_eq!(base.layers().len(), 13);
}

#[test]
fn the_real_keras1_download_file_loads_in_model_order() {
    let Some(shared) = common::shared("weights/vgg16_imagenet_notop.h5") else {
        return;
    };
    let w = keel::io::load_weights(&shared.join("weights/vgg16_imagenet_notop.h5")).unwrap();
    assert_eq!(w.format, "Keras 1 download layout .h5");
    assert_eq!(w.layers().len(), 13);
    assert_eq!(w.layers()[0].tensors[0].name, "block1_conv1_W_1:0");
    assert_eq!(w.identity().clone().widths, keel::nn::IMAGENET_WIDTHS);
}
