// Linear cross-entropy backward, step 2 of 3 per vocabulary chunk: the chunk's rows of the
// head's gradients, dW[c][k] = Σ_r G[r][c]·h[r][k] and db[c] = Σ_r G[r][c], summed over the
// rows in order (no atomics: each value has one owner; with SKIP_IGNORED dW over the rows
// that count only, `linear_order.wgsl`, G being 0 on the others); a chunk of rows after the first adds
// (FLAG_ADD to dW, FLAG_ADD_BIAS to db), in row order, as does a caller's buffer that
// accumulates.
//
// Launch: 16 × 16 invocations per workgroup; grid x = tiles of 64 of the chunk's columns (the
// rows of dW), y = tiles of 64 of the hidden size. The tile product (linear_tile.wgsl) with
// A = Gᵀ (read along the chunk's columns) and B = hᵀ (read along D): dW's tile [c][k]. With
// WEIGHT_T (W and dW stored [D, V], dW bound whole) the operands swap, A = hᵀ and B = Gᵀ, for
// the tile [k][c], so that neighbouring invocations write neighbouring classes of a dW row.
// The workgroups of the first hidden tile also sum db, one invocation per column.
// FLAG_BIAS_ONLY (db asked, dW not): only the first hidden tile's workgroups run, and they skip
// the product; FLAG_WEIGHT_ONLY (dW asked, db not): no workgroup sums db.
// Bytes: G and h read once per tile (4·64 + e·64 per row), dW written once (4 per value); h
// four values a load where D is a multiple of 4, G a value at a time (its rows are the chunk's
// width, any number).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> gradient: array<f32>;
@group(0) @binding(23) var<storage, read_write> weight_gradient: array<f32>;
@group(0) @binding(24) var<storage, read_write> bias_gradient: array<f32>;

const A_ALONG_K: bool = false;
const B_ALONG_K: bool = false;
// The rows the product sums over: those that count, in `bound_row` order.
var<private> summed_rows: u32;
// G[r][c] (c local to the chunk) and h[r][k] of r = bound_row(v), 0 outside.
fn g_at(c: u32, v: u32) -> f32 {
    if (c >= p.span || v >= summed_rows) { return 0.0; }
    return gradient[bound_row(v) * p.span + c];
}
fn h_at(k: u32, v: u32) -> f32 {
    if (k >= p.hidden || v >= summed_rows) { return 0.0; }
    return load_h(bound_row(v) * p.hidden + k);
}
// A[c][r] = G[r][c] and B[k][r] = h[r][k], or swapped with WEIGHT_T.
fn load_a(m: u32, r: u32) -> f32 {
    if (WEIGHT_T) { return h_at(m, r); }
    return g_at(m, r);
}
fn load_b(n: u32, r: u32) -> f32 {
    if (WEIGHT_T) { return g_at(n, r); }
    return h_at(n, r);
}

// h four hidden values a load where the variant reads it so (LINEAR_VEC4: D a multiple of 4):
// B[k..k+4][r] (A with WEIGHT_T) is a whole vec4 of its slab; G a value at a time.
fn h4_at(k: u32, v: u32) -> vec4<f32> {
    if (k >= p.hidden || v >= summed_rows) { return vec4(0.0); }
    return load_h4((bound_row(v) * p.hidden + k) / 4u);
}
fn load_slabs(m0: u32, n0: u32, k0: u32, local: u32) {
    if (!LINEAR_VEC4) {
        load_slabs_scalar(m0, n0, k0, local);
        return;
    }
    let u = slot(local);
    let at = across4(u);
    if (WEIGHT_T && local < WG / 2u) {
        put_a4(at, h4_at(m0 + at.y, k0 + at.x));
    } else if (WEIGHT_T) {
        fill_b_scalar(n0, k0, u);
    } else if (local < WG / 2u) {
        fill_a_scalar(m0, k0, u);
    } else {
        put_b4(at, h4_at(n0 + at.y, k0 + at.x));
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    // The tile's first column of the chunk and first k.
    let c0 = group.x * BM;
    let k0 = group.y * BN;
    // Uniform: every invocation of the workgroup takes the same branch (the tile's barriers).
    if (!has(FLAG_BIAS_ONLY)) {
        var m0 = c0;
        var n0 = k0;
        if (WEIGHT_T) { m0 = k0; n0 = c0; }
        // Rows that count for nothing have G = 0: summed over the others only, in row order.
        // The depth from the uniform value (a private variable is not, for the barriers).
        let summed = rows_that_count(local);
        summed_rows = summed;
        let acc = tile_product(m0, n0, summed, local);
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) {
                var c = m0 + ty * TM + i;
                var k = n0 + tx * TN + j;
                if (WEIGHT_T) { k = m0 + ty * TM + i; c = n0 + tx * TN + j; }
                if (c >= p.span || k >= p.hidden) { continue; }
                var at = c * p.hidden + k;
                if (WEIGHT_T) { at = k * p.classes + p.col0 + c; }
                if (has(FLAG_ADD)) {
                    weight_gradient[at] += acc[i][j];
                } else {
                    weight_gradient[at] = acc[i][j];
                }
            }
        }
    }
    if (group.y == 0u && local < BM && !has(FLAG_WEIGHT_ONLY)) {
        let c = c0 + local;
        if (c < p.span) {
            var s = 0.0;
            for (var r = 0u; r < p.rows; r++) { s += gradient[r * p.span + c]; }
            if (has(FLAG_ADD_BIAS)) { bias_gradient[c] += s; } else { bias_gradient[c] = s; }
        }
    }
}
