//! The linear head's three products, on row-major f32 slices, through the `gemm` crate.
//!
//! `gemm` computes `dst = α·dst + β·lhs·rhs` over strided operands. Its depth loop (over `k`)
//! runs in the same blocks whatever the thread count, and threads split only the output, so a
//! product's bits do not depend on the number of threads (`tests/linear.rs` checks it).

use gemm::Parallelism;

/// Whether a product runs on the calling thread (inside a rayon task that owns a tile) or
/// spreads over rayon's pool.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads {
    One,
    Pool,
}

impl Threads {
    fn parallelism(self) -> Parallelism {
        match self {
            Threads::One => Parallelism::None,
            Threads::Pool => Parallelism::Rayon(0),
        }
    }
}

/// Whether a product overwrites its destination or adds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Write,
    Add,
}

/// A row-major operand: `rows × cols` with `stride` elements between rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl Shape {
    /// Contiguous rows.
    pub const fn dense(rows: usize, cols: usize) -> Self {
        Shape {
            rows,
            cols,
            stride: cols,
        }
    }
    /// The elements a slice must hold.
    fn span(self) -> usize {
        match self.rows {
            0 => 0,
            r => (r - 1) * self.stride + self.cols,
        }
    }
}

/// `dst (m × n) (+)= a · b`, with `a` seen as m × k and `b` as k × n through explicit
/// (row step, column step) strides.
#[allow(clippy::too_many_arguments)]
fn product(
    threads: Threads,
    mode: Mode,
    (dst, d): (&mut [f32], Shape),
    (a, a_steps): (&[f32], (usize, usize)),
    (b, b_steps): (&[f32], (usize, usize)),
    k: usize,
) {
    let (m, n) = (d.rows, d.cols);
    assert!(dst.len() >= d.span() && (m <= 1 || n <= d.stride));
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| match rows * cols {
        0 => 0,
        _ => (rows - 1) * rs + (cols - 1) * cs + 1,
    };
    assert!(a.len() >= last(m, k, a_steps) && b.len() >= last(k, n, b_steps));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if mode == Mode::Write {
            for r in 0..m {
                dst[r * d.stride..r * d.stride + n].fill(0.0);
            }
        }
        return;
    }
    let read = mode == Mode::Add;
    // SAFETY: the asserts above bound every element the strides reach: dst rows < m at
    // stride `d.stride`, columns < n; a's (i, l) at i·rs + l·cs < a.len(), b's likewise. `dst`
    // is exclusive and does not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            d.stride as isize,
            read,
            a.as_ptr(),
            a_steps.1 as isize,
            a_steps.0 as isize,
            b.as_ptr(),
            b_steps.1 as isize,
            b_steps.0 as isize,
            if read { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            threads.parallelism(),
        )
    }
}

/// Logits: `x[r][c] = Σ_d h[r][d]·w[c][d] + b[c]` for `h` [rows × k], `w` [cols × k] (the
/// head's rows), `x` of shape `out` (rows × cols, any row stride) and an optional bias [cols].
pub(crate) fn logits(
    threads: Threads,
    (x, out): (&mut [f32], Shape),
    h: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
) {
    let mode = match bias {
        Some(b) => {
            for r in 0..out.rows {
                x[r * out.stride..r * out.stride + out.cols].copy_from_slice(&b[..out.cols]);
            }
            Mode::Add
        }
        None => Mode::Write,
    };
    product(threads, mode, (x, out), (h, (k, 1)), (w, (1, k)), k);
}

/// The weight's gradient: `dw [cols × k] (+)= gᵀ · h` for `g` [rows × cols] (row stride
/// `g_stride`) and `h` [rows × k].
pub(crate) fn weight_gradient(
    threads: Threads,
    mode: Mode,
    dw: &mut [f32],
    (g, g_shape): (&[f32], Shape),
    h: &[f32],
    k: usize,
) {
    let out = Shape::dense(g_shape.cols, k);
    product(
        threads,
        mode,
        (dw, out),
        (g, (1, g_shape.stride)),
        (h, (k, 1)),
        g_shape.rows,
    );
}

/// The weight's gradient stored [k × vocab] (`WeightLayout::HiddenMajor`): columns
/// `0..g.cols` of `dw` (row stride `vocab`) (+)= `(gᵀ·h)ᵀ = hᵀ·g`, for `g` [rows × cols]
/// and `h` [rows × k].
pub(crate) fn weight_gradient_hidden_major(
    threads: Threads,
    mode: Mode,
    (dw, vocab): (&mut [f32], usize),
    (g, g_shape): (&[f32], Shape),
    h: &[f32],
    k: usize,
) {
    let out = Shape {
        rows: k,
        cols: g_shape.cols,
        stride: vocab,
    };
    product(
        threads,
        mode,
        (dw, out),
        (h, (1, k)),
        (g, (g_shape.stride, 1)),
        g_shape.rows,
    );
}

/// The hidden states' gradient: `dh [rows × k] (+)= g · w` for `g` [rows × cols] (row stride
/// `g_stride`) and `w` [cols × k].
pub(crate) fn hidden_gradient(
    threads: Threads,
    mode: Mode,
    dh: &mut [f32],
    (g, g_shape): (&[f32], Shape),
    w: &[f32],
    k: usize,
) {
    let out = Shape::dense(g_shape.rows, k);
    product(
        threads,
        mode,
        (dh, out),
        (g, (g_shape.stride, 1)),
        (w, (k, 1)),
        g_shape.cols,
    );
}
