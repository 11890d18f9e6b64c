// The tile product's operands for a linear head's logits x = h·Wᵀ (linear_partials.wgsl and
// linear_gradient.wgsl compute the same sums in the same order): A = h of the bound rows in
// the kernel's order (`bound_row`), read along k; B = W's rows from class `col0`, read along
// k, or with WEIGHT_T (W stored [D × V], bound whole, indexed by global class) W's columns,
// read along the classes; `b_end` is the first class past the kernel's columns, set by the
// kernel before its products.

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = !WEIGHT_T;
var<private> b_end: u32;
fn load_a(v: u32, k: u32) -> f32 {
    if (v >= p.rows || k >= p.hidden) { return 0.0; }
    return load_h(bound_row(v) * p.hidden + k);
}
fn load_b(c: u32, k: u32) -> f32 {
    if (c >= b_end || k >= p.hidden) { return 0.0; }
    if (WEIGHT_T) { return load_w(k * p.classes + c); }
    return load_w((c - p.col0) * p.hidden + k);
}

// Four consecutive k of a row (k a multiple of 4; D a multiple of 4 with LINEAR_VEC4, so the
// four are all inside or all past the row); with WEIGHT_T, load_b4 gives four consecutive
// classes c.. of W's row k (V a multiple of 4 too, and so is `b_end`).
fn load_a4(v: u32, k: u32) -> vec4<f32> {
    if (v >= p.rows || k >= p.hidden) { return vec4(0.0); }
    return load_h4((bound_row(v) * p.hidden + k) / 4u);
}
fn load_b4(c: u32, k: u32) -> vec4<f32> {
    if (c >= b_end || k >= p.hidden) { return vec4(0.0); }
    if (WEIGHT_T) { return load_w4((k * p.classes + c) / 4u); }
    return load_w4(((c - p.col0) * p.hidden + k) / 4u);
}

// With LINEAR_VEC4, four values a load (16 bytes of f32, 8 of f16 / bf16): the first half of
// the workgroup fills A's slab, the second B's. Along k, a slot of the first BM·BK/16 takes a
// block of four rows × four k (four loads) and stores it transposed, four whole vec4s of
// four m for one k; with WEIGHT_T, B's slot takes four classes of one k, a vec4 already.
// Else a value at a time.
fn load_slabs(m0: u32, n0: u32, k0: u32, local: u32) {
    let u = slot(local);
    if (!LINEAR_VEC4) {
        load_slabs_scalar(m0, n0, k0, local);
    } else if (local >= WG / 2u && WEIGHT_T) {
        let at = across4(u);
        put_b4(at, load_b4(n0 + at.y, k0 + at.x));
    } else if (u < BM * BK / 16u) {
        let kq = (u % (BK / 4u)) * 4u;
        let r = (u / (BK / 4u)) * 4u;
        var rows: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            if (local < WG / 2u) {
                rows[i] = load_a4(m0 + r + i, k0 + kq);
            } else {
                rows[i] = load_b4(n0 + r + i, k0 + kq);
            }
        }
        for (var q = 0u; q < 4u; q++) {
            let column = vec4(rows[0][q], rows[1][q], rows[2][q], rows[3][q]);
            if (local < WG / 2u) { put_a4(vec2(kq + q, r), column); } else { put_b4(vec2(kq + q, r), column); }
        }
    }
}

// Where the chunked strategy keeps x of (row, c) (STORED_LOGITS, `linear_partials.wgsl`): the
// chunk k = c / w of w = block_columns columns holds the bound rows × its width, row-major.
fn stored_index(row: u32, c: u32) -> u32 {
    let w = p.block_columns;
    let k0 = c / w * w;
    return k0 * p.rows + row * min(w, p.classes - k0) + c - k0;
}
