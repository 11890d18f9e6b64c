// Gradient written in place over f32 logits. Each invocation owns its 4 elements.
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {
    for (var k = 0u; k < n; k++) { logits[p.elem_offset + i + k] = dx[k]; }
}
