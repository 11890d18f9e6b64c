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

impl<'a> Window<'a> {
    /// A caller's slice, whole.
    pub fn slice(slice: wgpu::BufferSlice<'a>) -> Self {
        Window {
            buffer: slice.buffer(),
            offset: slice.offset(),
            size: slice.size(),
        }
    }
    /// The first `bytes` of the window (rounded up to 4, at least 4, at most the window's
    /// buffer from its offset).
    pub fn first(self, bytes: u64) -> Self {
        Window {
            size: bytes
                .next_multiple_of(4)
                .max(4)
                .min(self.buffer.size() - self.offset),
            ..self
        }
    }
}

/// Elements `first .. first + count` of `element` bytes of `slice` (whose offset is a
/// multiple of `alignment`) as a window starting at an `alignment` boundary, and the element
/// offset of `first` inside it. The window's end is rounded up to `round` bytes (within the
/// buffer).
pub(super) fn window<'a>(
    slice: Window<'a>,
    first: u64,
    count: u64,
    element: u64,
    alignment: u64,
    round: u64,
) -> (Window<'a>, u32) {
    let buffer = slice.buffer;
    let start = slice.offset + first * element;
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

/// A range of a buffer held by handle (wgpu's buffers are reference counted): a caller's
/// slice or a pooled buffer, for scratch and call state that outlives the borrow it came from.
#[derive(Clone)]
pub(super) struct Region {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl Region {
    /// A whole buffer.
    pub(super) fn whole(buffer: &wgpu::Buffer) -> Region {
        Region {
            buffer: buffer.clone(),
            offset: 0,
            size: buffer.size(),
        }
    }

    /// A caller's slice.
    pub(super) fn slice(slice: wgpu::BufferSlice<'_>) -> Region {
        Region {
            buffer: slice.buffer().clone(),
            offset: slice.offset(),
            size: slice.size(),
        }
    }

    /// The buffer (whose bytes start at `offset`).
    pub(super) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// All of it.
    pub(super) fn all(&self) -> Window<'_> {
        Window {
            buffer: &self.buffer,
            offset: self.offset,
            size: self.size,
        }
    }

    /// The first `bytes` (rounded up to 4, at least 4, at most the region).
    pub(super) fn head(&self, bytes: u64) -> Window<'_> {
        Window {
            buffer: &self.buffer,
            offset: self.offset,
            size: bytes.next_multiple_of(4).max(4).min(self.size),
        }
    }

    /// Rows `r0 .. r0 + rows` of `bytes` each.
    pub(super) fn rows(&self, (r0, rows): (usize, usize), bytes: u64) -> Window<'_> {
        Window {
            buffer: &self.buffer,
            offset: self.offset + r0 as u64 * bytes,
            size: rows as u64 * bytes,
        }
    }
}
