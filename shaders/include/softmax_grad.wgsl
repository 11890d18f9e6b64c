// The gradient of one element from its row's coefficients, shared by the backward pass and the
// fused kernel (the math is in `softmax_backward.wgsl`'s header). Needs `weights` (binding 4)
// and `scale_source` (binding 10): the per-row upstream values for `none` (when
// FLAG_UPSTREAM), the reduced totals (ce, z, D, Σs) for `mean`, followed by the scalar
// upstream for `sum` and `mean` with FLAG_DEVICE_UPSTREAM, unread otherwise.

// (a, b) of a global row: the reduction's scales times the row's sample weight.
// With FLAG_DEVICE_UPSTREAM the scalar upstream of sum and mean is scale_source[4] (a
// recorded backward's block: the saved totals, then the caller's upstream).
fn row_scales(k: RowCoef, global_row: u32) -> vec2<f32> {
    var upstream = p.upstream;
    if (has(FLAG_DEVICE_UPSTREAM)) { upstream = scale_source[4]; }
    var ab = vec2(upstream, upstream);
    if (p.reduction == REDUCTION_NONE) {
        let u = select(1.0, scale_source[global_row], has(FLAG_UPSTREAM));
        ab = vec2(u, u);
    } else if (p.reduction == REDUCTION_MEAN) {
        ab = vec2(upstream / scale_source[2], upstream / scale_source[3]);
    }
    return ab * k.sample;
}

// dx of class `c` with raw value `x` (and dense target `t`, 0 for index targets) in a row with
// coefficients `k` and scales `ab` (`row_scales`).
fn element_gradient(k: RowCoef, ab: vec2<f32>, c: u32, x: f32, t: f32) -> f32 {
    if (k.fill == FILL_ZERO) { return 0.0; }
    if (k.fill == FILL_NAN) { return nan(); }
    let z = z_of(x);
    let prob = select(exp(coef_log_p(k, z)), 0.0, p.prob_eps > 0.0);
    let zcoef = select(0.0, 2.0 * p.z_loss * coef_lse(k), p.z_loss > 0.0 && p.prob_eps == 0.0);
    let w = select(1.0, weights[c], has(FLAG_WEIGHTS));
    var per_class = p.uniform;
    if (has(FLAG_DENSE)) { per_class += (1.0 - p.smoothing) * t; }
    var p_coef = ab.x * k.p_coefficient + ab.y * zcoef;
    var a = ab.x;
    var target_term = ab.x * k.target_coefficient;
    if (p.reduction == REDUCTION_PRESCALED) {
        p_coef = k.p_coefficient;
        a = k.scale;
        target_term = k.target_coefficient;
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
