//! Reference pooling and its gradients: windowed max pooling and global average/max pooling,
//! NHWC, over f32 or f64.
//!
//! A max pool's gradient goes to the window's maximum only. The backward pass finds that
//! maximum again in the input instead of storing indices: the same scan (row-major, the first
//! of equal maxima, NaN wins through [`max_nan`]) picks the same element, which is also where
//! TensorFlow and PyTorch route the gradient.

use rayon::prelude::*;

use super::by_dtype;
use crate::error::Result;
use crate::tensor::real::{beats, max_nan};
use crate::tensor::{GlobalPool, Pool2dSpec, PoolGeometry, Real, Tensor, check_grad_shape};

/// out[n, oy, ox, c] = max over the window of x; padded positions do not take part.
pub fn max_pool2d_reference(x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    by_dtype!(x, max_pool2d::<T>(x, spec))
}

/// The input positions (flat pixel index within the image) of output pixel `(oy, ox)`'s window,
/// in row-major order; padded positions left out.
fn window(g: &PoolGeometry, oy: usize, ox: usize) -> impl Iterator<Item = usize> + '_ {
    (0..g.size[0]).flat_map(move |wy| {
        let iy = (oy * g.stride[0] + wy)
            .checked_sub(g.pad_top)
            .filter(|&iy| iy < g.h);
        (0..g.size[1]).filter_map(move |wx| {
            let ix = (ox * g.stride[1] + wx)
                .checked_sub(g.pad_left)
                .filter(|&ix| ix < g.w)?;
            Some(iy? * g.w + ix)
        })
    })
}

fn max_pool2d<T: Real>(x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    let g = spec.geometry(x.shape())?;
    let mut out = Tensor::zeros_of(g.output_shape(), T::DTYPE)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let xd = x.values::<T>()?;
    let plane = g.h * g.w * g.c;
    out.values_mut::<T>()?
        .par_chunks_mut(g.ow * g.c)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            let img = &xd[n * plane..(n + 1) * plane];
            for (ox, px) in out_row.chunks_exact_mut(g.c).enumerate() {
                px.fill(T::from_f64(f64::NEG_INFINITY));
                for at in window(&g, oy, ox) {
                    for (o, &v) in px.iter_mut().zip(&img[at * g.c..][..g.c]) {
                        *o = max_nan(*o, v);
                    }
                }
            }
        });
    Ok(out)
}

/// The gradient of [`max_pool2d_reference`] with respect to `x` (see the module comment).
pub fn max_pool2d_backward_reference(x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    by_dtype!(x, max_pool2d_backward::<T>(x, dy, spec))
}

fn max_pool2d_backward<T: Real>(x: &Tensor, dy: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    let g = spec.geometry(x.shape())?;
    check_grad_shape("max_pool2d", dy.shape(), &g.output_shape())?;
    let mut dx = Tensor::zeros_of(x.shape().clone(), T::DTYPE)?;
    if dx.numel() == 0 || dy.numel() == 0 {
        return Ok(dx);
    }
    let (xd, dyv) = (x.values::<T>()?, dy.values::<T>()?);
    let plane = g.h * g.w * g.c;
    // One task per image: windows may overlap, so an input position can collect several
    // outputs' gradients, always added in output order.
    dx.values_mut::<T>()?
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(n, dimg)| {
            let img = &xd[n * plane..(n + 1) * plane];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = &dyv[((n * g.oh + oy) * g.ow + ox) * g.c..][..g.c];
                    for (c, &grad) in d.iter().enumerate() {
                        let mut best: Option<(usize, T)> = None;
                        for at in window(&g, oy, ox) {
                            let v = img[at * g.c + c];
                            if best.is_none_or(|(_, b)| beats(v, b)) {
                                best = Some((at, v));
                            }
                        }
                        if let Some((at, _)) = best {
                            dimg[at * g.c + c] += grad;
                        }
                    }
                }
            }
        });
    Ok(dx)
}

/// `(N, H, W, C)` -> `(N, C)`: the mean (summed in f64, then rounded once) or the maximum over
/// every spatial position.
pub fn global_pool_reference(x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
    by_dtype!(x, global_pool::<T>(x, kind))
}

