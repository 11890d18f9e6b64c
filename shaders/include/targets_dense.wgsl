// Dense (soft or multi-label) targets stored as f32 in the logits' layout.
@group(0) @binding(3) var<storage, read> targets: array<f32>;
fn load_target(row: u32, ignore_lo: u32, ignore_hi: u32) -> vec2<i32> { return vec2(-1, 0); }
fn dense_target(i: u32) -> f32 { return targets[i]; }
