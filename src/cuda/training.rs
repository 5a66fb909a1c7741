//! The CUDA backend's training ops: backward passes, the loss and the optimizer steps
//! (`kernels/train.cu`).
//!
//! Everything stays on the device; only the loss and the L2 penalty (one f64 each) come back,
//! as per-row or per-block partials the host adds in order. No kernel adds floats atomically,
//! so a seeded run reproduces bit for bit on the same device (see the module comment of
//! `kernels/train.cu`).
//!
//! The optimizer steps and `axpy` write new buffers and replace the tensors they update rather
//! than writing in place: a device tensor's clones share its memory (a snapshot of the best
//! epoch is a clone), and an update in place would change them too.

use super::backend::CudaBackend;
use super::gpu::{Args, DevMem, Launch};
use super::source::TRAIN;
use crate::error::{Error, Result};
use crate::tensor::{
    Activation, AdamStep, Conv2dSpec, CrossEntropy, GlobalPool, LayerGrads, LayerParams,
    Pool2dSpec, Tensor, Wanted, check_grad_shape, dense_geometry,
};

/// Largest column matrix (im2col of the input, or the input gradient's columns) per GEMM:
/// big enough to fill an H200, small enough for any GPU. Two live at once when both gradients
/// are wanted.
const COLS_BUDGET_BYTES: usize = 256 << 20;

/// Largest scratch for the slices of a split weight-gradient GEMM (see [`gemm_tn`]).
const SLICES_BUDGET_BYTES: usize = 64 << 20;

/// Rows per slice of a column sum (the bias gradients).
const ROWS_PER_SLICE: usize = 256;

/// Launch `kernel` of `kernels/train.cu`.
///
/// # Safety
/// `args` must be exactly the parameters the kernel declares, with buffers large enough for
/// the sizes passed.
unsafe fn launch(be: &CudaBackend, kernel: &str, l: Launch, args: Args) -> Result<()> {
    let f = be.gpu().function(&TRAIN, kernel)?;
    // SAFETY: the caller's contract.
    unsafe { be.gpu().launch(&f, l, args) }
}

/// A 64x64-tile GEMM launch of `kernels/train.cu`: 16x16 threads.
fn tiles(x: usize, y: usize, z: usize) -> Result<Launch> {
    if x > i32::MAX as usize || y > 65535 || z > 65535 {
        return Err(Error::Invalid(format!(
            "a GEMM grid of {x}x{y}x{z} tiles is too large for one launch"
        )));
    }
    Ok(Launch {
        grid: [x.max(1) as u32, y.max(1) as u32, z.max(1) as u32],
        block: [16, 16, 1],
        dynamic_smem: 0,
    })
}

/// Sizes passed as `int` must fit one.
fn fits_i32(what: &str, v: usize) -> Result<()> {
    if v > i32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{what}: {v} is too large for the CUDA kernels' 32-bit sizes"
        )));
    }
    Ok(())
}

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    crate::tensor::check_same_shape(op, a.shape(), b.shape())
}

/// `len` zeros on the device.
fn zeros(be: &CudaBackend, len: usize) -> Result<DevMem> {
    let m = be.alloc_f32(len)?;
    be.gpu().fill_bytes(&m, 0)?;
    Ok(m)
}

/// `dy` masked by ReLU's derivative at `y` (a new buffer), or `dy` itself for a linear layer.
fn pre_activation_grad(
    be: &CudaBackend,
    op: &str,
    y: &Tensor,
    dy: &Tensor,
    activation: Activation,
) -> Result<DevMem> {
    let dym = be.mem(dy, &format!("{op} output gradient"))?;
    match activation {
        Activation::Linear => Ok(dym.clone()),
        Activation::Relu => {
            check_grad_shape(op, dy.shape(), y.shape())?;
            let ym = be.mem(y, &format!("{op} output"))?;
            let out = be.alloc_f32(dy.numel())?;
            let args = Args::new()
                .mem(ym)
                .mem(dym)
                .mem(&out)
                .value(dy.numel() as i64);
            // SAFETY: relu_backward_f32(y, dy, dx, len); all three hold dy.numel() floats.
            unsafe {
                launch(
                    be,
                    "relu_backward_f32",
                    be.gpu().grid_stride(dy.numel()),
                    args,
                )?
            };
            Ok(out)
        }
    }
}

