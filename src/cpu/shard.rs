//! The CPU side of vocabulary-parallel cross-entropy: one shard's partials, its focal sums and
//! its gradient, with the same fused row kernels as the unsharded path.

use super::focal::FocalRow;
use super::row::{Backward, Forward, RowIo, Transform, CHUNK};
use super::simd::{dispatch, SimdLevel};
use crate::input::{Element, Logits, Storage, Targets};
use crate::math::focal::Focal;
use crate::math::row::log_p;
use crate::options::CrossEntropy;
use crate::shard::{Combined, FocalPartial, RowFill, RowGradient, RowPartial, Shard};
use half::{bf16, f16};
use rayon::prelude::*;

/// Row `row` of row-major logits as f32: borrowed for f32, widened into `buf` otherwise.
pub(crate) fn row_f32<'a>(logits: &'a Logits<'_>, row: usize, buf: &'a mut [f32]) -> &'a [f32] {
    let c = logits.classes();
    let span = row * c..(row + 1) * c;
    fn widen<'b, T: Element>(src: &[T], buf: &'b mut [f32]) -> &'b [f32] {
        T::widen(src, buf);
        buf
    }
    match &logits.storage {
        Storage::F32(d) => &d[span],
        Storage::F32Mut(d) => &d[span],
        Storage::F16(d) => widen::<f16>(&d[span], buf),
        Storage::F16Mut(d) => widen::<f16>(&d[span], buf),
        Storage::Bf16(d) => widen::<bf16>(&d[span], buf),
        Storage::Bf16Mut(d) => widen::<bf16>(&d[span], buf),
    }
}

/// Per-row partials of one shard (inputs already checked).
pub fn shard_partials(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    logits: &Logits<'_>,
    targets: Targets<'_>,
    w: Option<&[f32]>,
) -> Vec<RowPartial> {
    let weight_sum = weight_sum(shard, w);
    (0..logits.rows())
        .into_par_iter()
        .map_init(
            || (vec![0f32; shard.width], vec![0f32; CHUNK]),
            |(x_buf, z_buf), row| {
                let x = row_f32(logits, row, x_buf);
                let y = targets.index(row).unwrap_or_default();
                row_partial(level, options, shard, (x, y), (w, weight_sum), z_buf)
            },
        )
        .collect()
}

/// `Σ w` over a shard's columns (its width without class weights), as a partial carries it.
pub(crate) fn weight_sum(shard: Shard, w: Option<&[f32]>) -> f32 {
    w.map_or(shard.width as f64, |w| w.iter().map(|&v| v as f64).sum()) as f32
}

/// One row's partial over a shard's columns `x` (f32, the shard's width), its global target
/// `y`, the shard's class weights and their [`weight_sum`]; `z_buf` is `CHUNK` f32 of scratch.
pub(crate) fn row_partial(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    (x, y): (&[f32], i64),
    (w, weight_sum): (Option<&[f32]>, f32),
    z_buf: &mut [f32],
) -> RowPartial {
    let transform = Transform::of(options);
    let st = dispatch(
        level,
        Forward {
            x,
            t: None,
            w,
            transform,
            want_wz: options.label_smoothing > 0.0,
            want_metrics: true,
            z_buf,
            exps: None,
        },
    );
    let target = shard
        .local(y, options.ignore_index)
        .map(|c| (transform.scalar(x[c]), w.map_or(1.0, |w| w[c])));
    RowPartial {
        max: st.sums.max,
        sum_exp: st.sums.sum_exp as f32,
        sum_ez: st.sums.sum_ez as f32,
        sum_wz: st.sums.sum_wz as f32,
        weight_sum,
        argmax: (shard.start + st.argmax as usize) as u32,
        nan_index: if st.nans > 0 {
            (shard.start
                + x.iter()
                    .position(|&v| transform.scalar(v).is_nan())
                    .unwrap_or(0)) as u32
        } else {
            u32::MAX
        },
        ..RowPartial::default()
    }
    .with_target(target)
}
/// The focal passes over one shard's columns of a row: no dense targets, `e = ε/C` with the
/// global `C`, and the global LSE (as `max + log_sum`, the split the backward uses).
fn focal_row<'a>(
    options: &CrossEntropy,
    shard: Shard,
    w: Option<&'a [f32]>,
    r: &RowGradient,
) -> FocalRow<'a> {
    FocalRow {
        t: None,
        w,
        transform: Transform::of(options),
        max: r.max,
        log_sum: r.log_sum as f64,
        b: 0.0,
        e: options.label_smoothing / shard.classes as f32,
        gamma: options.focal_gamma,
    }
}

