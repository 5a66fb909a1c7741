//! Criterion benchmarks of the reference CPU path: VGG16's conv layers one by one at 224x224,
//! and the whole conv base. Run: `cargo bench --bench reference`.
//!
//! Inputs and weights are seeded random (never zeros). These numbers are the baseline the fast
//! kernels are measured against.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel::cpu::CpuReference;
use keel::nn::{Arch, LayerKind, Vgg, VggConfig};
use keel::rng::Rng;
use keel::tensor::{Backend, Conv2dSpec, LayerParams, Tensor};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, &Rng::new(seed).uniform_vec(n, -1.0, 1.0)).unwrap()
}

fn conv_layers(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3x3_reference");
    group.sample_size(10);
    let config = VggConfig::notop(Arch::Vgg16);
    let mut hw = 224;
    for spec in config.layers() {
        match spec.kind {
            LayerKind::Conv2d { cin, cout } => {
                let x = random(&[1, hw, hw, cin], 1);
                let w = LayerParams::new(random(&[3, 3, cin, cout], 2), Some(random(&[cout], 3)));
                group.throughput(Throughput::Elements(spec.flops()));
                group.bench_function(&spec.name, |bench| {
                    bench.iter(|| {
                        CpuReference
                            .conv2d(&x, &w, &Conv2dSpec::same_relu())
                            .unwrap()
                    })
                });
            }
            LayerKind::MaxPool => hw /= 2,
            _ => {}
        }
    }
    group.finish();
}

fn vgg16_base(c: &mut Criterion) {
    let mut group = c.benchmark_group("vgg16_base_reference");
    group.sample_size(10);
    let model = Vgg::random(VggConfig::notop(Arch::Vgg16), 7).unwrap();
    let x = random(&[1, 224, 224, 3], 8);
    group.bench_function("224x224_batch1", |b| {
        b.iter(|| model.forward(&CpuReference, &x).unwrap())
    });
    group.finish();
}

// No plots: criterion draws them with plotters, whose text needs a font that keel's own
// plotters features (ab_glyph, no system fonts) leave unregistered; its HTML report would panic.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = conv_layers, vgg16_base
}
criterion_main!(benches);
