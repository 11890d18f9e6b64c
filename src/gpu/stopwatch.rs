//! Timing of device work, for the bench and the bandwidth probes: timestamp queries around
//! the work where the device has `Features::TIMESTAMP_QUERY` (the GPU's own clock, no
//! submission latency), else the wall time of a submit and a wait.
//!
//! The timestamps are written by two empty compute passes, one ending before the work and one
//! beginning after it, so the work itself (xent's own pass, recorded by a `record_*` call)
//! needs no hook.

use super::Gpu;
use crate::error::{Error, Result};

/// How a [`Stopwatch`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Timestamp queries around the work.
    Timestamps,
    /// The wall time of a submit and a wait (the work plus one submission's latency).
    SubmitAndWait,
}

impl Clock {
    /// `"timestamps"` or `"submit-and-wait"`.
    pub fn name(self) -> &'static str {
        match self {
            Clock::Timestamps => "timestamps",
            Clock::SubmitAndWait => "submit-and-wait",
        }
    }
}

/// Times work recorded into a fresh encoder on one [`Gpu`].
pub struct Stopwatch<'g> {
    gpu: &'g Gpu,
    /// The query set, the buffer it resolves into and a mappable copy, with timestamps.
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl<'g> Stopwatch<'g> {
    /// A stopwatch on `gpu`, with timestamps where its device has them.
    pub fn new(gpu: &'g Gpu) -> Stopwatch<'g> {
        let device = gpu.device();
        let queries = device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| {
                let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("xent stopwatch"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                let buffer = |usage| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("xent stopwatch"),
                        size: 16,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                let resolve =
                    buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
                let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
                (set, resolve, read)
            });
        Stopwatch { gpu, queries }
    }

    /// How this stopwatch measures.
    pub fn clock(&self) -> Clock {
        if self.queries.is_some() {
            Clock::Timestamps
        } else {
            Clock::SubmitAndWait
        }
    }

    /// Seconds the work that `record` puts into a fresh encoder takes, submitted alone.
    pub fn time(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        let (device, queue) = (self.gpu.device(), self.gpu.queue());
        let mut encoder = device.create_command_encoder(&Default::default());
        let mark = |encoder: &mut wgpu::CommandEncoder, index: u32| {
            if let Some((set, _, _)) = &self.queries {
                let (beginning, end) = if index == 0 {
                    (None, Some(0))
                } else {
                    (Some(1), None)
                };
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("xent stopwatch"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: beginning,
                        end_of_pass_write_index: end,
                    }),
                });
            }
        };
        mark(&mut encoder, 0);
        record(&mut encoder)?;
        mark(&mut encoder, 1);
        if let Some((set, resolve, read)) = &self.queries {
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let start = std::time::Instant::now();
        queue.submit([encoder.finish()]);
        self.gpu.wait()?;
        let wall = start.elapsed().as_secs_f64();
        let Some((_, _, read)) = &self.queries else {
            return Ok(wall);
        };
        let slice = read.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        self.gpu.wait()?;
        let ticks: [u64; 2] = {
            let data = slice
                .get_mapped_range()
                .map_err(|e| Error::Device(e.to_string()))?;
            bytemuck::pod_read_unaligned(&data[..16])
        };
        read.unmap();
        if ticks[1] < ticks[0] {
            return Err(Error::Device(format!(
                "timestamps out of order ({} then {})",
                ticks[0], ticks[1]
            )));
        }
        Ok((ticks[1] - ticks[0]) as f64 * queue.get_timestamp_period() as f64 * 1e-9)
    }
}
