//! The head's operations, each a forward function and its hand-written backward.
//!
//! Everything is batch-major and flat: a batch of `b` rows of `n` values is a `&[T]` of
//! `b * n`. Every output element is summed by one thread in a fixed order, so results do not
//! depend on the thread count and training is reproducible bit for bit.

use rayon::prelude::*;

use super::real::Real;
use crate::rng::Rng;

/// Rows per rayon task: enough work per task that scheduling does not dominate tiny heads.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// `y[b, o] = sum_i x[b, i] * w[i, o] + bias[o]`, with `w` in Keras's `(in, out)` layout.
pub fn dense_forward<T: Real>(x: &[T], w: &[T], bias: &[T], n_in: usize, n_out: usize) -> Vec<T> {
    let batch = x.len() / n_in;
    let mut y = vec![T::ZERO; batch * n_out];
    let per = rows_per_task(n_in * n_out / 16);
    y.par_chunks_mut(n_out * per)
        .zip(x.par_chunks(n_in * per))
        .for_each(|(ys, xs)| {
            for (yr, xr) in ys.chunks_mut(n_out).zip(xs.chunks(n_in)) {
                yr.copy_from_slice(bias);
                // Row-times-matrix as a sum of scaled rows of `w`: the inner loop is a
                // contiguous axpy the compiler vectorizes.
                for (&xi, wr) in xr.iter().zip(w.chunks(n_out)) {
                    for (yo, &wo) in yr.iter_mut().zip(wr) {
                        *yo += xi * wo;
                    }
                }
            }
        });
    y
}

/// Gradients of [`dense_forward`]: `dx = dy w^T`, `dw = x^T dy`, `db = sum_b dy`.
pub fn dense_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    n_in: usize,
    n_out: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let batch = x.len() / n_in;
    let mut dx = vec![T::ZERO; batch * n_in];
    let per = rows_per_task(n_in * n_out / 16);
    dx.par_chunks_mut(n_in * per)
        .zip(dy.par_chunks(n_out * per))
        .for_each(|(dxs, dys)| {
            for (dxr, dyr) in dxs.chunks_mut(n_in).zip(dys.chunks(n_out)) {
                for (d, wr) in dxr.iter_mut().zip(w.chunks(n_out)) {
                    *d = dot(dyr, wr);
                }
            }
        });
    // Row i of dw sums over the batch in batch order, whatever thread computes it.
    let mut dw = vec![T::ZERO; n_in * n_out];
    let per = rows_per_task(batch * n_out / 16);
    dw.par_chunks_mut(n_out * per)
        .enumerate()
        .for_each(|(task, rows)| {
            for (r, dwr) in rows.chunks_mut(n_out).enumerate() {
                let i = task * per + r;
                for b in 0..batch {
                    let xi = x[b * n_in + i];
                    for (d, &g) in dwr.iter_mut().zip(&dy[b * n_out..(b + 1) * n_out]) {
                        *d += xi * g;
                    }
                }
            }
        });
    let mut db = vec![T::ZERO; n_out];
    for dyr in dy.chunks(n_out) {
        for (d, &g) in db.iter_mut().zip(dyr) {
            *d += g;
        }
    }
    (dx, dw, db)
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::ZERO, |s, (&p, &q)| s + p * q)
}

/// `max(x, 0)`; NaN stays NaN so a diverged run shows up instead of being masked.
pub fn relu_forward<T: Real>(x: &[T]) -> Vec<T> {
    x.iter()
        .map(|&v| if v < T::ZERO { T::ZERO } else { v })
        .collect()
}

/// The gradient passes where the input was positive.
pub fn relu_backward<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| if v > T::ZERO { g } else { T::ZERO })
        .collect()
}

/// An inverted-dropout mask, as Keras's `Dropout`: each value is kept with probability
/// `1 - rate` and scaled by `1 / (1 - rate)`, so inference needs no rescaling.
pub fn dropout_mask<T: Real>(n: usize, rate: f64, rng: &mut Rng) -> Vec<T> {
    let keep = T::from_f64(1.0 / (1.0 - rate));
    (0..n)
        .map(|_| {
            if (rng.next_f32() as f64) < rate {
                T::ZERO
            } else {
                keep
            }
        })
        .collect()
}

