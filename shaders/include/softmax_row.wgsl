// The end of a row's forward, shared by the rows pass and the fused kernel: from the row's
// merged Partial, its loss, LSE and metrics (RowOut), its sums for the reduction and the
// coefficients of its gradient (RowCoef). The math is in `softmax_rows.wgsl`'s header. Reads
// the row's target, its logit (`target_x`, defined by the kernel), w[y] and s[n]; needs
// `weights` (binding 4), `sample_weights` (binding 17) and the targets bound by the kernel.

struct RowResult {
    out: RowOut,
    sums: vec4<f32>, // s[n]·(ce, z-loss, w[y], 1) for a valid row, else 0
    coef: RowCoef,
}

fn weight(c: u32) -> f32 { return select(1.0, weights[c], has(FLAG_WEIGHTS)); }

// The row `row` of the chunk, whose splits have been merged into `st`.
fn finish_row(st: Partial, row: u32) -> RowResult {
    let global_row = p.row0 + row;
    let probabilities = p.prob_eps > 0.0;
    let eps = p.smoothing;
    let uniform = eps / f32(p.classes);
    let weight_sum = st.w_all;
    let nan_row = st.nan_arg != NONE;
    var lse = st.m + log(st.s);
    if (nan_row) { lse = nan(); } else if (st.m == neg_inf() || st.m == pos_inf()) { lse = st.m; }
    // A NaN or +inf logit, or a row of −inf only, makes the row NaN (lse is then not finite).
    let broken = nan_row || st.m == neg_inf() || st.m == pos_inf();
    // Every log p is (z − m) − log_s (SEMANTICS.md section 1), never z − lse; the centred sums
    // Σ k·(z − m) give Σ k·log p = Σ k·(z − m) − log_s·Σ k. Probability inputs are not
    // renormalized: log p = z = (z − m) + m, so log_s = −m there.
    let log_s = select(log(st.s), -st.m, probabilities);
    let scale_m = select(1.0 / st.s, exp(st.m), probabilities); // turns Σ e^(z−m)·f into Σ p·f

    var out: RowOut;
    out.lse = select(lse, 0.0, probabilities);
    out.argmax = select(st.arg, st.nan_arg, nan_row);
    // log Σ e^(z−m) − Σ e^(z−m)·(z − m) / Σ e^(z−m); with probabilities −Σ p·log p.
    let entropy = select(log(st.s) - st.ez / st.s, nan(), broken);
    out.entropy = select(entropy, -recentre(st.ez, st.s, st.m, 0.0) * exp(st.m), probabilities);
    out.confidence = select(select(1.0 / st.s, nan(), broken), exp(st.m), probabilities);
    var valid = true;
    var correct = false;
    var ce = 0.0;
    var coef: RowCoef;
    coef.y = -1;
    coef.target_coefficient = 0.0;
    var weight_of_row = 1.0;

    if (has(FLAG_DENSE)) {
        let wt = term(1.0 - eps, st.wt) + uniform * weight_sum;
        let wtz = term(1.0 - eps, st.wtz) + term(uniform, st.wz);
        ce = wt * log_s - wtz;
        out.target_prob = st.te * scale_m;
        correct = st.targ == out.argmax;
        coef.p_coefficient = wt;
    } else {
        let y = load_target(global_row, p.ignore_lo, p.ignore_hi);
        valid = y.y == 0 && y.x >= 0 && u32(y.x) < p.classes;
        if (valid) {
            let c = u32(y.x);
            let x = target_x(row, c);
            let z = z_of(x);
            let logp = select((z - st.m) - log_s, nan(), broken);
            let wy = weight(c);
            ce = -term(1.0 - eps, term(wy, logp));
            if (eps > 0.0) { ce += term(uniform, weight_sum * log_s - st.wz); }
            out.target_prob = exp(logp);
            correct = out.argmax == c;
            coef.y = y.x;
            coef.target_coefficient = (1.0 - eps) * wy;
            coef.p_coefficient = (1.0 - eps) * wy + uniform * weight_sum;
            weight_of_row = wy;
            if (p.focal_gamma > 0.0 && !has(FLAG_FOCAL_ALL)) {
                // ε = 0: coef.target_coefficient stays w[y]; the backward pass multiplies it by g[y].
                let fg = focal_factors(logp);
                ce = -term(wy, fg.x * logp);
                coef.p_coefficient = wy * fg.y;
            }
        } else {
            out.target_prob = 0.0;
        }
    }
    if (probabilities) { coef.p_coefficient = 0.0; }
    let use_z = p.z_loss > 0.0 && !probabilities;
    let z_term = select(0.0, p.z_loss * lse * lse, use_z && valid);
    // A zero coefficient can leave a broken row's terms out: the row is NaN all the same.
    ce = select(0.0, select(ce, nan(), broken), valid);
    let sw = select(1.0, sample_weights[global_row], has(FLAG_SAMPLE_WEIGHTS));
    let unweighted = select(ce + z_term, nan(), is_nan(ce));
    out.loss = sample_term(sw, unweighted);
    out.flags = select(0u, 1u, valid) | select(0u, 2u, correct && valid);
    // lse = max + log_sum; probability inputs use lse = 0, so coef_log_p(k, z) = z = ln p.
    let split = !broken && !probabilities;
    coef.max = select(select(lse, st.m, split), 0.0, probabilities);
    coef.log_sum = select(0.0, log(st.s), split);
    coef.fill = select(select(FILL_COMPUTE, FILL_NAN, is_nan(unweighted)), FILL_ZERO, !valid);
    coef.sample = sw;
    var result: RowResult;
    result.out = out;
    let weighted = vec4(sample_term(sw, ce), sample_term(sw, z_term), sw * weight_of_row, sw);
    result.sums = select(vec4(0.0), weighted, valid);
    result.coef = coef;
    return result;
}
