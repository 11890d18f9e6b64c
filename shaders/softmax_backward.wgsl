// Softmax backward, pass 3 of 3: the gradient with respect to the logits, from the saved LSE.
//
// Math (SEMANTICS.md sections 1-3): with p = exp(z − lse) and the row's coefficients,
//   dz[c] = (a·kce + b·2λ·lse)·p[c] − a·w[c]·(B·t[c] + ε/C) − a·(1−ε)·w[y]·[c = y],
//   dx[c] = dz[c]·dz/dx,
// where a (cross-entropy part) and b (z-loss part) are the reduction's scales times the row's
// sample weight s[n]: the upstream value per row for `none`, the scalar upstream for `sum`, and
// upstream/D, upstream/Σs for `mean`, D and Σs read from the reduced totals, so
// device-resident calls need no readback. Focal loss (section 2c): the two subtracted terms
// are multiplied by the class's g[c] = focal_factors(z[c] − lse).y, and kce is the row's
// Σ_k a[k]·g[k] (from the rows or the focal pass).
// Vocab-parallel shards pass the scales already folded into the row coefficients
// (reduction 3) and ε/C with the global C.
// Probability inputs: kce = 0 and dz/dq = 1/q (0 where q was clamped); with focal loss g[c]
// comes from l = ln clamp(q) (the rows pass saves lse = 0), so dq = −a[c]·g[c]/q.
// Ignored rows get 0, rows whose loss is NaN get NaN.
//
// Launch: flat over the chunk's elements; one invocation owns 4 consecutive elements (whole
// words for f16/bf16, so in-place stores never share a word between invocations); a 2D grid
// when there are more than 65 535 workgroups.
// Bytes per logit: reads 4 (f32) or 2 (f16/bf16) plus 4 per dense target, writes 4 (out of
// place, f32) or the logit's own width (in place). With the forward, 2 reads + 1 write.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(8) var<storage, read> coefs: array<RowCoef>;
@group(0) @binding(10) var<storage, read> totals: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> upstream: array<f32>;

// (row within the chunk, class) of flat element f of the chunk.
fn locate(f: u32) -> vec2<u32> {
    if (p.spatial == 0u) { return vec2(f / p.classes, f % p.classes); }
    let plane = p.classes * p.spatial;
    let n = f / plane;
    let rest = f - n * plane;
    let c = rest / p.spatial;
    return vec2(n * p.spatial + rest - c * p.spatial, c);
}

// (a, b) for a global row.
fn scales(global_row: u32) -> vec2<f32> {
    if (p.reduction == 0u) {
        let u = select(1.0, upstream[global_row], has(FLAG_UPSTREAM));
        return vec2(u, u);
    }
    if (p.reduction == 1u) { return vec2(p.upstream, p.upstream); }
    let t = totals[0];
    return vec2(p.upstream / t.z, p.upstream / t.w);
}

fn gradient(f: u32) -> f32 {
    let at = locate(f);
    let row = p.row0 + at.x;
    let c = at.y;
    let k = coefs[row];
    if (k.fill == 1u) { return 0.0; }
    if (k.fill == 2u) { return nan(); }
    let ab = scales(row) * k.sample;
    let x = load_x(p.elem_offset + f);
    let z = z_of(x);
    let prob = select(exp(coef_log_p(k, z)), 0.0, p.prob_eps > 0.0);
    let zcoef = select(0.0, 2.0 * p.z_loss * coef_lse(k), p.z_loss > 0.0 && p.prob_eps == 0.0);
    let w = select(1.0, weights[c], has(FLAG_WEIGHTS));
    var per_class = p.uniform;
    if (has(FLAG_DENSE)) { per_class += (1.0 - p.smoothing) * dense_target(p.f32_offset + f); }
    var p_coef = ab.x * k.kce + ab.y * zcoef;
    var a = ab.x;
    var target_term = ab.x * k.wy;
    if (p.reduction == 3u) {
        p_coef = k.kce;
        a = k.scale;
        target_term = k.wy;
    }
    var dz = p_coef * prob - a * w * per_class;
    if (i32(c) == k.y) { dz -= target_term; }
    if (p.focal_gamma > 0.0) {
        var subtracted = a * w * per_class;
        if (i32(c) == k.y) { subtracted += target_term; }
        dz = p_coef * prob - subtracted * focal_factors(coef_log_p(k, z)).y;
    }
    return dz * slope(x, z);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = 4u * (id.x + id.y * groups.x * WG);
    if (first >= p.elems) { return; }
    let n = min(4u, p.elems - first);
    var dx = vec4(0.0);
    for (var k = 0u; k < n; k++) { dx[k] = gradient(first + k); }
    store_dx(first, dx, n);
}
