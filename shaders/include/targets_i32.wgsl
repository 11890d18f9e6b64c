// Class-index targets stored as i32.
@group(0) @binding(3) var<storage, read> targets: array<i32>;
// The target of `row`: (value, is_ignored). Values that don't fit i32 never occur here.
fn load_target(row: u32, ignore_lo: u32, ignore_hi: u32) -> vec2<i32> {
    let y = targets[row];
    let ignore = bitcast<i32>(ignore_lo) == y && (ignore_hi == select(0u, 0xffffffffu, y < 0));
    return vec2(y, i32(ignore));
}
fn dense_target(i: u32) -> f32 { return 0.0; }
