// Gradient written in place over bf16 logits, rounded to nearest even. `i` is even (a multiple
// of 4 for the element kernels; in the fused kernel a position pair's word, or an odd-C row's
// words, shifted by one where the row starts mid-word), so the store writes whole words; n = 1
// or 3 keeps the last word's high half (past the end, or the last row's).
// `Store::SeparateHalf` reuses this store with `logits[` renamed to its own buffer's `grad[`.
fn to_bf16(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { return 0x7fc0u; }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {
    let w = (p.elem_offset + i) >> 1u;
    if (n >= 2u) {
        logits[w] = to_bf16(dx.x) | (to_bf16(dx.y) << 16u);
    } else if (n == 1u) {
        logits[w] = to_bf16(dx.x) | (logits[w] & 0xffff0000u);
    }
    if (n == 4u) {
        logits[w + 1u] = to_bf16(dx.z) | (to_bf16(dx.w) << 16u);
    } else if (n == 3u) {
        logits[w + 1u] = to_bf16(dx.z) | (logits[w + 1u] & 0xffff0000u);
    }
}
