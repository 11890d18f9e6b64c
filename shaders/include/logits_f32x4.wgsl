// Logits stored as f32, viewed as vec4 so a row whose start is 16-byte aligned is read with
// 16-byte loads. Requires the bound window to be a whole number of vec4s.
@group(0) @binding(1) var<storage, ACCESS> logits: array<vec4<f32>>;
const VEC4: bool = true;
fn load_x(i: u32) -> f32 { return logits[i >> 2u][i & 3u]; }
fn load4(j: u32) -> vec4<f32> { return logits[j]; }
