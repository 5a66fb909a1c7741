use keel::cpu::CpuReference;
use keel::nn::{Arch, Vgg, VggConfig};
use keel::rng::Rng;
use keel::tensor::Tensor;
fn main() {
    let model = Vgg::random(VggConfig::notop(Arch::Vgg16), 7).unwrap();
    let x = Tensor::from_vec(
        [1, 224, 224, 3],
        &Rng::new(1).uniform_vec(224 * 224 * 3, -100.0, 100.0),
    )
    .unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let y = model.forward(&CpuReference, &x).unwrap();
        println!("{:?} {:.3}s", y.dims(), t.elapsed().as_secs_f64());
    }
}
