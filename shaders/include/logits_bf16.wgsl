// Logits stored as bfloat16, two per u32 word (element 2k in the low half): a bf16 is the
// top half of an f32, so widening is a shift.
@group(0) @binding(1) var<storage, ACCESS> logits: array<u32>;
const VEC4: bool = false;
fn load_x(i: u32) -> f32 {
    let word = logits[i >> 1u];
    let bits = select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u);
    return bitcast<f32>(bits);
}
fn load4(j: u32) -> vec4<f32> {
    let a = logits[2u * j];
    let b = logits[2u * j + 1u];
    return bitcast<vec4<f32>>(vec4(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
