//! Vocabulary-parallel cross-entropy across MPI processes: each rank owns a slice of the
//! vocabulary's columns, computes its per-row partials with xent, the ranks exchange them with
//! MPI collectives, and every rank ends up with the loss of the whole vocabulary and the
//! gradient of its own columns, as one process computing everything would.
//!
//! ```text
//! cargo build --release --features mpi --example vocab_parallel_mpi
//! mpirun --allow-run-as-root --oversubscribe -np 2 target/release/examples/vocab_parallel_mpi
//! mpirun -np 2 target/release/examples/vocab_parallel_mpi --gpu   # shards on wgpu's adapter
//! mpirun -np 2 target/release/examples/vocab_parallel_mpi --focal-gamma 2   # focal loss
//! mpirun -np 2 target/release/examples/vocab_parallel_mpi --linear   # a linear head's shards
//! ```
//!
//! Needs an MPI library (Debian: `apt-get install openmpi-bin libopenmpi-dev libclang-dev`); the
//! default build of the crate doesn't (the example sits behind the cargo feature `mpi`).
//!
//! Every rank generates the same batch (64 rows × 50 257 classes, class weights, label
//! smoothing 0.1, z-loss 1e-4, some rows ignored) from a fixed seed and keeps only its
//! `Shard::split(classes, size)[rank]` columns; a real model would produce just those columns
//! (the output projection split by vocabulary, Megatron style). The partials are exchanged
//! two ways, both of which must give the unsharded loss:
//! - **all-reduce** (what Megatron does with NCCL): MAX of the row maxima, each rank moves its
//!   partials to the global max (`RowPartial::moved_to`), SUM of the sums, MIN of the argmax
//!   candidates; the
//!   result is one merged `RowPartial` per row, which `combine` takes as a single shard;
//! - **all-gather** of the 48-byte `RowPartial`s (plain bytes), merged by `combine` in rank
//!   order: simplest, and the result is the same bits on every rank.
//!
//! With `--focal-gamma G` the loss is focal loss (γ = G, still with label smoothing), which
//! takes a second, smaller exchange before the backward pass (`Combined::needs_focal_round`):
//! each rank sums its columns' 8-byte `FocalPartial`s from the global LSE (`shard_focal`), the
//! ranks add them up (all-reduce SUM, or all-gather and add in rank order) and
//! `combine_focal` finishes the loss and the gradient coefficients.
//!
//! With `--linear` the vocabulary is a linear head's: every rank holds the hidden states
//! (64 rows × 256) and its own rows of the head's weight and bias (`W` [50 257 × 256], split by
//! vocabulary), and `LinearCrossEntropy::shard_partials` gives the same `RowPartial`s from them
//! that a shard of logits gives; the exchange and `combine` are the same, then each rank's
//! `shard_backward` writes its rows of `dW` and `db` and its part of `dh`, which an all-reduce
//! SUM adds up. The check is the unsharded `LinearCrossEntropy::compute` (CPU only).
//!
//! Then each rank writes the gradient of its own columns with `shard_backward`. For the check,
//! every rank also runs the unsharded `CrossEntropy::compute` over the whole batch on the CPU
//! and compares its columns of that gradient; rank 0 prints the figures and ends with
//! `loss: X single-process: Y`. Any mismatch (loss beyond 1e-5 relative, gradient beyond
//! SEMANTICS.md's bound) makes every rank exit with status 1.

use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::process::ExitCode;
use std::sync::Arc;
use xent::gpu::Gpu;
use xent::shard::{Combined, FocalPartial, RowPartial, Shard, ShardInput};
use xent::{Backend, Batch, CrossEntropy, Logits, Request, Targets};

const ROWS: usize = 64;
const CLASSES: usize = 50_257;
const SEED: u64 = 0x5eed_0f7e;
/// Every this many rows, the target is `ignore_index`.
const IGNORE_EVERY: usize = 7;