/// `C (k x n) [+]= Aᵀ B` for `A (m x k)`, `B (m x n)`: a weight gradient, summed over `m`
/// rows (every output pixel). A short output with a long sum is split into fixed slices of
/// rows, each summed by its own blocks into scratch, then added in slice order: the split
/// depends only on the shapes, so the result is the same on every run.
#[allow(clippy::too_many_arguments)]
fn gemm_tn(
    be: &CudaBackend,
    a: &DevMem,
    b: &DevMem,
    c: &DevMem,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    for (what, v) in [("rows", m), ("columns", k * n)] {
        fits_i32(&format!("weight gradient {what}"), v)?;
    }
    if k * n == 0 {
        return Ok(());
    }
    let (gx, gy) = (n.div_ceil(64), k.div_ceil(64));
    // Enough blocks to fill a large GPU (~512), slices of at least 512 rows, scratch within
    // its budget.
    let want = 512usize.div_ceil(gx * gy);
    let slices = want
        .min(m.div_ceil(512))
        .min(SLICES_BUDGET_BYTES / (k * n * 4))
        .clamp(1, 64);
    let per = m.div_ceil(slices).div_ceil(16) * 16;
    let slices = m.div_ceil(per.max(1)).max(1);
    if slices == 1 {
        let args = Args::new()
            .mem(a)
            .mem(b)
            .mem(c)
            .i32s(&[m, k, n, m.max(1)])
            .i32(accumulate as i32);
        // SAFETY: gemm_tn(A, B, C, M, K, N, m_per_slice, accumulate) with one slice: A holds
        // m*k floats, B m*n, C k*n.
        return unsafe { launch(be, "gemm_tn", tiles(gx, gy, 1)?, args) };
    }
    let scratch = be.alloc_f32(slices * k * n)?;
    let args = Args::new()
        .mem(a)
        .mem(b)
        .mem(&scratch)
        .i32s(&[m, k, n, per])
        .i32(0);
    // SAFETY: as above; slice z writes scratch[z*k*n ..][..k*n] and reads rows
    // [z*per, min(m, (z+1)*per)), and slices*per >= m.
    unsafe { launch(be, "gemm_tn", tiles(gx, gy, slices)?, args)? };
    let args = Args::new()
        .mem(&scratch)
        .mem(c)
        .i32(slices as i32)
        .value((k * n) as i64)
        .i32(accumulate as i32);
    // SAFETY: sum_slices(partial, out, slices, len, accumulate): scratch holds slices*len
    // floats, c holds len. (The scratch is freed in stream order, after this kernel.)
    unsafe { launch(be, "sum_slices", be.gpu().grid_stride(k * n), args) }
}

/// `C (m x n) = A Bᵀ` for `A (m x k)`, `B (n x k)`: an input gradient.
fn gemm_nt(
    be: &CudaBackend,
    a: &DevMem,
    b: &DevMem,
    c: &DevMem,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    for (what, v) in [("rows", m), ("columns", n), ("depth", k)] {
        fits_i32(&format!("input gradient {what}"), v)?;
    }
    if m * n == 0 {
        return Ok(());
    }
    if k == 0 {
        return be.gpu().fill_bytes(c, 0);
    }
    let args = Args::new().mem(a).mem(b).mem(c).i32s(&[m, n, k]);
    // SAFETY: gemm_nt(A, B, C, M, N, K): A holds m*k floats, B n*k, C m*n.
    unsafe {
        launch(
            be,
            "gemm_nt",
            tiles(m.div_ceil(64), n.div_ceil(64), 1)?,
            args,
        )
    }
}

