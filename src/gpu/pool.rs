//! Buffers reused across calls: scratch, uploads and staging, one per role, grown on demand.

use std::collections::HashMap;

/// Grow-only buffers keyed by role.
#[derive(Default)]
pub struct Pool {
    buffers: HashMap<&'static str, wgpu::Buffer>,
}

impl Pool {
    /// A buffer for `role` of at least `size` bytes with `usage`; reused when the last one is
    /// large enough (sizes grow to the next power of two so growth is rare).
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        role: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = size.max(16).next_multiple_of(16);
        if let Some(b) = self.buffers.get(role) {
            if b.size() >= size && b.usage().contains(usage) {
                return b.clone();
            }
        }
        let size = size
            .checked_next_power_of_two()
            .unwrap_or(size)
            .min(size.max(1 << 30));
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(role),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.buffers.insert(role, buffer.clone());
        buffer
    }
}
