// Softmax backward, pass 3 of 3: the gradient with respect to the logits, from the saved LSE.
//
// Math (SEMANTICS.md sections 1-3): with p = exp(z − lse) and the row's coefficients,
//   dz[c] = (a·p_coefficient + b·2λ·lse)·p[c] − a·w[c]·(B·t[c] + ε/C) − a·(1−ε)·w[y]·[c = y],
//   dx[c] = dz[c]·dz/dx,
// where a (cross-entropy part) and b (z-loss part) are the reduction's scales times the row's
// sample weight s[n]: the upstream value per row for `none`, the scalar upstream for `sum`, and
// upstream/D, upstream/Σs for `mean`, D and Σs read from the reduced totals, so
// device-resident calls need no readback. Focal loss (section 2c): the two subtracted terms
// are multiplied by the class's g[c] = focal_factors(z[c] − lse).y, and p_coefficient is the row's
// Σ_k a[k]·g[k] (from the rows or the focal pass).
// Vocab-parallel shards pass the scales already folded into the row coefficients
// (reduction 3) and ε/C with the global C.
// Probability inputs: p_coefficient = 0 and dz/dq = 1/q (0 where q was clamped); with focal loss g[c]
// comes from l = ln clamp(q) (the rows pass saves lse = 0), so dq = −a[c]·g[c]/q.
// Ignored rows get 0, rows whose loss is NaN get NaN. The per-element math is
// `element_gradient` (include `softmax_grad.wgsl`), shared with the fused kernel.
//
// Launch: flat over the chunk's elements; one invocation owns 4 consecutive elements (whole
// words for f16/bf16, so in-place stores never share a word between invocations), read with
// one 16-byte load (f32 bound as vec4) or two words (f16/bf16) where they are 4-aligned; a 2D
// grid when there are more than 65 535 workgroups. Contiguous rows: the first element's
// (row, class) is found by one division, the rest step along the row, and the row's
// coefficients and scales are read once per row the invocation touches, not per element
// (the per-element work stays far under a real GPU's bandwidth; the (N, C, d…) layout's
// neighbours are in different rows and locate each).
// Bytes per logit: reads 4 (f32) or 2 (f16/bf16) plus 4 per dense target, writes 4 (out of
// place, f32) or the logit's own width (in place). With the forward, 2 reads + 1 write.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(8) var<storage, read> coefs: array<RowCoef>;
// Per-row upstream values (none), the reduced totals (mean), or unused: see `row_scales`.
@group(0) @binding(10) var<storage, read> scale_source: array<f32>;

// (row within the chunk, class) of flat element f of the chunk (contiguous rows: the chunk
// starts at class col0 of its first row, so a window needn't start on a row).
fn locate(f: u32) -> vec2<u32> {
    if (p.spatial == 0u) { return vec2((f + p.col0) / p.classes, (f + p.col0) % p.classes); }
    let plane = p.classes * p.spatial;
    let n = f / plane;
    let rest = f - n * plane;
    let c = rest / p.spatial;
    return vec2(n * p.spatial + rest - c * p.spatial, c);
}

fn dense_at(f: u32) -> f32 {
    return select(0.0, dense_target(p.f32_offset + f), has(FLAG_DENSE));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = 4u * (id.x + id.y * groups.x * WG);
    if (first >= p.elems) { return; }
    let n = min(4u, p.elems - first);
    let at = p.elem_offset + first;
    var xs = vec4(0.0);
    if (n == 4u && (at & 3u) == 0u) {
        xs = load4(at >> 2u);
    } else {
        for (var k = 0u; k < n; k++) { xs[k] = load_x(at + k); }
    }
    var dx = vec4(0.0);
    if (p.spatial == 0u) {
        let start = locate(first);
        var row = p.row0 + start.x;
        var c = start.y;
        var coef = coefs[row];
        var ab = row_scales(coef, row);
        for (var k = 0u; k < n; k++) {
            if (c == p.classes) {
                c = 0u;
                row += 1u;
                coef = coefs[row];
                ab = row_scales(coef, row);
            }
            dx[k] = element_gradient(coef, ab, c, xs[k], dense_at(first + k));
            c += 1u;
        }
    } else {
        for (var k = 0u; k < n; k++) {
            let at = locate(first + k);
            let row = p.row0 + at.x;
            let coef = coefs[row];
            dx[k] = element_gradient(coef, row_scales(coef, row), at.y, xs[k], dense_at(first + k));
        }
    }
    store_dx(first, dx, n);
}
