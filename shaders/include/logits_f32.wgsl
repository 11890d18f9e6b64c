// Logits stored as f32, one per word. `load4` exists so kernels can share one body.
@group(0) @binding(1) var<storage, ACCESS> logits: array<f32>;
const VEC4: bool = false;
fn load_x(i: u32) -> f32 { return logits[i]; }
fn load4(j: u32) -> vec4<f32> { return vec4(logits[4u * j], logits[4u * j + 1u], logits[4u * j + 2u], logits[4u * j + 3u]); }
