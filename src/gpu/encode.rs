//! Binding windows and dispatch grids: how a schedule cuts buffers into what one dispatch binds.

use super::pipelines::WORKGROUP_SIZE;

/// A bound range of a buffer.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> Window<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Window {
            buffer,
            offset: 0,
            size: buffer.size(),
        }
    }
    /// The first `bytes` of the buffer (rounded up to 4, at least 4, at most the buffer): a
    /// pooled or caller's buffer may be larger than the binding limit while its data is not.
    pub fn head(buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Window {
            buffer,
            offset: 0,
            size: bytes.next_multiple_of(4).max(4).min(buffer.size()),
        }
    }
}

/// Which of the row chunks a window covers, and the element offset inside it.
pub(super) fn window<'a>(
    buffer: &'a wgpu::Buffer,
    first: u64,
    count: u64,
    element: u64,
    alignment: u64,
    round: u64,
) -> (Window<'a>, u32) {
    let start = first * element;
    let aligned = start - start % alignment;
    let end = ((start + count * element).next_multiple_of(round))
        .min(buffer.size())
        .max(aligned + 4);
    (
        Window {
            buffer,
            offset: aligned,
            size: end - aligned,
        },
        ((start - aligned) / element) as u32,
    )
}

/// Workgroups for `invocations` as a 2D grid (x ≤ 65 535).
pub(super) fn grid(invocations: u64) -> (u32, u32) {
    let groups = invocations.div_ceil(WORKGROUP_SIZE as u64).max(1);
    let x = groups.min(65_535);
    (x as u32, groups.div_ceil(x) as u32)
}

pub(super) fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}
