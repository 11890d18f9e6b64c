// Softmax forward, pass 2 of 3: per-row loss, log-sum-exp, metrics and gradient coefficients.
//
// Math (SEMANTICS.md sections 2, 2b, 3, 5, 6): merge the row's splits in split order, then
//   lse = m + ln s (−inf if every z is −inf, +inf with a +inf, NaN with a NaN),
//   index targets: ce = −(1−ε)·w[y]·(z[y] − lse) + (ε/C)·(W·lse − Σ w·z),
//   dense targets: ce = lse·Σ w·t' − Σ w·t'·z  with t' = (1−ε)·t + ε/C,
//   loss = s[n]·(ce + λ·lse²);  a +inf logit or a NaN makes the row NaN (PyTorch).
// Focal loss (section 2c) with index targets and no smoothing needs only p[y]:
//   ce = −w[y]·(1 − p[y])^γ·logp[y], and the gradient coefficients of plain cross-entropy
//   with w[y] replaced by w[y]·g[y] (`focal_factors`). With smoothing or soft targets this pass
//   writes plain cross-entropy and the focal pass (`softmax_focal.wgsl`) overwrites the loss.
// Sample weights s[n] multiply the row's loss and its (ce, z, weight, count) sums, and are kept
// in the row's coefficients for the backward pass; a row is NaN by its unweighted loss.
// Probability inputs use lse = 0 and z = ln clamp(q) (focal loss too: p = clamp(q)). A valid row whose target is outside
// [0, C) (flagged by the partials pass) is not read: it is treated as ignored, so a bad target
// can't make the kernel read out of bounds.
//
// Launch: one invocation per row; WG rows per workgroup.
// Bytes per row: reads 48 per split, one logit, the target, w[y] and s[n]; writes 96. Nothing
// per logit.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read> partials: array<Partial>;
@group(0) @binding(6) var<storage, read_write> row_out: array<RowOut>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> coefs: array<RowCoef>;
@group(0) @binding(17) var<storage, read> sample_weights: array<f32>;

fn weight(c: u32) -> f32 { return select(1.0, weights[c], has(FLAG_WEIGHTS)); }

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = id.x + id.y * groups.x * WG;
    if (row >= p.rows) { return; }
    let global_row = p.row0 + row;
    var st = partials[global_row * p.splits];
    for (var k = 1u; k < p.splits; k++) { st = merge(st, partials[global_row * p.splits + k]); }

    let probabilities = p.prob_eps > 0.0;
    let eps = p.smoothing;
    let uniform = eps / f32(p.classes);
    let weight_sum = st.w_all;
    let nan_row = st.nan_arg != NONE;
    var lse = st.m + log(st.s);
    if (nan_row) { lse = nan(); } else if (st.m == neg_inf() || st.m == pos_inf()) { lse = st.m; }
    // Probability inputs are not renormalized: log p = z, as if lse were 0.
    let lse_used = select(lse, 0.0, probabilities);
    let broken = nan_row || lse == pos_inf();
    let scale_m = select(1.0 / st.s, exp(st.m), probabilities); // turns Σ e^(z−m)·f into Σ p·f

    var out: RowOut;
    out.lse = select(lse, 0.0, probabilities);
    out.argmax = select(st.arg, st.nan_arg, nan_row);
    out.entropy = select(lse - st.ez / st.s, -st.ez * exp(st.m), probabilities);
    out.confidence = select(exp(st.m - lse), exp(st.m), probabilities);
    var valid = true;
    var correct = false;
    var ce = 0.0;
    var coef: RowCoef;
    coef.y = -1;
    coef.wy = 0.0;
    var weight_of_row = 1.0;

    if (has(FLAG_DENSE)) {
        let wt = (1.0 - eps) * st.wt + uniform * weight_sum;
        let wtz = (1.0 - eps) * st.wtz + uniform * st.wz;
        ce = select(wt * lse_used - wtz, nan(), broken);
        out.target_prob = st.te * scale_m;
        correct = st.targ == out.argmax;
        coef.kce = wt;
    } else {
        let y = load_target(global_row, p.ignore_lo, p.ignore_hi);
        valid = y.y == 0 && y.x >= 0 && u32(y.x) < p.classes;
        if (valid) {
            let c = u32(y.x);
            let x = load_x(elem_index(row, c));
            let z = z_of(x);
            let logp = select(z - lse_used, nan(), broken);
            let wy = weight(c);
            ce = -(1.0 - eps) * wy * logp;
            if (eps > 0.0) { ce += uniform * (weight_sum * lse_used - st.wz); }
            out.target_prob = exp(logp);
            correct = out.argmax == c;
            coef.y = y.x;
            coef.wy = (1.0 - eps) * wy;
            coef.kce = (1.0 - eps) * wy + uniform * weight_sum;
            weight_of_row = wy;
            if (p.focal_gamma > 0.0 && !has(FLAG_FOCAL_ALL)) {
                // ε = 0: coef.wy stays w[y]; the backward pass multiplies it by g[y].
                let fg = focal_factors(logp);
                ce = -wy * fg.x * logp;
                coef.kce = wy * fg.y;
            }
        } else {
            out.target_prob = 0.0;
        }
    }
    if (probabilities) { coef.kce = 0.0; }
    let use_z = p.z_loss > 0.0 && !probabilities;
    let z_term = select(0.0, p.z_loss * lse * lse, use_z && valid);
    ce = select(0.0, ce, valid);
    let sw = select(1.0, sample_weights[global_row], has(FLAG_SAMPLE_WEIGHTS));
    let unweighted = select(ce + z_term, nan(), is_nan(ce));
    out.loss = sw * unweighted;
    out.flags = select(0u, 1u, valid) | select(0u, 2u, correct && valid);
    row_out[global_row] = out;
    row_sums[global_row] =
        select(vec4(0.0), sw * vec4(ce, z_term, weight_of_row, 1.0), valid);
    // lse = max + log_sum; probability inputs use lse = 0, so coef_log_p(k, z) = z = ln p.
    let split = !nan_row && st.m != neg_inf() && st.m != pos_inf() && !probabilities;
    coef.max = select(select(lse, st.m, split), 0.0, probabilities);
    coef.log_sum = select(0.0, log(st.s), split);
    coef.fill = select(select(0u, 2u, is_nan(unweighted)), 1u, !valid);
    coef.sample = sw;
    coefs[global_row] = coef;
}
