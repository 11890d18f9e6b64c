// Shared by the softmax kernels: launch parameters, the logit transform, element addressing
// and the online-softmax partial (running max `m`, rescaled sum `s`, and the sums that ride
// along) with its merge. Every sum of z is centred on `m` (Σ k·(z − m)), so that the rows
// pass takes each log p as (z − m) − ln s and never as z − lse, which loses everything below
// the last place of a large m (SEMANTICS.md section 1); a term whose coefficient k is 0 is
// left out, not 0·inf (section 6).

// Mirrored by `Params` in src/gpu/abi.rs (checked by its reflection test).
struct Params {
    rows: u32,          // rows in this chunk
    classes: u32,       // C
    spatial: u32,       // S of the (N, C, S) layout; 0 for contiguous rows
    row0: u32,          // global index of the chunk's first row
    elem_offset: u32,   // element index, in the bound logits window, of the chunk's first element
    f32_offset: u32,    // the same for the bound dense-target window
    splits: u32,        // column splits per row
    span: u32,          // classes per split
    invocations_per_row: u32, // invocations per row segment (power of two, ≤ WG)
    flags: u32,         // FLAG_* (src/gpu/abi.rs)
    elems: u32,         // elements in this chunk (backward, BCE)
    reduction: u32,     // REDUCTION_NONE, _SUM, _MEAN or _PRESCALED (scales in the row coefficients)
    scale: f32,         // logit scale s
    cap: f32,           // softcap (0: off)
    prob_eps: f32,      // probability clamp (0: logits)
    smoothing: f32,     // ε
    z_loss: f32,        // λ
    uniform: f32,       // ε / C, C the global class count (vocab-parallel shards differ)
    ignore_lo: u32,     // ignore_index, low and high words of the i64
    ignore_hi: u32,
    upstream: f32,      // scalar upstream gradient for sum / mean
    denominator: f32,   // mean's denominator when the host knows it (BCE: N·C)
    focal_gamma: f32,   // focal γ (0: off)
    focal_alpha: f32,   // BCE's focal α (used when FLAG_ALPHA)
    first_row: u32,     // BCE: global row of the chunk's first element (for sample weights)
    col0: u32,          // contiguous rows: first class of the bound window (a piece of a row
                        // longer than a binding), or of the backward's first element; else 0
    split0: u32,        // partials: the first split of this dispatch
    hidden: u32,        // D of a linear head (linear_partials.wgsl); else 0
    block_columns: u32, // a linear head's stored logits: columns per chunk (FLAG_STORED_LOGITS)
    order_base: u32,    // a linear head's compacted rows: the window's count in the row order
}

// The FLAG_* bits of `flags`, the REDUCTION_* codes of `reduction` and the FILL_* codes of
// `RowCoef::fill` come from `src/gpu/abi.rs`, emitted at the top of every shader.

// Infinities and NaN from their bits (WGSL has no literals for them).
fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }
fn pos_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
const NONE: u32 = 0xffffffffu;

fn has(flag: u32) -> bool { return (p.flags & flag) != 0u; }

// The row of an invocation's segment: WG / invocations_per_row segments of invocations_per_row invocations per workgroup,
// workgroups numbered over (x, z) as the host's grid lays them out (z past 65 535). The
// invocation's place in its segment is `local % p.invocations_per_row`.
fn segment_row(local: u32, group: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (group.x + group.z * groups.x) * (WG / p.invocations_per_row) + local / p.invocations_per_row;
}

// NaN test on the bits, so fast-math compilers can't fold it away.
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }

// Index of (row, class) in the logits window, for contiguous rows or the (N, C, S) layout.
fn elem_index(row: u32, c: u32) -> u32 {
    if (p.spatial == 0u) { return p.elem_offset + row * p.classes + c - p.col0; }
    let n = row / p.spatial;
    let s = row - n * p.spatial;
    return p.elem_offset + (n * p.classes + c) * p.spatial + s;
}

// The same position in the dense-target window.
fn target_index(row: u32, c: u32) -> u32 {
    return elem_index(row, c) - p.elem_offset + p.f32_offset;
}

