// Linear cross-entropy backward, step 1 of 3 per vocabulary chunk: G = dloss/dx of the chunk's
// columns for every row, from its logits recomputed (x = h·Wᵀ + b, the tile product of
// `linear_partials.wgsl`, the same sums in the same order) and the row coefficients the rows
// pass wrote: G[r][c] = element_gradient (softmax_grad.wgsl: SEMANTICS.md sections 1-2c with
// the reduction's scales).
//
// The chunked strategy (STORED_LOGITS) finds the chunk's x already in `gradient`, written by
// the forward, and turns them into G in place: no product, 8 bytes per value.
//
// Launch: 16 × 16 invocations per workgroup; grid x = row tiles of 64 (in `bound_row`
// order), y = column tiles of 64
// of the chunk (columns col0 .. col0 + span of the vocabulary; W bound from row col0, or
// whole with WEIGHT_T).
// Bytes: h and W read once per tile (e·D·(64 + 64) per 64 × 64 values), G written once (4 per
// value); the coefficients 32 bytes per row per tile.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> gradient: array<f32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(8) var<storage, read> coefs: array<RowCoef>;
// Per-row upstream values (none), the reduced totals (mean), or unused: see `row_scales`.
@group(0) @binding(10) var<storage, read> scale_source: array<f32>;
@group(0) @binding(22) var<storage, read> head_bias: array<f32>;

// The tile product's operands: include `linear_logits.wgsl` (b_end: the chunk's end).

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    let r0 = group.x * BM;
    let n0 = p.col0 + group.y * BN;
    let c1 = min(p.col0 + p.span, p.classes);
    b_end = c1;
    let stored = has(FLAG_STORED_LOGITS);
    // A tile of rows that count for nothing (`bound_row` order): G is 0 there, no product
    // (nor stored logits) needed.
    let live = r0 < rows_that_count(local);
    var acc: array<vec4<f32>, 4>;
    if (!stored && live) { acc = tile_product(r0, n0, p.hidden, local); }
    for (var i = 0u; i < TM; i++) {
        let v = r0 + ty * TM + i;
        if (v >= p.rows) { continue; }
        let row = bound_row(v);
        let k = coefs[row];
        let ab = row_scales(k, row);
        for (var j = 0u; j < TN; j++) {
            let c = n0 + tx * TN + j;
            if (c >= c1) { continue; }
            let at = row * p.span + c - p.col0;
            if (!live) {
                gradient[at] = 0.0;
                continue;
            }
            var x = acc[i][j];
            if (stored) {
                x = gradient[at];
            } else if (has(FLAG_BIAS)) {
                x += head_bias[c];
            }
            gradient[at] = element_gradient(k, ab, c, x, 0.0);
        }
    }
}
