// The tile product's operands for a linear head's logits x = h·Wᵀ (linear_partials.wgsl and
// linear_gradient.wgsl compute the same sums in the same order): A = h of the bound rows,
// B = W's rows from class `col0`, both read along k; `b_end` is the first class past the
// kernel's columns, set by the kernel before its products.

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = true;
var<private> b_end: u32;
fn load_a(row: u32, k: u32) -> f32 {
    if (row >= p.rows || k >= p.hidden) { return 0.0; }
    return load_h(row * p.hidden + k);
}
fn load_b(c: u32, k: u32) -> f32 {
    if (c >= b_end || k >= p.hidden) { return 0.0; }
    return load_w((c - p.col0) * p.hidden + k);
}