// Section 1 of SEMANTICS.md: z = s·x, or cap·tanh(s·x / cap); probability inputs give
// z = ln(clamp(q, eps, 1)). `v` is s·x (or q).
fn transform(v: f32) -> f32 {
    if (p.prob_eps > 0.0) { return log(clamp(v, p.prob_eps, 1.0)); }
    if (p.cap > 0.0) { return p.cap * tanh(clamp(v / p.cap, -16.0, 16.0)); }
    return v;
}

// z of a raw input value x: transform(s·x) for logits, ln clamp(q) for probabilities.
fn z_of(x: f32) -> f32 { return transform(select(p.scale * x, x, p.prob_eps > 0.0)); }

// dz/dx at x (with z = transform(s·x)).
fn slope(x: f32, z: f32) -> f32 {
    if (p.prob_eps > 0.0) { return select(1.0 / x, 0.0, x < p.prob_eps); }
    if (p.cap > 0.0) { let r = z / p.cap; return p.scale * (1.0 - r * r); }
    return p.scale;
}

struct Partial {
    m: f32,        // running max of z
    s: f32,        // Σ exp(z − m)
    arg: u32,      // lowest index of the max
    nan_arg: u32,  // lowest index of a NaN (NONE if none)
    wz: f32,       // Σ w·(z − m)
    wt: f32,       // Σ w·t
    wtz: f32,      // Σ w·t·(z − m)
    ez: f32,       // Σ exp(z − m)·(z − m): centred, so large |z| cost no precision
    te: f32,       // Σ t·exp(z − m)
    tmax: f32,     // max t
    targ: u32,     // lowest index of max t
    w_all: f32,    // Σ w over the classes seen (W, computed on the device)
}

fn empty_partial() -> Partial {
    return Partial(neg_inf(), 0.0, 0u, NONE, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0u, 0.0);
}

// Adds element `c` with raw value `x` (and dense target `t`, weight `w`) to a partial.
fn accumulate(st: ptr<function, Partial>, c: u32, x: f32, t: f32, w: f32) {
    let v = select(p.scale * x, x, p.prob_eps > 0.0);
    if (is_nan(v)) {
        (*st).w_all += w;
        (*st).nan_arg = min((*st).nan_arg, c);
        return;
    }
    let z = transform(v);
    if (z > (*st).m) {
        let r = exp((*st).m - z);
        (*st).ez = moved_ez((*st).ez, (*st).s, (*st).m, z, r);
        (*st).wz = recentre_linear((*st).wz, (*st).w_all, (*st).m, z);
        (*st).wtz = recentre_linear((*st).wtz, (*st).wt, (*st).m, z);
        (*st).s *= r;
        (*st).te *= r;
        (*st).m = z;
        (*st).arg = c;
    }
    (*st).w_all += w;
    // exp(−inf − (−inf)) would be NaN: a masked class adds exactly 0.
    let e = select(exp(z - (*st).m), 0.0, z == neg_inf());
    (*st).s += e;
    if (has(FLAG_ENTROPY) && e > 0.0) { (*st).ez += e * (z - (*st).m); }
    if (has(FLAG_WANT_WZ)) { (*st).wz += linear_term(w, z, (*st).m); }
    if (has(FLAG_DENSE)) {
        (*st).wt += w * t;
        (*st).wtz += linear_term(w * t, z, (*st).m);
        (*st).te += t * e;
        if (t > (*st).tmax) { (*st).tmax = t; (*st).targ = c; }
    }
}

// k·(z − m), the term of a centred linear sum: 0 when k = 0 (a masked class of weight or
// target 0 is absent), −inf for a masked class otherwise (also while m is still −inf).
fn linear_term(k: f32, z: f32, m: f32) -> f32 {
    let d = select(z - m, neg_inf(), z == neg_inf());
    return select(k * d, 0.0, k == 0.0);
}

// A centred linear sum Σ k·(z − m) with Σ k = `weight`, re-centred on `to` (a partial of −inf
// only holds 0 or −inf there, already right).
fn recentre_linear(sum: f32, weight: f32, m: f32, to: f32) -> f32 {
    return select(sum + (m - to) * weight, sum, m == neg_inf() || m == to);
}

// k·v, or 0 when the coefficient k is exactly 0: the term is absent, not 0·inf = NaN
// (SEMANTICS.md section 6).
fn term(k: f32, v: f32) -> f32 { return select(k * v, 0.0, k == 0.0); }
// A row's value times its sample weight s: 0 for s = 0 (also an infinite value), NaN stays NaN.
fn sample_term(s: f32, v: f32) -> f32 { return select(term(s, v), v, is_nan(v)); }