/// The loss every rank computes (focal with `gamma > 0`); `combine` must be called with the
/// same options.
fn options(gamma: f32) -> CrossEntropy {
    CrossEntropy::new()
        .label_smoothing(0.1)
        .z_loss(1e-4)
        .focal_gamma(gamma)
}

/// SplitMix64: a few lines of deterministic randomness, identical on every rank.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The whole batch: logits (`ROWS × CLASSES`, row-major), targets, class weights.
struct Problem {
    logits: Vec<f32>,
    targets: Vec<i64>,
    weights: Vec<f32>,
}

fn problem(options: &CrossEntropy) -> Problem {
    let mut rng = Rng(SEED);
    let weights = (0..CLASSES).map(|_| 0.5 + rng.unit()).collect();
    let targets: Vec<i64> = (0..ROWS)
        .map(|row| {
            let y = (rng.next() % CLASSES as u64) as i64;
            if row % IGNORE_EVERY == 3 {
                options.ignore_index
            } else {
                y
            }
        })
        .collect();
    let mut logits: Vec<f32> = (0..ROWS * CLASSES)
        .map(|_| 6.0 * rng.unit() - 3.0)
        .collect();
    // Make the targets likelier than the rest, as a half-trained model would.
    for (row, &y) in targets.iter().enumerate() {
        if y >= 0 {
            logits[row * CLASSES + y as usize] += 8.0;
        }
    }
    Problem {
        logits,
        targets,
        weights,
    }
}

/// Columns `[shard.start, shard.start + shard.width)` of every row.
fn columns(values: &[f32], shard: Shard) -> Vec<f32> {
    values
        .chunks_exact(shard.classes)
        .flat_map(|row| &row[shard.start..shard.start + shard.width])
        .copied()
        .collect()
}

/// The all-gather route: every rank's partials (`RowPartial`s, or the focal round's
/// `FocalPartial`s) as bytes, merged by `combine` (`combine_focal`) in rank order.
fn all_gather<C: Communicator, T: bytemuck::Pod>(world: &C, mine: &[T]) -> Vec<Vec<T>> {
    let size = world.size() as usize;
    let bytes: &[u8] = bytemuck::cast_slice(mine);
    let mut all = vec![0u8; bytes.len() * size];
    world.all_gather_into(bytes, &mut all[..]);
    all.chunks_exact(bytes.len())
        .map(bytemuck::pod_collect_to_vec)
        .collect()
}

/// The all-reduce route (Megatron with NCCL): MAX of the maxima, rescale, SUM of the sums,
/// MIN of the indices. Returns one merged partial per row: `combine` takes it as one shard.
fn all_reduce_partials<C: Communicator>(world: &C, mine: &[RowPartial]) -> Vec<RowPartial> {
    let rows = mine.len();
    // 1. The global max of each row.
    let local_max: Vec<f32> = mine.iter().map(|p| p.max).collect();
    let mut global_max = vec![0f32; rows];
    world.all_reduce_into(&local_max[..], &mut global_max[..], SystemOperation::max());
    // 2. Each partial moved to the global max (`RowPartial::moved_to`: exp-sums rescaled by
    //    `exp(max − global max)`, centred sums re-centred), then the sums.
    const SUMS: usize = 7;
    let mut sums = Vec::with_capacity(rows * SUMS);
    // 3. Index candidates for MIN: the first maximum (offered only by ranks holding the global
    //    max, so ties go to the lowest column, as `torch.argmax` does) and the first NaN.
    let mut indices = Vec::with_capacity(rows * 2);
    for (p, &m) in mine.iter().zip(&global_max) {
        let moved = p.moved_to(m);
        sums.extend_from_slice(&[
            moved.sum_exp,
            moved.sum_ez,
            moved.sum_wz,
            p.weight_sum,
            p.target_z,
            p.target_weight,
            p.has_target as f32, // small integers: exact in f32
        ]);
        indices.push(if p.max == m { p.argmax } else { u32::MAX });
        indices.push(p.nan_index);
    }
    let mut global_sums = vec![0f32; sums.len()];
    world.all_reduce_into(&sums[..], &mut global_sums[..], SystemOperation::sum());
    let mut global_indices = vec![0u32; indices.len()];
    world.all_reduce_into(
        &indices[..],
        &mut global_indices[..],
        SystemOperation::min(),
    );
    (0..rows)
        .map(|row| {
            let s = &global_sums[row * SUMS..(row + 1) * SUMS];
            let argmax = global_indices[2 * row];
            RowPartial {
                max: global_max[row],
                sum_exp: s[0],
                sum_ez: s[1],
                sum_wz: s[2],
                weight_sum: s[3],
                target_z: s[4],
                target_weight: s[5],
                has_target: s[6] as u32,
                argmax: if argmax == u32::MAX { 0 } else { argmax },
                nan_index: global_indices[2 * row + 1],
                _pad: [0; 2],
            }
        })
        .collect()
}

