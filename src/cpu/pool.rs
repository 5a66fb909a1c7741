//! Reference pooling: windowed max pooling and global average/max pooling, NHWC.

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{GlobalPool, Pool2dSpec, Tensor};

/// The larger of two values, except that NaN wins: a NaN in the input must reach the output
/// (`f32::max` would silently drop it).
#[inline(always)]
pub(crate) fn max_nan(a: f32, b: f32) -> f32 {
    if !a.is_nan() && (b > a || b.is_nan()) {
        b
    } else {
        a
    }
}

/// out[n, oy, ox, c] = max over the window of x; padded positions do not take part.
pub fn max_pool2d_reference(x: &Tensor, spec: &Pool2dSpec) -> Result<Tensor> {
    let g = spec.geometry(x.shape())?;
    let mut out = Tensor::zeros(g.output_shape())?;
    if out.numel() == 0 {
        return Ok(out);
    }
    let xd = x.data();
    out.data_mut()
        .par_chunks_mut(g.ow * g.c)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            for (ox, px) in out_row.chunks_exact_mut(g.c).enumerate() {
                px.fill(f32::NEG_INFINITY);
                for wy in 0..g.size[0] {
                    let Some(iy) = (oy * g.stride[0] + wy).checked_sub(g.pad_top) else {
                        continue;
                    };
                    if iy >= g.h {
                        continue;
                    }
                    for wx in 0..g.size[1] {
                        let Some(ix) = (ox * g.stride[1] + wx).checked_sub(g.pad_left) else {
                            continue;
                        };
                        if ix >= g.w {
                            continue;
                        }
                        let src = &xd[((n * g.h + iy) * g.w + ix) * g.c..][..g.c];
                        for (o, &v) in px.iter_mut().zip(src) {
                            *o = max_nan(*o, v);
                        }
                    }
                }
            }
        });
    Ok(out)
}

/// `(N, H, W, C)` -> `(N, C)`: the mean (summed in f64, then rounded once) or the maximum over
/// every spatial position.
pub fn global_pool_reference(x: &Tensor, kind: GlobalPool) -> Result<Tensor> {
    let [n, h, w, c] = x.shape().nhwc("global pool input")?;
    let mut out = Tensor::zeros([n, c])?;
    let plane = h * w * c;
    for (b, o) in out
        .data_mut()
        .chunks_exact_mut(c.max(1))
        .enumerate()
        .take(n)
    {
        let img = &x.data()[b * plane..(b + 1) * plane];
        match kind {
            GlobalPool::Avg => {
                let mut sum = vec![0f64; c];
                for px in img.chunks_exact(c) {
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v as f64;
                    }
                }
                for (o, s) in o.iter_mut().zip(&sum) {
                    *o = (s / (h * w) as f64) as f32;
                }
            }
            GlobalPool::Max => {
                o.fill(f32::NEG_INFINITY);
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
