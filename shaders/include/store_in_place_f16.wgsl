// Gradient written in place over f16 logits. `i` is even (a multiple of 4 for the element
// kernels, chunks starting on 4-element boundaries; in the fused kernel a position pair's word,
// or an odd-C row's words, shifted by one where the row starts mid-word), so the store writes
// whole words; n = 1 or 3 keeps the last word's high half (past the end, or the last row's).
// `Store::SeparateHalf` reuses this store with `logits[` renamed to its own buffer's `grad[`.
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {
    let w = (p.elem_offset + i) >> 1u;
    if (n >= 2u) {
        logits[w] = pack2x16float(dx.xy);
    } else if (n == 1u) {
        logits[w] = (pack2x16float(vec2(dx.x, 0.0)) & 0xffffu) | (logits[w] & 0xffff0000u);
    }
    if (n == 4u) {
        logits[w + 1u] = pack2x16float(dx.zw);
    } else if (n == 3u) {
        logits[w + 1u] = (pack2x16float(vec2(dx.z, 0.0)) & 0xffffu) | (logits[w + 1u] & 0xffff0000u);
    }
}
