// Logits stored as IEEE f16, two per u32 word (element 2k in the low half), widened with
// unpack2x16float so no shader-f16 feature is needed.
@group(0) @binding(1) var<storage, ACCESS> logits: array<u32>;
const VEC4: bool = false;
fn load_x(i: u32) -> f32 {
    let pair = unpack2x16float(logits[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
fn load4(j: u32) -> vec4<f32> {
    return vec4(unpack2x16float(logits[2u * j]), unpack2x16float(logits[2u * j + 1u]));
}
