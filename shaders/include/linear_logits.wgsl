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

// With LINEAR_VEC4 the first half of the workgroup loads A's slab and the second half B's,
// one 16-byte load each (a slab row of BK = 8 is two of them; with WEIGHT_T, a row of B's
// slab, BN = 64 classes, is sixteen); else scalars.
const_assert WG / 2u == BM * BK / 4u;
fn load_slabs(m0: u32, n0: u32, k0: u32, local: u32) {
    if (!LINEAR_VEC4) {
        load_slabs_scalar(m0, n0, k0, local);
        return;
    }
    let e = local % (WG / 2u);
    let r = e / (BK / 4u);
    let kq = (e % (BK / 4u)) * 4u;
    if (local < WG / 2u) {
        let v = load_a4(m0 + r, k0 + kq);
        for (var q = 0u; q < 4u; q++) { put_a(kq + q, r, v[q]); }
    } else if (WEIGHT_T) {
        let k = e / (BN / 4u);
        let c = (e % (BN / 4u)) * 4u;
        // Four classes of one k: a whole vec4 of the slab.
        b_slab[k * (BN / 4u) + c / 4u] = load_b4(n0 + c, k0 + k);
    } else {
        let v = load_b4(n0 + r, k0 + kq);
        for (var q = 0u; q < 4u; q++) { put_b(kq + q, r, v[q]); }
    }
}

// Where the chunked strategy keeps x of (row, c) (STORED_LOGITS, `linear_partials.wgsl`): the
// chunk k = c / w of w = block_columns columns holds the bound rows × its width, row-major.
fn stored_index(row: u32, c: u32) -> u32 {
    let w = p.block_columns;
    let k0 = c / w * w;
    return k0 * p.rows + row * min(w, p.classes - k0) + c - k0;
}