/// The column sums of a `(rows, cols)` matrix (a bias gradient), in f64, rounded once.
fn col_sums(be: &CudaBackend, x: &DevMem, rows: usize, cols: usize) -> Result<DevMem> {
    fits_i32("bias gradient columns", cols)?;
    let out = be.alloc_f32(cols)?;
    if cols == 0 {
        return Ok(out);
    }
    let slices = rows.div_ceil(ROWS_PER_SLICE).max(1);
    fits_i32("bias gradient slices", slices)?;
    let partial = be.gpu().alloc(slices * cols * 8)?;
    let args =
        Args::new()
            .mem(x)
            .mem(&partial)
            .value(rows as i64)
            .i32s(&[cols, ROWS_PER_SLICE, slices]);
    // SAFETY: col_sums_partial(x, partial, rows, cols, rows_per_slice, slices): x holds
    // rows*cols floats, partial slices*cols doubles.
    unsafe {
        launch(
            be,
            "col_sums_partial",
            be.gpu().grid_stride(slices * cols),
            args,
        )?
    };
    let args = Args::new().mem(&partial).mem(&out).i32s(&[cols, slices]);
    // SAFETY: col_sums_finish(partial, out, cols, slices): out holds cols floats.
    unsafe { launch(be, "col_sums_finish", be.gpu().grid_stride(cols), args)? };
    Ok(out)
}

pub(super) fn conv2d_backward(
    be: &CudaBackend,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    w: &LayerParams,
    spec: &Conv2dSpec,
    wanted: Wanted,
) -> Result<LayerGrads> {
    let g = spec.geometry(x.shape(), w.kernel().shape(), None)?;
    check_grad_shape("conv2d", dy.shape(), &g.output_shape())?;
    let xm = be.mem(x, "conv2d backward input")?;
    let dz = pre_activation_grad(be, "conv2d", y, dy, spec.activation)?;
    let dw = be.weights(w)?;
    let pixels = g.oh * g.ow;
    let kdim = g.kh * g.kw * g.cin;
    for (what, v) in [
        ("input", g.n * g.h * g.w * g.cin),
        ("output", g.n * pixels * g.cout),
    ] {
        fits_i32(&format!("conv2d backward {what} elements"), v)?;
    }

    let dx = if wanted.input {
        Some(be.alloc_f32(g.n * g.h * g.w * g.cin)?)
    } else {
        None
    };
    let dk = if wanted.params {
        Some(zeros(be, kdim * g.cout)?)
    } else {
        None
    };
    let per_image = pixels * kdim * 4;
    let chunk = (COLS_BUDGET_BYTES / per_image.max(1)).clamp(1, g.n.max(1));
    let cols = wanted
        .params
        .then(|| be.gpu().alloc(chunk * per_image))
        .transpose()?;
    let dcols = wanted
        .input
        .then(|| be.gpu().alloc(chunk * per_image))
        .transpose()?;
    let (in_image, out_image) = (g.h * g.w * g.cin * 4, pixels * g.cout * 4);
    // The geometry parameters im2col_nhwc and col2im_nhwc share, after their two pointers.
    let geometry = |a: Args, nb: usize| {
        a.i32s(&[nb, g.h, g.w, g.cin, g.kh, g.kw]).i32s(&[
            g.stride[0],
            g.stride[1],
            g.pad_top,
            g.pad_left,
            g.oh,
            g.ow,
        ])
    };
    let mut b0 = 0;
    while b0 < g.n && kdim > 0 {
        let nb = chunk.min(g.n - b0);
        let dzv = dz.view(b0 * out_image, nb * out_image)?;
        if let (Some(dk), Some(cols)) = (&dk, &cols) {
            let xv = xm.view(b0 * in_image, nb * in_image)?;
            let args = geometry(Args::new().mem(&xv).mem(cols), nb);
            be.launch_ops(
                "im2col_nhwc",
                be.gpu().grid_stride(nb * pixels * kdim),
                args,
            )?;
            // dK (kdim x cout) += colsᵀ dz over this chunk's pixels.
            gemm_tn(be, cols, &dzv, dk, nb * pixels, kdim, g.cout, b0 > 0)?;
        }
        if let (Some(dx), Some(dcols)) = (&dx, &dcols) {
            // The columns' gradient dz Kᵀ, then each input element gathers its taps.
            gemm_nt(be, &dzv, &dw.kernel, dcols, nb * pixels, kdim, g.cout)?;
            let dxv = dx.view(b0 * in_image, nb * in_image)?;
            let args = geometry(Args::new().mem(dcols).mem(&dxv), nb);
            // SAFETY: col2im_nhwc(cols, dx, n, h, w, c, kh, kw, sh, sw, pad_top, pad_left,
            // oh, ow): dcols holds nb*pixels*kdim floats, dxv nb images.
            unsafe {
                launch(
                    be,
                    "col2im_nhwc",
                    be.gpu().grid_stride(nb * g.h * g.w * g.cin),
                    args,
                )?
            };
        }
        b0 += nb;
    }
    if kdim == 0
        && let Some(dx) = &dx
    {
        be.gpu().fill_bytes(dx, 0)?;
    }
    let bias = if wanted.params {
        Some(be.tensor([g.cout], col_sums(be, &dz, g.n * pixels, g.cout)?)?)
    } else {
        None
    };
    Ok(LayerGrads {
        input: dx.map(|m| be.tensor(g.input_shape(), m)).transpose()?,
        kernel: dk.map(|m| be.tensor(g.kernel_shape(), m)).transpose()?,
        bias,
    })
}

