//! Memory-bandwidth probes: how fast this machine can stream a buffer the size of the logits.
//!
//! `xent bench` divides each implementation's bytes per second by these, so "% bw" says how
//! close a loss comes to the memory system's limit on the same run, the same machine and the
//! same buffer size (small buffers sit in cache and probe the cache instead, as the loss does).
//!
//! - read: sum every f32 of a buffer (bytes moved = the buffer).
//! - chunk loop: the fused forward's inner loop over the same number of values from one
//!   L1-resident chunk (no memory traffic): the compute floor the read is compared with.
//! - copy: copy a buffer into another of the same size (bytes moved = twice the buffer: one
//!   read, one write).
//!
//! Both run in parallel over 256 KiB chunks on rayon's pool. The read pass keeps 16
//! independent accumulators so the compiler vectorizes it and no add waits on the previous one.

use crate::cpu::row;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// Fewest timed runs of a probe.
pub const MIN_PROBE_RUNS: usize = 10;

/// f32 values per parallel task (256 KiB).
const CHUNK: usize = 1 << 16;

/// Median and minimum wall time of repeated runs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median over the timed runs.
    pub median: f64,
    /// Fastest timed run.
    pub min: f64,
}

impl Timing {
    /// Runs `f` once to warm up, then `iters` (at least 1) timed times.
    pub fn measure(iters: usize, mut f: impl FnMut()) -> Timing {
        f();
        Timing::from_seconds(
            (0..iters.max(1))
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        )
    }

    /// The median and fastest of `times` (seconds, at least one).
    pub fn from_seconds(mut times: Vec<f64>) -> Timing {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        Timing {
            median,
            min: times[0],
        }
    }
    /// Bytes per second at the median time, in GB/s (10⁹ bytes).
    pub fn gbps(&self, bytes: u64) -> f64 {
        bytes as f64 / self.median / 1e9
    }
    /// Bytes per second at the fastest run, in GB/s: what a probe reports, the rate the
    /// machine reached.
    pub fn peak_gbps(&self, bytes: u64) -> f64 {
        bytes as f64 / self.min / 1e9
    }
}

/// The two CPU probes over one buffer size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuProbe {
    /// Buffer size in bytes.
    pub bytes: u64,
    /// The read pass.
    pub read: Timing,
    /// The copy pass (moves `2 × bytes`).
    pub copy: Timing,
}

impl CpuProbe {
    /// Read bandwidth in GB/s (fastest run).
    pub fn read_gbps(&self) -> f64 {
        self.read.peak_gbps(self.bytes)
    }
    /// Copy bandwidth in GB/s (fastest run), counting the read and the write.
    pub fn copy_gbps(&self) -> f64 {
        self.copy.peak_gbps(2 * self.bytes)
    }
}

/// Measures the CPU read and copy passes over a buffer of `bytes` bytes (rounded up to whole
/// f32s), `iters` (at least [`MIN_PROBE_RUNS`]) timed runs each.
pub fn cpu(bytes: usize, iters: usize) -> CpuProbe {
    let iters = iters.max(MIN_PROBE_RUNS);
    let len = bytes.div_ceil(4).max(1);
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let read = Timing::measure(iters, || {
        black_box(read_pass(black_box(&src)));
    });
    let copy = Timing::measure(iters, || {
        copy_pass(black_box(&src), black_box(&mut dst));
    });
    CpuProbe {
        bytes: (len * 4) as u64,
        read,
        copy,
    }
}

/// Sums `data` in parallel (the read probe).
pub fn read_pass(data: &[f32]) -> f32 {
    data.par_chunks(CHUNK).map(sum_chunk).sum()
}

fn sum_chunk(chunk: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut blocks = chunk.chunks_exact(16);
    for block in &mut blocks {
        for (a, v) in acc.iter_mut().zip(block) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>()
}

/// The fused forward's inner loop over `values` logits taken from one L1-resident chunk, in
/// parallel like the read probe: the forward's compute floor without DRAM. A forward that
/// is slower than both this and [`read_pass`] is losing time to neither exps nor memory.
pub fn chunk_loop_pass(values: usize) -> f32 {
    const REPS: usize = 64;
    static BLOCK: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| {
        (0..row::CHUNK)
            .map(|i| (i % 61) as f32 * 0.1 - 3.0)
            .collect()
    });
    let level = crate::cpu::SimdLevel::detected();
    let tasks = values.div_ceil(row::CHUNK * REPS);
    (0..tasks)
        .into_par_iter()
        .map(|_| {
            let chunk_loop = row::ChunkLoop {
                chunk: block,
                reps: REPS,
            };
            crate::cpu::simd::dispatch(level, chunk_loop)
        })
        .sum()
}

/// Copies `src` into `dst` in parallel (the copy probe).
pub fn copy_pass(src: &[f32], dst: &mut [f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_do_what_they_say() {
        let src: Vec<f32> = (0..100_003).map(|i| (i % 7) as f32).collect();
        let expected: f64 = src.iter().map(|&v| v as f64).sum();
        assert_eq!(read_pass(&src) as f64, expected);
        let mut dst = vec![0.0; src.len()];
        copy_pass(&src, &mut dst);
        assert_eq!(src, dst);
    }

    #[test]
    fn chunk_loop_sums_the_exps_of_its_chunk() {
        // Three tasks of 64 passes over the block of values (i mod 61)·0.1 − 3 at shift 1.
        let block_sum: f64 = (0..row::CHUNK)
            .map(|i| ((i % 61) as f64 * 0.1 - 3.0 - 1.0).exp())
            .sum();
        let expected = 3.0 * 64.0 * block_sum;
        let got = chunk_loop_pass(3 * 64 * row::CHUNK) as f64;
        assert!(
            (got - expected).abs() <= 1e-5 * expected,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn timing_takes_the_median() {
        let t = Timing::measure(3, || {});
        assert!(t.min <= t.median);
        let probe = cpu(4096, 2);
        assert_eq!(probe.bytes, 4096);
        assert!(probe.read_gbps() > 0.0 && probe.copy_gbps() > 0.0);
    }
}
