// Linear cross-entropy backward, step 3 of 3 per vocabulary chunk: dh[r][k] += Σ_c G[r][c]·W[c][k]
// over the chunk's columns, the chunks added in vocabulary order (the first writes, FLAG_ADD
// after it), so two runs give the same bits.
//
// Launch: 16 × 16 invocations per workgroup; grid x = row tiles of 64 (in `bound_row` order),
// y = tiles of 64 of the hidden size. The tile product (linear_tile.wgsl) with A = G (read
// along the chunk's columns) and B = Wᵀ of the chunk (read along D; W bound from row col0),
// or with WEIGHT_T (W stored [D, V], bound whole) read along the chunk's columns.
// Loads: W [V, D] four values a load where D is a multiple of 4, G a value at a time.
// Bytes: G and W read once per tile (4·64 + e·64 per column), dh read and written once per
// chunk (8 per value).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> gradient: array<f32>;
@group(0) @binding(25) var<storage, read_write> hidden_gradient: array<f32>;

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = WEIGHT_T;
// A[v][c] = G[bound_row(v)][c], B[k][c] = W[col0 + c][k] (with WEIGHT_T stored at
// W[k][col0 + c]).
fn load_a(v: u32, c: u32) -> f32 {
    if (v >= p.rows || c >= p.span) { return 0.0; }
    return gradient[bound_row(v) * p.span + c];
}
fn load_b(k: u32, c: u32) -> f32 {
    if (k >= p.hidden || c >= p.span) { return 0.0; }
    if (WEIGHT_T) { return load_w(k * p.classes + p.col0 + c); }
    return load_w(c * p.hidden + k);
}

// W four hidden values a load where the variant reads it so (LINEAR_VEC4: D a multiple of 4)
// and it is stored [V, D]: B[k..k+4][c] = W[col0 + c][k..k+4] is a whole vec4 of its slab; G
// a value at a time.
fn w4_at(k: u32, c: u32) -> vec4<f32> {
    if (k >= p.hidden || c >= p.span) { return vec4(0.0); }
    return load_w4((c * p.hidden + k) / 4u);
}
fn load_slabs(m0: u32, n0: u32, k0: u32, local: u32) {
    if (!LINEAR_VEC4 || WEIGHT_T) {
        load_slabs_scalar(m0, n0, k0, local);
        return;
    }
    let u = slot(local);
    let at = across4(u);
    if (local < WG / 2u) {
        fill_a_scalar(m0, k0, u);
    } else {
        put_b4(at, w4_at(n0 + at.y, k0 + at.x));
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    let r0 = group.x * BM;
    let n0 = group.y * BN;
    // A tile of rows that count for nothing (`bound_row` order): their dh is 0, no product.
    let live = r0 < rows_that_count(local);
    var acc: array<vec4<f32>, 4>;
    if (live) { acc = tile_product(r0, n0, p.span, local); }
    for (var i = 0u; i < TM; i++) {
        let v = r0 + ty * TM + i;
        if (v >= p.rows) { continue; }
        let r = bound_row(v);
        for (var j = 0u; j < TN; j++) {
            let k = n0 + tx * TN + j;
            if (k >= p.hidden) { continue; }
            let at = r * p.hidden + k;
            if (has(FLAG_ADD)) {
                hidden_gradient[at] += acc[i][j];
            } else {
                hidden_gradient[at] = acc[i][j];
            }
        }
    }
}
