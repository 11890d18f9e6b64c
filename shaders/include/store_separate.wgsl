// Gradient written out of place, as f32, into its own buffer (same layout as the logits).
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
// Writes dx for chunk elements i .. i+n-1 (n ≤ 4).
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {
    for (var k = 0u; k < n; k++) { grad[p.f32_offset + i + k] = dx[k]; }
}