pub(super) fn dense_backward(
    be: &CudaBackend,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    w: &LayerParams,
    activation: Activation,
    wanted: Wanted,
) -> Result<LayerGrads> {
    let [n, fin, fout] = dense_geometry(x.shape(), w.kernel().shape(), None)?;
    check_grad_shape("dense", dy.shape(), &[n, fout].into())?;
    let xm = be.mem(x, "dense backward input")?;
    let dz = pre_activation_grad(be, "dense", y, dy, activation)?;
    let dw = be.weights(w)?;
    let input = if wanted.input {
        let dx = be.alloc_f32(n * fin)?;
        // dx (n x fin) = dz (n x fout) Kᵀ, K (fin x fout).
        gemm_nt(be, &dz, &dw.kernel, &dx, n, fin, fout)?;
        Some(be.tensor([n, fin], dx)?)
    } else {
        None
    };
    let (kernel, bias) = if wanted.params {
        let dk = zeros(be, fin * fout)?;
        // dK (fin x fout) = xᵀ dz, summed over the batch.
        gemm_tn(be, xm, &dz, &dk, n, fin, fout, false)?;
        let db = col_sums(be, &dz, n, fout)?;
        (
            Some(be.tensor([fin, fout], dk)?),
            Some(be.tensor([fout], db)?),
        )
    } else {
        (None, None)
    };
    Ok(LayerGrads {
        input,
        kernel,
        bias,
    })
}

pub(super) fn max_pool2d_backward(
    be: &CudaBackend,
    x: &Tensor,
    dy: &Tensor,
    spec: &Pool2dSpec,
) -> Result<Tensor> {
    let g = spec.geometry(x.shape())?;
    check_grad_shape("max_pool2d", dy.shape(), &g.output_shape())?;
    let xm = be.mem(x, "max_pool2d backward input")?;
    let dym = be.mem(dy, "max_pool2d output gradient")?;
    let len = x.numel();
    fits_i32("max_pool2d backward elements", len)?;
    let dx = be.alloc_f32(len)?;
    let args = Args::new()
        .mem(xm)
        .mem(dym)
        .mem(&dx)
        .i32s(&[g.n, g.h, g.w, g.c, g.size[0], g.size[1]])
        .i32s(&[g.stride[0], g.stride[1], g.pad_top, g.pad_left, g.oh, g.ow]);
    // SAFETY: max_pool_backward_nhwc(x, dy, dx, n, h, w, c, ph, pw, sh, sw, pad_top,
    // pad_left, oh, ow): x and dx hold n*h*w*c floats, dy n*oh*ow*c (checked above).
    unsafe {
        launch(
            be,
            "max_pool_backward_nhwc",
            be.gpu().grid_stride(len),
            args,
        )?
    };
    be.tensor(x.shape().clone(), dx)
}

