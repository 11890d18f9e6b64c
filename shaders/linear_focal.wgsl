// Linear cross-entropy, focal loss with label smoothing, step 1 of 2: every class's focal
// terms need the row's final log-sum-exp, so after the rows pass the logits are recomputed
// (the forward's tile product and operands, the same sums) and each row's two focal sums
// over the split's columns are written (the math is `softmax_focal.wgsl`'s):
//   x: Σ_c a[c]·f[c]·l[c],   y: Σ_c a[c]·g[c],
// with l[c] = (z[c] − max) − log_sum from the row's coefficients, a[c] = w[c]·t'[c]
// (t' = (1−ε)·[c = y] + ε/C) and (f, g) = focal_factors(l). Rows that are ignored or already
// NaN give 0.
//
// The chunked strategy (STORED_LOGITS) reads the group's logits its forward stored (bias
// included) instead of recomputing them; a tile of rows that count for nothing (SKIP_IGNORED,
// `linear_order.wgsl`) writes zero sums and takes no product.
//
// Launch: as linear_partials.wgsl (16 × 16 invocations own 64 rows × one split, 64-column
// tiles); the 16 invocations of a row add their sums by a fixed tree.
// Bytes: h and W as the forward; 8 written per (row, split).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(8) var<storage, read> coefs: array<RowCoef>;
@group(0) @binding(22) var<storage, read> head_bias: array<f32>;
@group(0) @binding(26) var<storage, read_write> focal_partials: array<vec2<f32>>;

var<workgroup> sums: array<vec2<f32>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    let r0 = group.x * BM;
    let split = p.split0 + group.y;
    let c0 = split * p.span;
    let c1 = min(c0 + p.span, p.classes);
    b_end = c1;

    // A tile of rows that count for nothing (`bound_row` order): zero sums, no product.
    if (r0 >= rows_that_count(local)) {
        let v = r0 + local;
        if (local < BM && v < p.rows) {
            focal_partials[bound_row(v) * p.splits + split] = vec2(0.0);
        }
        return;
    }
    let stored = has(FLAG_STORED_LOGITS);
    var acc: array<vec2<f32>, TM>;
    for (var n0 = c0; n0 < c1; n0 += BN) {
        var x: array<vec4<f32>, 4>;
        if (!stored) { x = tile_product(r0, n0, p.hidden, local); }
        for (var i = 0u; i < TM; i++) {
            let v = r0 + ty * TM + i;
            if (v >= p.rows) { continue; }
            let row = bound_row(v);
            let k = coefs[row];
            if (k.fill != FILL_COMPUTE) { continue; }
            for (var j = 0u; j < TN; j++) {
                let c = n0 + tx * TN + j;
                if (c >= c1) { continue; }
                var xv = x[i][j];
                if (stored) {
                    xv = logits[stored_index(row, c)];
                } else if (has(FLAG_BIAS)) {
                    xv += head_bias[c];
                }
                let l = coef_log_p(k, z_of(xv));
                var t = p.uniform;
                if (i32(c) == k.y) { t += 1.0 - p.smoothing; }
                let a = select(1.0, weights[c], has(FLAG_WEIGHTS)) * t;
                let fg = focal_factors(l);
                acc[i] += vec2(term(a, fg.x * l), a * fg.y);
            }
        }
    }

    // The 16 invocations of each row add their sums: a fixed tree over tx.
    for (var i = 0u; i < TM; i++) {
        sums[local] = acc[i];
        workgroupBarrier();
        for (var stride = SIDE / 2u; stride > 0u; stride /= 2u) {
            if (tx < stride) { sums[local] = sums[local] + sums[local + stride]; }
            workgroupBarrier();
        }
        let v = r0 + ty * TM + i;
        if (tx == 0u && v < p.rows) { focal_partials[bound_row(v) * p.splits + split] = sums[local]; }
        workgroupBarrier();
    }
}