/// Element-wise product: dropout's forward and, with the same mask, its backward.
pub fn mul_mask<T: Real>(x: &[T], mask: &[T]) -> Vec<T> {
    x.iter().zip(mask).map(|(&v, &m)| v * m).collect()
}

/// Mean over H and W of NHWC rows of `hw * c` values: `(b, hw, c) -> (b, c)`.
pub fn global_avg_pool_forward<T: Real>(x: &[T], hw: usize, c: usize) -> Vec<T> {
    let scale = T::from_f64(1.0 / hw as f64);
    x.chunks(hw * c)
        .flat_map(|row| {
            let mut acc = vec![T::ZERO; c];
            for px in row.chunks(c) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += v;
                }
            }
            acc.into_iter().map(move |a| a * scale)
        })
        .collect()
}

/// Each input position receives `1 / (H W)` of its channel's gradient.
pub fn global_avg_pool_backward<T: Real>(dy: &[T], hw: usize, c: usize) -> Vec<T> {
    let scale = T::from_f64(1.0 / hw as f64);
    dy.chunks(c)
        .flat_map(|g| (0..hw).flat_map(move |_| g.iter().map(move |&v| v * scale)))
        .collect()
}

/// Max over H and W, with the flat index of the winner of each channel (the first one on ties,
/// as the backward pass routes the whole gradient to one position).
pub fn global_max_pool_forward<T: Real>(x: &[T], hw: usize, c: usize) -> (Vec<T>, Vec<usize>) {
    let mut y = Vec::with_capacity(x.len() / hw.max(1));
    let mut arg = Vec::with_capacity(y.capacity());
    for (b, row) in x.chunks(hw * c).enumerate() {
        for ch in 0..c {
            let mut best = ch;
            for p in 1..hw {
                let i = p * c + ch;
                if row[i] > row[best] || row[i].is_nan() {
                    best = i;
                    if row[i].is_nan() {
                        break; // NaN wins, so it propagates
                    }
                }
            }
            y.push(row[best]);
            arg.push(b * hw * c + best);
        }
    }
    (y, arg)
}

/// The gradient goes to each channel's maximum only.
pub fn global_max_pool_backward<T: Real>(dy: &[T], arg: &[usize], input_len: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; input_len];
    for (&g, &i) in dy.iter().zip(arg) {
        dx[i] += g;
    }
    dx
}

/// Row-wise softmax, shifted by the row maximum so `exp` cannot overflow.
pub fn softmax<T: Real>(logits: &[T], classes: usize) -> Vec<T> {
    logits
        .chunks(classes)
        .flat_map(|row| {
            let max = row
                .iter()
                .copied()
                .fold(row[0], |m, v| if v > m { v } else { m });
            let e: Vec<T> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum = e.iter().fold(T::ZERO, |s, &v| s + v);
            e.into_iter().map(move |v| v / sum)
        })
        .collect()
}

/// Mean softmax cross-entropy of integer `labels`, its gradient with respect to the logits
/// (`(p - onehot) / batch`), and the probabilities. The loss uses log-sum-exp, not
/// `ln(p)`, so a confident wrong answer gives a large finite loss rather than infinity.
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    labels: &[usize],
    classes: usize,
) -> (T, Vec<T>, Vec<T>) {
    let batch = labels.len();
    let probs = softmax(logits, classes);
    let inv_b = T::from_f64(1.0 / batch as f64);
    let mut loss = T::ZERO;
    let mut grad = probs.clone();
    for (b, (&label, row)) in labels.iter().zip(logits.chunks(classes)).enumerate() {
        let max = row
            .iter()
            .copied()
            .fold(row[0], |m, v| if v > m { v } else { m });
        let sum = row.iter().fold(T::ZERO, |s, &v| s + (v - max).exp());
        loss += (max + sum.ln() - row[label]) * inv_b;
        grad[b * classes + label] -= T::ONE;
    }
    for g in &mut grad {
        *g *= inv_b;
    }
    (loss, grad, probs)
}