/// The two ways of exchanging partials.
#[derive(Clone, Copy)]
enum Route {
    AllReduce,
    AllGather,
}

/// Focal loss with label smoothing: the second exchange, when `combined` needs it. Each rank
/// sums its columns' `FocalPartial`s from the global LSE in `combined`; the sums add up across
/// ranks, by an all-reduce SUM (one summed slice) or an all-gather (`combine_focal` adds them
/// in rank order).
fn focal_round<C: Communicator>(
    world: &C,
    options: &CrossEntropy,
    backend: &Backend,
    (shard, input): (Shard, ShardInput<'_>),
    combined: &mut Combined,
    route: Route,
) -> xent::Result<()> {
    if !combined.needs_focal_round() {
        return Ok(());
    }
    let mine = options.shard_focal(backend, shard, input, combined)?;
    match route {
        Route::AllReduce => {
            // Two f32 per row, summed element-wise.
            let mut summed = vec![FocalPartial::default(); mine.len()];
            world.all_reduce_into(
                bytemuck::cast_slice::<FocalPartial, f32>(&mine),
                bytemuck::cast_slice_mut::<FocalPartial, f32>(&mut summed),
                SystemOperation::sum(),
            );
            options.combine_focal(combined, &[&summed])
        }
        Route::AllGather => {
            let gathered = all_gather(world, &mine);
            let views: Vec<&[FocalPartial]> = gathered.iter().map(|p| &p[..]).collect();
            options.combine_focal(combined, &views)
        }
    }
}

/// What a rank found, for the verdict.
struct Report {
    allreduce_loss: f32,
    allgather_loss: f32,
    single_loss: f32,
    /// `‖g_sharded − g_single‖²` and `‖g_single‖²` over this rank's columns.
    diff_sq: f64,
    norm_sq: f64,
    sharded_norm_sq: f64,
    /// Max over this rank's elements of `|g − ref| / (1e-6 + 1e-4·|ref|)` (≤ 1 passes).
    worst: f64,
}

impl Report {
    /// The losses of the two routes and the single process, and the gradient figures over
    /// `(sharded, single-process)` pairs of this rank's elements.
    fn new(
        [all_reduce, all_gather]: [&Combined; 2],
        single_loss: Option<f32>,
        pairs: impl Iterator<Item = (f32, f32)>,
    ) -> Report {
        let (mut diff_sq, mut norm_sq, mut sharded_norm_sq, mut worst) = (0f64, 0f64, 0f64, 0f64);
        for (g, r) in pairs {
            let (g, r) = (g as f64, r as f64);
            diff_sq += (g - r) * (g - r);
            norm_sq += r * r;
            sharded_norm_sq += g * g;
            worst = worst.max((g - r).abs() / (1e-6 + 1e-4 * r.abs()));
        }
        Report {
            allreduce_loss: all_reduce.output.loss.unwrap_or(f32::NAN),
            allgather_loss: all_gather.output.loss.unwrap_or(f32::NAN),
            single_loss: single_loss.unwrap_or(f32::NAN),
            diff_sq,
            norm_sq,
            sharded_norm_sq,
            worst,
        }
    }
}

fn run<C: Communicator>(world: &C, backend: &Backend, gamma: f32) -> xent::Result<Report> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let options = options(gamma);
    let Problem {
        logits,
        targets,
        weights,
    } = problem(&options);
    let shard = Shard::split(CLASSES, size)[rank];
    let my_logits = columns(&logits, shard);
    let my_weights = &weights[shard.start..shard.start + shard.width];
    let input = || ShardInput {
        logits: Logits::new(&my_logits, ROWS, shard.width),
        targets: Targets::I64(&targets),
        class_weights: Some(my_weights),
    };

    // Step 1: this rank's partials (rows × 48 bytes).
    let mine = options.shard_partials(backend, shard, input())?;

    // Step 2, two ways. All-reduce: one merged partial per row.
    let merged = all_reduce_partials(world, &mine);
    let mut combined = options.combine(CLASSES, &[&merged], Targets::I64(&targets), None)?;
    // All-gather: K partials per row, merged in rank (column) order.
    let gathered = all_gather(world, &mine);
    let views: Vec<&[RowPartial]> = gathered.iter().map(|p| &p[..]).collect();
    let mut by_gather = options.combine(CLASSES, &views, Targets::I64(&targets), None)?;
    // Focal loss with smoothing: the second round, on each route.
    focal_round(
        world,
        &options,
        backend,
        (shard, input()),
        &mut combined,
        Route::AllReduce,
    )?;
    focal_round(
        world,
        &options,
        backend,
        (shard, input()),
        &mut by_gather,
        Route::AllGather,
    )?;

    // Step 3: the gradient of this rank's columns.
    let mut gradient = vec![0f32; ROWS * shard.width];
    options.shard_backward(backend, shard, input(), &combined, &mut gradient)?;

    // The check: the unsharded call over the whole batch, on the CPU.
    let mut single_gradient = vec![0f32; ROWS * CLASSES];
    let single = options.compute(
        &Backend::Cpu,
        Batch::new(Logits::new(&logits, ROWS, CLASSES), &targets[..]).class_weights(&weights),
        Request::new().gradient_into(&mut single_gradient),
    )?;
    let reference = columns(&single_gradient, shard);
    let pairs = gradient.iter().zip(&reference).map(|(&g, &r)| (g, r));
    Ok(Report::new([&combined, &by_gather], single.loss, pairs))
}

