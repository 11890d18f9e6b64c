// The end of a row's focal loss with smoothing or soft targets, shared by the focal passes
// (`softmax_focal.wgsl`, `linear_focal_rows.wgsl`): from the row's coefficients `k` and its
// sums acc = (Σ a·f·l, Σ a·g), its loss s[n]·(ce + λ·lse²) with ce = −Σ a·f·l, its sums' ce,
// and G = Σ a·g as the coefficient of p in the gradient; a NaN row becomes FILL_NAN. Needs
// `row_out` (binding 6), `row_sums` (7) and `coefs` (8), all read-write.

fn finish_focal(global_row: u32, k: RowCoef, acc: vec2<f32>) {
    let ce = -acc.x;
    let use_z = p.z_loss > 0.0 && p.prob_eps == 0.0;
    let z_term = select(0.0, p.z_loss * coef_lse(k) * coef_lse(k), use_z);
    let unweighted = select(ce + z_term, nan(), is_nan(ce));
    row_out[global_row].loss = sample_term(k.sample, unweighted);
    var sums = row_sums[global_row];
    sums.x = sample_term(k.sample, ce);
    row_sums[global_row] = sums;
    coefs[global_row].p_coefficient = acc.y;
    if (is_nan(unweighted)) { coefs[global_row].fill = FILL_NAN; }
}