pub(super) fn global_pool_backward(
    be: &CudaBackend,
    x: &Tensor,
    dy: &Tensor,
    kind: GlobalPool,
) -> Result<Tensor> {
    let [n, h, w, c] = x.shape().nhwc("global pool input")?;
    check_grad_shape("global_pool", dy.shape(), &[n, c].into())?;
    let xm = be.mem(x, "global pool backward input")?;
    let dym = be.mem(dy, "global pool output gradient")?;
    fits_i32("global pool backward elements", x.numel())?;
    let dx = be.alloc_f32(x.numel())?;
    let scale = (1.0 / (h * w).max(1) as f64) as f32;
    let args = Args::new()
        .mem(xm)
        .mem(dym)
        .mem(&dx)
        .i32s(&[n, h * w, c])
        .i32((kind == GlobalPool::Max) as i32)
        .f32(scale);
    if h * w > 0 {
        // SAFETY: global_pool_backward_nhwc(x, dy, dx, n, hw, c, is_max, scale): x and dx
        // hold n*hw*c floats, dy n*c (checked above).
        unsafe {
            launch(
                be,
                "global_pool_backward_nhwc",
                be.gpu().grid_stride(n * c),
                args,
            )?
        };
    }
    be.tensor(x.shape().clone(), dx)
}

pub(super) fn relu_backward(be: &CudaBackend, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_grad_shape("relu", dy.shape(), y.shape())?;
    let out = pre_activation_grad(be, "relu", y, dy, Activation::Relu)?;
    be.tensor(y.shape().clone(), out)
}

pub(super) fn softmax_cross_entropy(
    be: &CudaBackend,
    logits: &Tensor,
    labels: &[usize],
) -> Result<CrossEntropy> {
    let [batch, classes] = crate::tensor::cross_entropy_geometry(logits.shape(), labels)?;
    let zm = be.mem(logits, "softmax cross-entropy logits")?;
    fits_i32("logits", logits.numel())?;
    let probs = be.alloc_f32(logits.numel())?;
    let dlogits = be.alloc_f32(logits.numel())?;
    let mut loss = 0f64;
    if batch > 0 {
        let lab: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        let lab = be.gpu().upload(&lab)?;
        let rows = be.gpu().alloc(batch * 8)?;
        let args = Args::new()
            .mem(zm)
            .mem(&lab)
            .mem(&probs)
            .mem(&dlogits)
            .mem(&rows)
            .i32s(&[batch, classes])
            .f32((1.0 / batch as f64) as f32);
        // SAFETY: softmax_cross_entropy_rows(z, labels, probs, dlogits, row_loss, rows, cols,
        // inv_batch): z, probs and dlogits hold batch*classes floats, labels batch ints (each
        // < classes, checked above), row_loss batch doubles.
        unsafe {
            launch(
                be,
                "softmax_cross_entropy_rows",
                be.gpu().grid_stride(batch),
                args,
            )?
        };
        let per_row: Vec<f64> = be.gpu().to_vec(&rows, batch)?;
        loss = per_row.iter().sum::<f64>() / batch as f64;
    }
    let shape = logits.shape().clone();
    Ok(CrossEntropy {
        loss,
        dlogits: be.tensor(shape.clone(), dlogits)?,
        probs: be.tensor(shape, probs)?,
    })
}

pub(super) fn sum_squares(be: &CudaBackend, x: &Tensor) -> Result<f64> {
    let xm = be.mem(x, "sum_squares input")?;
    let len = x.numel();
    if len == 0 {
        return Ok(0.0);
    }
    let l = be.gpu().grid_stride(len);
    let blocks = l.grid[0] as usize;
    let partial = be.gpu().alloc(blocks * 8)?;
    let args = Args::new().mem(xm).mem(&partial).value(len as i64);
    // SAFETY: sum_squares_partial(x, partial, len) with 256-thread blocks (its shared array's
    // size): x holds len floats, partial one double per block.
    unsafe { launch(be, "sum_squares_partial", l, args)? };
    let parts: Vec<f64> = be.gpu().to_vec(&partial, blocks)?;
    Ok(parts.iter().sum())
}