/// Hidden size of `--linear`'s head.
const HIDDEN: usize = 256;

/// `--linear`: the same targets and class weights, the logits made by a linear head from
/// hidden states; each rank holds its rows of `W` and `b`.
fn run_linear<C: Communicator>(world: &C, gamma: f32) -> xent::Result<Report> {
    use xent::linear::{GradientBuffer, LinearBatch, LinearCrossEntropy, LinearRequest, Strategy};
    use xent::Matrix;
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let options = options(gamma);
    let Problem {
        targets, weights, ..
    } = problem(&options);
    let mut rng = Rng(SEED ^ 0x11ea);
    let scale = 4.0 / (HIDDEN as f32).sqrt();
    let hidden: Vec<f32> = (0..ROWS * HIDDEN).map(|_| 2.0 * rng.unit() - 1.0).collect();
    let weight: Vec<f32> = (0..CLASSES * HIDDEN)
        .map(|_| scale * (2.0 * rng.unit() - 1.0))
        .collect();
    let bias: Vec<f32> = (0..CLASSES).map(|_| rng.unit() - 0.5).collect();
    let head = LinearCrossEntropy::new(options).strategy(Strategy::Fused);
    let shard = Shard::split(CLASSES, size)[rank];
    let columns = shard.start..shard.start + shard.width;
    let batch = || {
        let rows = &weight[shard.start * HIDDEN..(shard.start + shard.width) * HIDDEN];
        LinearBatch::new(
            Matrix::new(&hidden, ROWS, HIDDEN),
            Matrix::new(rows, shard.width, HIDDEN),
            &targets[..],
        )
        .bias(&bias[columns.clone()])
        .class_weights(&weights[columns.clone()])
    };

    // Step 1 from this rank's rows of the head; step 2 as for logits, both routes.
    let mine = head.shard_partials(&Backend::Cpu, shard, batch())?;
    let merged = all_reduce_partials(world, &mine);
    let mut combined = options.combine(CLASSES, &[&merged], Targets::I64(&targets), None)?;
    let gathered = all_gather(world, &mine);
    let views: Vec<&[RowPartial]> = gathered.iter().map(|p| &p[..]).collect();
    let mut by_gather = options.combine(CLASSES, &views, Targets::I64(&targets), None)?;
    for (combined, route) in [
        (&mut combined, Route::AllReduce),
        (&mut by_gather, Route::AllGather),
    ] {
        if combined.needs_focal_round() {
            let sums = head.shard_focal(&Backend::Cpu, shard, batch(), combined)?;
            let all = all_gather(world, &sums);
            let views: Vec<&[FocalPartial]> = all.iter().map(|p| &p[..]).collect();
            match route {
                Route::AllGather => options.combine_focal(combined, &views)?,
                // An all-reduce SUM of the 8-byte sums gives one slice.
                Route::AllReduce => {
                    let mut summed = vec![FocalPartial::default(); sums.len()];
                    world.all_reduce_into(
                        bytemuck::cast_slice::<FocalPartial, f32>(&sums),
                        bytemuck::cast_slice_mut::<FocalPartial, f32>(&mut summed),
                        SystemOperation::sum(),
                    );
                    options.combine_focal(combined, &[&summed])?
                }
            }
        }
    }

    // Step 3: this rank's rows of dW and db, its part of dh, summed across ranks.
    let mut dw = vec![0f32; shard.width * HIDDEN];
    let mut db = vec![0f32; shard.width];
    let mut dh_part = vec![0f32; ROWS * HIDDEN];
    let request = LinearRequest::new()
        .hidden_gradient(GradientBuffer::Write(&mut dh_part))
        .weight_gradient(GradientBuffer::Write(&mut dw))
        .bias_gradient(GradientBuffer::Write(&mut db));
    head.shard_backward(&Backend::Cpu, shard, batch(), &combined, request)?;
    let mut dh = vec![0f32; ROWS * HIDDEN];
    world.all_reduce_into(&dh_part[..], &mut dh[..], SystemOperation::sum());

    // The check: the unsharded head on the CPU.
    let (mut dh1, mut dw1, mut db1) = (
        vec![0f32; ROWS * HIDDEN],
        vec![0f32; CLASSES * HIDDEN],
        vec![0f32; CLASSES],
    );
    let single = head.compute(
        &Backend::Cpu,
        LinearBatch::new(
            Matrix::new(&hidden, ROWS, HIDDEN),
            Matrix::new(&weight, CLASSES, HIDDEN),
            &targets[..],
        )
        .bias(&bias)
        .class_weights(&weights),
        LinearRequest::new()
            .hidden_gradient(GradientBuffer::Write(&mut dh1))
            .weight_gradient(GradientBuffer::Write(&mut dw1))
            .bias_gradient(GradientBuffer::Write(&mut db1)),
    )?;
    // This rank's dW and db rows; dh once (rank 0), as every rank holds all of it.
    let mut pairs: Vec<(f32, f32)> = dw
        .iter()
        .zip(&dw1[shard.start * HIDDEN..(shard.start + shard.width) * HIDDEN])
        .chain(db.iter().zip(&db1[columns]))
        .map(|(&g, &r)| (g, r))
        .collect();
    if rank == 0 {
        pairs.extend(dh.iter().zip(&dh1).map(|(&g, &r)| (g, r)));
    }
    Ok(Report::new(
        [&combined, &by_gather],
        single.loss,
        pairs.into_iter(),
    ))
}