/// The row's target as a column of this shard, if it is one.
fn local_target(shard: Shard, r: &RowGradient) -> Option<usize> {
    let local = r.target - shard.start as i64;
    (0..shard.width as i64)
        .contains(&local)
        .then_some(local as usize)
}

/// The focal sums of one shard's columns (inputs already checked; focal loss with smoothing):
/// the same focal row sums (`cpu::focal::FocalRow`) as an unsharded row, over its columns.
pub fn shard_focal(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    logits: &Logits<'_>,
    w: Option<&[f32]>,
    combined: &Combined,
) -> Vec<FocalPartial> {
    (0..logits.rows())
        .into_par_iter()
        .map_init(
            || vec![0f32; shard.width],
            |x_buf, row| {
                let x = row_f32(logits, row, x_buf);
                row_focal(level, options, shard, x, w, &combined.rows[row])
            },
        )
        .collect()
}

/// One row's focal sums over a shard's columns `x` (0 for a row that is ignored or NaN).
pub(crate) fn row_focal(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    x: &[f32],
    w: Option<&[f32]>,
    r: &RowGradient,
) -> FocalPartial {
    if r.fill != RowFill::Compute {
        return FocalPartial::default();
    }
    let eps = options.label_smoothing as f64;
    let target = local_target(shard, r).map(|y| (y, (1.0 - eps) * w.map_or(1.0, |w| w[y]) as f64));
    let (loss, g_sum) = focal_row(options, shard, w, r).sums(level, x, target);
    FocalPartial {
        loss: -loss as f32,
        g_sum: g_sum as f32,
    }
}

/// The gradient of one shard's columns (inputs already checked).
pub fn shard_backward(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    logits: &Logits<'_>,
    w: Option<&[f32]>,
    combined: &Combined,
    gradient: &mut [f32],
) {
    gradient
        .par_chunks_mut(shard.width)
        .enumerate()
        .for_each_init(
            || vec![0f32; shard.width],
            |x_buf, (row, g)| {
                let r = &combined.rows[row];
                if r.fill == RowFill::Compute {
                    let x = row_f32(logits, row, x_buf);
                    row_backward(level, options, shard, RowIo::Separate(x, g), w, r);
                } else {
                    row_fill(g, r);
                }
            },
        );
}

/// The row a backward does not compute: zeros for an ignored row, NaN for a NaN one.
pub(crate) fn row_fill(g: &mut [f32], r: &RowGradient) {
    g.fill(if r.fill == RowFill::Nan {
        f32::NAN
    } else {
        0.0
    });
}

/// One row's gradient over a shard's columns, from its combined coefficients `r` (a row whose
/// `fill` is `Compute`; [`row_fill`] writes the others).
pub(crate) fn row_backward(
    level: SimdLevel,
    options: &CrossEntropy,
    shard: Shard,
    io: RowIo<'_>,
    w: Option<&[f32]>,
    r: &RowGradient,
) {
    let transform = Transform::of(options);
    if crate::plan::needs_focal_pass(options, false) {
        let target = local_target(shard, r).map(|y| (y, r.target_term));
        focal_row(options, shard, w, r).backward(level, io, r.p_coefficient, r.scale, target);
        return;
    }
    // Focal loss without smoothing: only the target's term is focal, its g[y] multiplies the
    // target term (`RowGradient::target_term`).
    let x = io.src();
    let target_fix = local_target(shard, r).map(|y| {
        let zy = transform.scalar(x[y]);
        let g = if options.is_focal() {
            let l = log_p(zy, r.max, r.log_sum as f64);
            Focal::new(options.focal_gamma).factors(l as f32).1
        } else {
            1.0
        };
        (y, r.target_term * g * transform.scalar_slope(zy))
    });
    let op = Backward {
        io,
        t: None,
        w,
        transform,
        shift: r.max,
        log_sum: r.log_sum,
        k: r.p_coefficient,
        a: r.scale,
        b: 0.0,
        e: options.label_smoothing / shard.classes as f32,
        target_fix,
    };
    dispatch(level, op);
}