pub(super) fn axpy(be: &CudaBackend, alpha: f64, x: &Tensor, y: &mut Tensor) -> Result<()> {
    same_shape("axpy", x, y)?;
    let xm = be.mem(x, "axpy x")?;
    let ym = be.mem(y, "axpy y")?;
    let len = x.numel();
    let out = be.alloc_f32(len)?;
    let args = Args::new()
        .mem(xm)
        .mem(ym)
        .mem(&out)
        .f32(alpha as f32)
        .value(len as i64);
    // SAFETY: axpy_f32(x, y, out, alpha, len): all three hold len floats.
    unsafe { launch(be, "axpy_f32", be.gpu().grid_stride(len), args)? };
    *y = be.tensor(y.shape().clone(), out)?;
    Ok(())
}

pub(super) fn sgd_step(
    be: &CudaBackend,
    w: &mut Tensor,
    g: &Tensor,
    velocity: &mut Tensor,
    lr: f64,
    momentum: f64,
    nesterov: bool,
) -> Result<()> {
    same_shape("sgd", w, g)?;
    same_shape("sgd", w, velocity)?;
    let (wm, gm, vm) = (
        be.mem(w, "sgd weights")?,
        be.mem(g, "sgd gradient")?,
        be.mem(velocity, "sgd velocity")?,
    );
    let len = w.numel();
    let (w_out, v_out) = (be.alloc_f32(len)?, be.alloc_f32(len)?);
    let args = Args::new()
        .mem(wm)
        .mem(gm)
        .mem(vm)
        .mem(&w_out)
        .mem(&v_out)
        .f32(lr as f32)
        .f32(momentum as f32)
        .i32(nesterov as i32)
        .value(len as i64);
    // SAFETY: sgd_step_f32(w, g, v, w_out, v_out, lr, momentum, nesterov, len): all five
    // hold len floats.
    unsafe { launch(be, "sgd_step_f32", be.gpu().grid_stride(len), args)? };
    *w = be.tensor(w.shape().clone(), w_out)?;
    *velocity = be.tensor(velocity.shape().clone(), v_out)?;
    Ok(())
}

pub(super) fn adam_step(
    be: &CudaBackend,
    w: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    step: &AdamStep,
) -> Result<()> {
    for t in [&*m, &*v, g] {
        same_shape("adam", w, t)?;
    }
    let (wm, gm, mm, vm) = (
        be.mem(w, "adam weights")?,
        be.mem(g, "adam gradient")?,
        be.mem(m, "adam first moment")?,
        be.mem(v, "adam second moment")?,
    );
    let len = w.numel();
    let (w_out, m_out, v_out) = (be.alloc_f32(len)?, be.alloc_f32(len)?, be.alloc_f32(len)?);
    // The reference's constants, rounded to f32 as it rounds them.
    let args = Args::new()
        .mem(wm)
        .mem(gm)
        .mem(mm)
        .mem(vm)
        .mem(&w_out)
        .mem(&m_out)
        .mem(&v_out)
        .f32(step.alpha as f32)
        .f32((1.0 - step.beta1) as f32)
        .f32((1.0 - step.beta2) as f32)
        .f32(step.epsilon as f32)
        .f32((1.0 - step.decay) as f32)
        .i32((step.decay != 0.0) as i32)
        .value(len as i64);
    // SAFETY: adam_step_f32(w, g, m, v, w_out, m_out, v_out, alpha, b1, b2, eps, keep, decay,
    // len): all seven buffers hold len floats.
    unsafe { launch(be, "adam_step_f32", be.gpu().grid_stride(len), args)? };
    *w = be.tensor(w.shape().clone(), w_out)?;
    *m = be.tensor(m.shape().clone(), m_out)?;
    *v = be.tensor(v.shape().clone(), v_out)?;
    Ok(())
}