// 1 − exp(l) for l ≤ 0, without the cancellation of 1 − exp(l) near 0 (WGSL has no expm1):
// the Taylor series −l·(1 + l/2 + l²/6 + …) through l⁷ above −1/4 (truncation below 2e-9
// relative), 1 − exp(l) below (relative error under 3e-7).
fn one_minus_exp(l: f32) -> f32 {
    if (l > -0.25) {
        let s = 1.0 + l * (1.0 / 2.0 + l * (1.0 / 6.0 + l * (1.0 / 24.0 + l * (1.0 / 120.0
            + l * (1.0 / 720.0 + l * (1.0 / 5040.0))))));
        return -l * s;
    }
    return 1.0 - exp(l);
}

// Focal loss (SEMANTICS.md section 2c) of a class with log-probability l: the focal factor
// f = (1 − p)^γ and the gradient factor g = f − γ·p·l·(1 − p)^(γ−1), so that the loss is
// −Σ_c a[c]·f[c]·l[c] and dz[c] = p[c]·Σ_k a[k]·g[k] − a[c]·g[c] (a[c] = w[c]·t'[c]; the
// derivation is at `reference::focal_factors`). p·l·(1 − p)^(γ−1) → 0 at p = 0 and p = 1.
fn focal_factors(l: f32) -> vec2<f32> {
    let gamma = p.focal_gamma;
    let q = one_minus_exp(l);
    if (q <= 0.0) { return vec2(0.0, 0.0); }
    let prob = exp(l);
    let f = pow(q, gamma);
    var h = 0.0;
    if (prob > 0.0) { h = prob * l * pow(q, gamma - 1.0); }
    return vec2(f, f - gamma * h);
}

// Σ exp(z − m)·(z − m) of a partial re-centred on `to`, before rescaling (an empty partial,
// s = 0 and m = −inf, stays 0).
fn recentre(ez: f32, s: f32, m: f32, to: f32) -> f32 {
    return select(ez + (m - to) * s, ez, s == 0.0);
}

// A partial's Σ exp(z − m)·(z − m) moved to the max `to` with scale r = exp(m − to): 0 when r
// is, even where m − to overflows (a partial at f32::MIN merged into one near 0).
fn moved_ez(ez: f32, s: f32, m: f32, to: f32, r: f32) -> f32 {
    return select(recentre(ez, s, m, to) * r, 0.0, r == 0.0);
}

// Scale of a partial's exp-sums when its max `m` is replaced by `to` (≥ m).
fn rescale(m: f32, to: f32) -> f32 { return select(exp(m - to), 1.0, m == to); }

// Merges two partials of the same row (order-independent up to rounding; callers use a fixed order).
fn merge(a: Partial, b: Partial) -> Partial {
    var o: Partial;
    o.m = max(a.m, b.m);
    let ra = rescale(a.m, o.m);
    let rb = rescale(b.m, o.m);
    o.s = a.s * ra + b.s * rb;
    o.ez = moved_ez(a.ez, a.s, a.m, o.m, ra) + moved_ez(b.ez, b.s, b.m, o.m, rb);
    o.te = a.te * ra + b.te * rb;
    if (a.m > b.m) { o.arg = a.arg; } else if (b.m > a.m) { o.arg = b.arg; } else { o.arg = min(a.arg, b.arg); }
    o.nan_arg = min(a.nan_arg, b.nan_arg);
    o.wz = recentre_linear(a.wz, a.w_all, a.m, o.m) + recentre_linear(b.wz, b.w_all, b.m, o.m);
    o.wt = a.wt + b.wt;
    o.wtz = recentre_linear(a.wtz, a.wt, a.m, o.m) + recentre_linear(b.wtz, b.wt, b.m, o.m);
    if (a.tmax > b.tmax) { o.targ = a.targ; } else if (b.tmax > a.tmax) { o.targ = b.targ; } else { o.targ = min(a.targ, b.targ); }
    o.tmax = max(a.tmax, b.tmax);
    o.w_all = a.w_all + b.w_all;
    return o;
}
