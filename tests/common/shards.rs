//! The vocab-parallel pipeline as a test runs it: K shards' partials, `combine`, the focal round
//! when one is needed (checked against the all-reduce form of the same round), and each
//! shard's backward, assembled into one output and one gradient.
#![allow(dead_code)]

use super::{assert_close, Case, Run};
use half::{bf16, f16};
use xent::shard::{FocalPartial, RowPartial, Shard, ShardInput};
use xent::{Backend, CrossEntropy, Dtype, Logits, Targets};

/// Uneven shards: widths grow with the index.
pub fn uneven(classes: usize, k: usize) -> Vec<Shard> {
    let total: usize = (1..=k).sum();
    let mut start = 0;
    (1..=k)
        .map(|i| {
            let width = if i == k {
                classes - start
            } else {
                classes * i / total
            };
            let s = Shard {
                start,
                width,
                classes,
            };
            start += width;
            s
        })
        .collect()
}

/// Columns of `shard` from row-major `rows × classes` values.
pub fn columns(v: &[f32], rows: usize, classes: usize, shard: Shard) -> Vec<f32> {
    (0..rows)
        .flat_map(|r| {
            v[r * classes + shard.start..r * classes + shard.start + shard.width].to_vec()
        })
        .collect()
}

/// One shard's logits in the case's dtype.
enum Piece {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Piece {
    fn new(values: Vec<f32>, dtype: Dtype) -> Piece {
        match dtype {
            Dtype::F32 => Piece::F32(values),
            Dtype::F16 => Piece::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            Dtype::Bf16 => Piece::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }
    fn logits(&self, rows: usize, width: usize) -> Logits<'_> {
        match self {
            Piece::F32(v) => Logits::new(v, rows, width),
            Piece::F16(v) => Logits::new(v, rows, width),
            Piece::Bf16(v) => Logits::new(v, rows, width),
        }
    }
}

/// Runs `case` (index targets, row-major) split into `shards` on `backend`: the combined
/// output (loss, per-row losses, LSE, metrics) and the assembled gradient.
pub fn run_sharded(
    label: &str,
    backend: &Backend,
    case: &Case,
    options: &CrossEntropy,
    shards: &[Shard],
    upstream: Option<&[f32]>,
) -> Run {
    let (rows, classes) = (case.rows, case.classes);
    let targets = Targets::I64(&case.index_targets);
    let pieces: Vec<(Piece, Option<Vec<f32>>)> = shards
        .iter()
        .map(|&s| {
            (
                Piece::new(columns(&case.logits, rows, classes, s), case.dtype),
                case.class_weights
                    .as_ref()
                    .map(|w| w[s.start..s.start + s.width].to_vec()),
            )
        })
        .collect();
    let input = |k: usize| ShardInput {
        logits: pieces[k].0.logits(rows, shards[k].width),
        targets,
        class_weights: pieces[k].1.as_deref(),
    };
    let partials: Vec<Vec<RowPartial>> = (0..shards.len())
        .map(|k| {
            options
                .shard_partials(backend, shards[k], input(k))
                .expect("partials")
        })
        .collect();
    let views: Vec<&[RowPartial]> = partials.iter().map(|p| &p[..]).collect();
    let mut combined = options
        .combine_weighted(
            classes,
            &views,
            targets,
            case.sample_weights.as_deref(),
            upstream,
        )
        .expect("combine");
    assert_eq!(
        combined.needs_focal_round(),
        options.is_focal() && options.label_smoothing > 0.0,
        "{label}"
    );
    if combined.needs_focal_round() {
        assert_eq!(
            combined.output.loss, None,
            "{label}: loss before the focal round"
        );
        let focal: Vec<Vec<FocalPartial>> = (0..shards.len())
            .map(|k| {
                options
                    .shard_focal(backend, shards[k], input(k), &combined)
                    .expect("focal sums")
            })
            .collect();
        // An all-reduce (SUM) instead of an all-gather: one summed slice, the same loss.
        let summed: Vec<FocalPartial> = (0..rows)
            .map(|r| FocalPartial {
                loss: focal.iter().map(|f| f[r].loss).sum(),
                g_sum: focal.iter().map(|f| f[r].g_sum).sum(),
            })
            .collect();
        let mut reduced = combined.clone();
        options
            .combine_focal(&mut reduced, &[&summed])
            .expect("combine_focal (all-reduce)");
        let views: Vec<&[FocalPartial]> = focal.iter().map(|f| &f[..]).collect();
        options
            .combine_focal(&mut combined, &views)
            .expect("combine_focal");
        if let (Some(a), Some(b)) = (reduced.output.loss, combined.output.loss) {
            assert_close(
                &format!("{label}: all-reduce"),
                &[a],
                &[b as f64],
                1e-6,
                1e-6,
            );
        }
    }
    let mut gradient = vec![0f32; rows * classes];
    for (k, &s) in shards.iter().enumerate() {
        let mut g = vec![0f32; rows * s.width];
        options
            .shard_backward(backend, s, input(k), &combined, &mut g)
            .expect("backward");
        for r in 0..rows {
            gradient[r * classes + s.start..r * classes + s.start + s.width]
                .copy_from_slice(&g[r * s.width..(r + 1) * s.width]);
        }
    }
    Run {
        output: combined.output,
        gradient: Some(gradient),
    }
}
