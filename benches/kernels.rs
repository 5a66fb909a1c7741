//! Criterion benchmarks of the fast CPU kernels. Run: `cargo bench --bench kernels`.
//!
//! - `gemm_vgg16/*`: the packed GEMM (best ISA) on VGG16's 9 distinct im2col shapes at
//!   224x224 (M = output pixels, N = Cout, K = 9 * Cin; table in docs/cpu-kernels.md), and
//!   1024^3.
//! - `conv_fast/*`: every VGG16 conv layer at 224x224, batch 1, with keel's per-layer choice
//!   of algorithm (direct, Winograd F(4x4) or implicit GEMM), prepared weights cached as in a
//!   model.
//! - `conv_backward/*`: the same layers' input gradient (a forward convolution of the output
//!   gradient with the flipped kernel) and kernel gradient (a GEMM over the transposed
//!   im2col), the ReLU's mask included, as fine-tuning runs them.
//! - `vgg16_base_fast`: the whole conv base (compare with `cargo bench --bench reference`).
//!
//! Throughput is in FLOPs of the direct algorithm, so Winograd layers can exceed the FMA peak.
//! Inputs and weights are seeded random, never zeros.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel::cpu::Cpu;
use keel::cpu::gemm::{Epilogue, gemm};
use keel::nn::{Arch, LayerKind, Vgg, VggConfig};
use keel::rng::Rng;
use keel::tensor::{Backend, Conv2dSpec, LayerParams, Tensor, Wanted};

/// (M, N, K) of VGG16's convolutions as GEMMs at 224x224, one per distinct shape.
pub const VGG16_GEMM_SHAPES: [(&str, usize, usize, usize); 9] = [
    ("block1_conv1", 50176, 64, 27),
    ("block1_conv2", 50176, 64, 576),
    ("block2_conv1", 12544, 128, 576),
    ("block2_conv2", 12544, 128, 1152),
    ("block3_conv1", 3136, 256, 1152),
    ("block3_conv2", 3136, 256, 2304),
    ("block4_conv1", 784, 512, 2304),
    ("block4_conv2", 784, 512, 4608),
    ("block5_conv1", 196, 512, 4608),
];

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, &Rng::new(seed).uniform_vec(n, -1.0, 1.0)).unwrap()
}

fn gemm_shapes(c: &mut Criterion) {
    keel::cpu::alloc::keep_freed_buffers();
    let mut group = c.benchmark_group("gemm_vgg16");
    group.sample_size(10);
    let shapes = VGG16_GEMM_SHAPES
        .iter()
        .copied()
        .chain([("square1024", 1024, 1024, 1024)]);
    for (name, m, n, k) in shapes {
        let mut rng = Rng::new(1);
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b = rng.uniform_vec(k * n, -1.0, 1.0);
        let mut out = vec![0f32; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(format!("{name}_{m}x{n}x{k}"), |bench| {
            bench.iter(|| gemm(m, n, k, &a, k, &b, n, &mut out, n, Epilogue::NONE))
        });
    }
    group.finish();
}

/// Every VGG16 convolution at 224x224, batch 1: its spec, a seeded input and seeded weights.
fn vgg16_convs() -> Vec<(keel::nn::LayerSpec, Tensor, LayerParams)> {
    let mut hw = 224;
    let mut out = Vec::new();
    for spec in VggConfig::notop(Arch::Vgg16).layers() {
        match spec.kind {
            LayerKind::Conv2d { cin, cout } => {
                let x = random(&[1, hw, hw, cin], 1);
                let w = LayerParams::new(random(&[3, 3, cin, cout], 2), Some(random(&[cout], 3)));
                out.push((spec, x, w));
            }
            LayerKind::MaxPool => hw /= 2,
            _ => {}
        }
    }
    out
}

fn conv_layers(c: &mut Criterion) {
    keel::cpu::alloc::keep_freed_buffers();
    let mut group = c.benchmark_group("conv_fast");
    group.sample_size(10);
    let backend = Cpu::new();
    let conv = Conv2dSpec::same_relu();
    for (spec, x, w) in vgg16_convs() {
        group.throughput(Throughput::Elements(spec.flops()));
        group.bench_function(&spec.name, |bench| {
            bench.iter(|| backend.conv2d(&x, &w, &conv).unwrap())
        });
    }
    group.finish();
}

fn conv_backward(c: &mut Criterion) {
    keel::cpu::alloc::keep_freed_buffers();
    let mut group = c.benchmark_group("conv_backward");
    group.sample_size(10);
    let backend = Cpu::new();
    let conv = Conv2dSpec::same_relu();
    for (spec, x, w) in vgg16_convs() {
        let y = backend.conv2d(&x, &w, &conv).unwrap();
        let dy = random(y.dims(), 4);
        group.throughput(Throughput::Elements(spec.flops()));
        for (pass, wanted) in [
            ("input_grad", Wanted::INPUT),
            ("kernel_grad", Wanted::PARAMS),
        ] {
            if pass == "input_grad" && x.dims()[3] < 8 {
                continue; // block1_conv1: fine-tuning never needs the image's gradient
            }
            group.bench_function(format!("{}_{pass}", spec.name), |bench| {
                bench.iter(|| {
                    backend
                        .conv2d_backward(&x, &y, &dy, &w, &conv, wanted)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn vgg16_base(c: &mut Criterion) {
    keel::cpu::alloc::keep_freed_buffers();
    let mut group = c.benchmark_group("vgg16_base_fast");
    group.sample_size(10);
    let model = Vgg::random(VggConfig::notop(Arch::Vgg16), 7).unwrap();
    let backend = Cpu::new();
    for batch in [1, 8] {
        let x = random(&[batch, 224, 224, 3], 8);
        group.bench_function(format!("224x224_batch{batch}"), |b| {
            b.iter(|| model.forward(&backend, &x).unwrap())
        });
    }
    group.finish();
}

// No plots: criterion draws them with plotters, whose text needs a font that keel's own
// plotters features (ab_glyph, no system fonts) leave unregistered; its HTML report would panic.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = gemm_shapes, conv_layers, conv_backward, vgg16_base
}
criterion_main!(benches);
