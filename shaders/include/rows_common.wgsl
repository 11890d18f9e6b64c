// Per-row records shared by the softmax row pass, the backward pass and the host.

struct RowOut {
    loss: f32,
    lse: f32,
    argmax: u32,
    flags: u32,        // bit 0: valid (not ignored), bit 1: correct
    target_prob: f32,
    entropy: f32,
    confidence: f32,
    _pad: u32,
}

// What the backward pass needs of a row (mirrored by `RowCoef` in src/gpu/abi.rs):
//   dz[c] = (a·p_coefficient + b·zcoef)·p[c] − a·w[c]·(B·t[c] + ε/C) − a·target_coefficient·[c = y],
// with a, b the reduction's scales times the row's sample weight; with focal loss the two
// subtracted terms are multiplied by the class's g[c] (`focal_factors`).
struct RowCoef {
    max: f32,     // the row's max m (or its lse when that is not finite)
    p_coefficient: f32,      // coefficient of p in the cross-entropy part
    target_coefficient: f32, // (1−ε)·w[y]
    y: i32,       // the target class, or −1
    fill: u32,    // FILL_COMPUTE, FILL_ZERO (ignored row) or FILL_NAN (NaN loss)
    log_sum: f32, // ln Σ exp(z − m) (0 when lse is not finite): lse = max + log_sum, and
                  // p = exp((z − max) − log_sum) keeps z − lse exact where p is near 1
    scale: f32,   // a, with REDUCTION_PRESCALED (both coefficients already carry a)
    sample: f32,  // the row's sample weight s[n] (1 without sample weights)
}

fn coef_lse(k: RowCoef) -> f32 { return k.max + k.log_sum; }

// log p[c] = z − lse, without rounding lse first.
fn coef_log_p(k: RowCoef, z: f32) -> f32 { return (z - k.max) - k.log_sum; }