fn global_pool<T: Real>(x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
    let [n, h, w, c] = x.shape().nhwc("global pool input")?;
    let mut out = Tensor::zeros_of([n, c], T::DTYPE)?;
    let xd = x.values::<T>()?;
    let plane = h * w * c;
    for (b, o) in out
        .values_mut::<T>()?
        .chunks_exact_mut(c.max(1))
        .enumerate()
        .take(n)
    {
        let img = &xd[b * plane..(b + 1) * plane];
        match kind {
            GlobalPool::Avg => {
                let mut sum = vec![0f64; c];
                for px in img.chunks_exact(c) {
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v.to_f64();
                    }
                }
                for (o, s) in o.iter_mut().zip(&sum) {
                    *o = T::from_f64(s / (h * w) as f64);
                }
            }
            GlobalPool::Max => {
                o.fill(T::from_f64(f64::NEG_INFINITY));
                for px in img.chunks_exact(c) {
                    for (m, &v) in o.iter_mut().zip(px) {
                        *m = max_nan(*m, v);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The gradient of [`global_pool_reference`]: the mean spreads `dy / (H W)` over every
/// position; the maximum sends `dy` to the first position holding it.
pub fn global_pool_backward_reference(x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
    by_dtype!(x, global_pool_backward::<T>(x, dy, kind))
}

fn global_pool_backward<T: Real>(x: &Tensor, dy: &Tensor, kind: GlobalPool) -> Result<Tensor> {
    let [n, h, w, c] = x.shape().nhwc("global pool input")?;
    check_grad_shape("global_pool", dy.shape(), &[n, c].into())?;
    let mut dx = Tensor::zeros_of(x.shape().clone(), T::DTYPE)?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    let (xd, dyv) = (x.values::<T>()?, dy.values::<T>()?);
    let plane = h * w * c;
    let scale = T::from_f64(1.0 / (h * w) as f64);
    for (b, dimg) in dx.values_mut::<T>()?.chunks_exact_mut(plane).enumerate() {
        let d = &dyv[b * c..(b + 1) * c];
        match kind {
            GlobalPool::Avg => {
                for px in dimg.chunks_exact_mut(c) {
                    for (o, &g) in px.iter_mut().zip(d) {
                        *o = g * scale;
                    }
                }
            }
            GlobalPool::Max => {
                let img = &xd[b * plane..(b + 1) * plane];
                for (ch, &grad) in d.iter().enumerate() {
                    let mut best = 0;
                    for p in 1..h * w {
                        if beats(img[p * c + ch], img[best * c + ch]) {
                            best = p;
                        }
                    }
                    dimg[best * c + ch] = grad;
                }
            }
        }
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::Padding;

    #[test]
    fn vgg_pool_floors_odd_sizes_and_takes_the_max() {
        // 1x5x3x1: rows 0-1 and 2-3 pooled, row 4 dropped; column 2 dropped.
        let x = Tensor::from_vec(
            [1, 5, 3, 1],
            &[
                1., 2., 99., 3., 4., 99., 8., 7., 99., 6., 5., 99., 99., 99., 99.,
            ],
        )
        .unwrap();
        let y = max_pool2d_reference(&x, &Pool2dSpec::vgg()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 1, 1]);
        assert_eq!(y.data(), &[4., 8.]);
        // The gradient goes to the two maxima only; the dropped row and column get none.
        let dy = Tensor::from_vec([1, 2, 1, 1], &[10., 20.]).unwrap();
        let dx = max_pool2d_backward_reference(&x, &dy, &Pool2dSpec::vgg()).unwrap();
        let mut want = [0.0f32; 15];
        want[4] = 10.0;
        want[6] = 20.0;
        assert_eq!(dx.data(), &want);
    }

    #[test]
    fn ties_and_nan_route_to_the_first_winner() {
        let x = Tensor::from_vec([1, 2, 2, 2], &[3., 1., 3., f32::NAN, 2., 5., 3., 5.]).unwrap();
        let dy = Tensor::from_vec([1, 1, 1, 2], &[1., 2.]).unwrap();
        let dx = max_pool2d_backward_reference(&x, &dy, &Pool2dSpec::vgg()).unwrap();
        assert_eq!(dx.data(), &[1., 0., 0., 2., 0., 0., 0., 0.]);
        let g = Tensor::from_vec([1, 2], &[1., 2.]).unwrap();
        let dx = global_pool_backward_reference(&x, &g, GlobalPool::Max).unwrap();
        assert_eq!(dx.data(), &[1., 0., 0., 2., 0., 0., 0., 0.]);
    }

    #[test]
    fn pool_matches_a_naive_window_max_on_odd_shapes() {
        let mut rng = Rng::new(5);
        for (shape, size, stride, padding) in [
            ([2, 17, 13, 3], [2, 2], [2, 2], Padding::Valid),
            ([1, 7, 9, 5], [3, 3], [2, 2], Padding::Same),
            ([1, 1, 1, 1], [1, 1], [1, 1], Padding::Valid),
            ([1, 63, 3, 2], [3, 2], [1, 1], Padding::Valid),
        ] {
            let numel = shape.iter().product();
            let x = Tensor::from_vec(shape, &rng.uniform_vec(numel, -5.0, 5.0)).unwrap();
            let spec = Pool2dSpec {
                size,
                stride,
                padding,
            };
            let g = spec.geometry(x.shape()).unwrap();
            let y = max_pool2d_reference(&x, &spec).unwrap();
            for n in 0..g.n {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        for c in 0..g.c {
                            let mut m = f32::NEG_INFINITY;
                            for iy in 0..g.h {
                                for ix in 0..g.w {
                                    let in_y = (oy * stride[0]) as isize - g.pad_top as isize;
                                    let in_x = (ox * stride[1]) as isize - g.pad_left as isize;
                                    let (dy, dx) = (iy as isize - in_y, ix as isize - in_x);
                                    if (0..size[0] as isize).contains(&dy)
                                        && (0..size[1] as isize).contains(&dx)
                                    {
                                        m = m.max(x.data()[((n * g.h + iy) * g.w + ix) * g.c + c]);
                                    }
                                }
                            }
                            assert_eq!(y.data()[((n * g.oh + oy) * g.ow + ox) * g.c + c], m);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn global_pools() {
        let x = Tensor::from_vec([1, 2, 2, 2], &[1., -1., 2., -2., 3., -3., 4., -4.]).unwrap();
        assert_eq!(
            global_pool_reference(&x, GlobalPool::Avg).unwrap().data(),
            &[2.5, -2.5]
        );
        assert_eq!(
            global_pool_reference(&x, GlobalPool::Max).unwrap().data(),
            &[4., -1.]
        );
        let mut nan = x.clone();
        nan.data_mut()[2] = f32::NAN;
        assert!(global_pool_reference(&nan, GlobalPool::Max).unwrap().data()[0].is_nan());
        assert!(
            max_pool2d_reference(&nan, &Pool2dSpec::vgg())
                .unwrap()
                .data()[0]
                .is_nan()
        );
    }
}