fn relative(a: f32, b: f32) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).abs().max(1e-30)
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI could not be initialized");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gpu = args.iter().any(|a| a == "--gpu");
    let gamma = match args.iter().position(|a| a == "--focal-gamma") {
        None => 0.0,
        Some(i) => match args.get(i + 1).map(|v| v.parse::<f32>()) {
            Some(Ok(g)) if g.is_finite() && g >= 0.0 => g,
            _ => {
                eprintln!("--focal-gamma takes a finite number >= 0");
                return ExitCode::FAILURE;
            }
        },
    };
    let backend = if gpu {
        match Gpu::new() {
            Ok(gpu) => Backend::Gpu(Arc::new(gpu)),
            Err(e) => {
                eprintln!("rank {rank}: no GPU adapter ({e}); using the CPU");
                Backend::Cpu
            }
        }
    } else {
        Backend::Cpu
    };
    let linear = args.iter().any(|a| a == "--linear");
    if linear && gpu {
        eprintln!("--linear runs on the CPU only (the GPU's linear head is not written yet)");
        return ExitCode::FAILURE;
    }
    let outcome = if linear {
        run_linear(&world, gamma)
    } else {
        run(&world, &backend, gamma)
    };
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rank {rank}: {e}");
            world.abort(1);
        }
    };

    // Gradient figures over all columns: sums of squares add up across ranks.
    let local = [report.diff_sq, report.norm_sq, report.sharded_norm_sq];
    let mut global = [0f64; 3];
    world.all_reduce_into(&local[..], &mut global[..], SystemOperation::sum());
    let mut worst = 0f64;
    world.all_reduce_into(&report.worst, &mut worst, SystemOperation::max());
    let [diff_sq, norm_sq, sharded_norm_sq] = global;

    let loss_ok = relative(report.allreduce_loss, report.single_loss) <= 1e-5
        && relative(report.allgather_loss, report.single_loss) <= 1e-5;
    let gradient_ok = worst <= 1.0 && diff_sq.sqrt() <= 1e-4 * norm_sq.sqrt();
    // Rank 0 decides; every rank exits with its verdict.
    let mut ok = u8::from(loss_ok && gradient_ok);
    world.process_at_rank(0).broadcast_into(&mut ok);
    if rank == 0 {
        let shards = Shard::split(CLASSES, size as usize);
        let head = if linear {
            format!(", a linear head of hidden size {HIDDEN} (each rank: its rows of W and b)")
        } else {
            String::new()
        };
        println!(
            "{size} ranks, {ROWS} rows × {CLASSES} classes{head}, backend {}, {:?}",
            backend.name(),
            options(gamma)
        );
        for (r, s) in shards.iter().enumerate() {
            println!("rank {r}: columns [{}, {})", s.start, s.start + s.width);
        }
        println!(
            "all-gather of RowPartial bytes: loss {}",
            report.allgather_loss
        );
        println!(
            "all-reduce (MAX, rescale, SUM):  loss {}",
            report.allreduce_loss
        );
        println!(
            "gradient norm: sharded {:.9e} single-process {:.9e}; ‖difference‖ {:.3e}; \
             worst element {worst:.3} of the bound 1e-6 + 1e-4·|ref|",
            sharded_norm_sq.sqrt(),
            norm_sq.sqrt(),
            diff_sq.sqrt()
        );
        if ok == 0 {
            eprintln!("MISMATCH: the sharded loss or gradient differs from the single-process one");
        }
        println!(
            "loss: {} single-process: {}",
            report.allreduce_loss, report.single_loss
        );
    }
    if ok == 1 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
