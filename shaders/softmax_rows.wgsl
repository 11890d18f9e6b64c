// Softmax forward, pass 2 of 3: per-row loss, log-sum-exp, metrics and gradient coefficients.
//
// Math (SEMANTICS.md sections 2, 2b, 3, 5, 6): merge the row's splits in split order, then
//   lse = m + ln s (−inf if every z is −inf, +inf with a +inf, NaN with a NaN), an output
//   and z-loss's; every log p is taken as (z − m) − ln s, never z − lse (section 1):
//   index targets: ce = −(1−ε)·w[y]·((z[y] − m) − ln s) + (ε/C)·(W·ln s − Σ w·(z − m)),
//   dense targets: ce = ln s·Σ w·t' − Σ w·t'·(z − m)  with t' = (1−ε)·t + ε/C,
//   loss = s[n]·(ce + λ·lse²);  a +inf or NaN logit, or a row of −inf only, makes the row NaN
//   (PyTorch); a term whose coefficient is 0 is left out, not 0·inf (section 6).
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
// The per-row math is `finish_row` (include `softmax_row.wgsl`), shared with the fused kernel.
//
// Launch: one invocation per row; WG rows per workgroup.
// Bytes per row: reads 48 per split, the target and its logit (saved by the partials pass),
// w[y] and s[n]; writes 96. Nothing per logit.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read> partials: array<Partial>;
@group(0) @binding(6) var<storage, read_write> row_out: array<RowOut>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> coefs: array<RowCoef>;
@group(0) @binding(17) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(19) var<storage, read> target_logits: array<f32>;

// The raw logit of the row's target, saved by the partials pass (this pass binds no logits).
fn target_x(row: u32, c: u32) -> f32 { return target_logits[p.row0 + row]; }

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = id.x + id.y * groups.x * WG;
    if (row >= p.rows) { return; }
    let global_row = p.row0 + row;
    var st = partials[global_row * p.splits];
    for (var k = 1u; k < p.splits; k++) { st = merge(st, partials[global_row * p.splits + k]); }
    let r = finish_row(st, row);
    row_out[global_row] = r.out;
    row_sums[global_row] = r.sums;
    coefs[global_row] = r.coef;
}
