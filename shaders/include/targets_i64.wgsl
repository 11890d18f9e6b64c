// Class-index targets stored as i64: two u32 words, low word first (little endian).
@group(0) @binding(3) var<storage, read> targets: array<u32>;
// The target of `row`: (value, is_ignored). A value outside i32 becomes −1 (out of range).
fn load_target(row: u32, ignore_lo: u32, ignore_hi: u32) -> vec2<i32> {
    let lo = targets[2u * row];
    let hi = targets[2u * row + 1u];
    let ignore = lo == ignore_lo && hi == ignore_hi;
    let fits = (hi == 0u && lo < 0x80000000u) || (hi == 0xffffffffu && lo >= 0x80000000u);
    return vec2(select(-1, bitcast<i32>(lo), fits), i32(ignore));
}
fn dense_target(i: u32) -> f32 { return 0.0; }
