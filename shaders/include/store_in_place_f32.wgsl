// Gradient written in place over f32 logits. Each invocation owns its 4 elements.
const STORES_GRADIENT: bool = true;
// Only the loss-only variant checks targets itself (`store_none.wgsl`).
fn flag_target_loss_only(global_row: u32) {}
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {
    for (var k = 0u; k < n; k++) { logits[p.elem_offset + i + k] = dx[k]; }
}
