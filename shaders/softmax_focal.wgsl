// Softmax focal loss with smoothing or soft targets: the pass between rows and the reduction.
//
// Math (SEMANTICS.md section 2c): with the row's final lse (saved by the rows pass as
// max + log_sum), l[c] = (z[c] − max) − log_sum (never z[c] − lse, section 1), a[c] = w[c]·t'[c] the per-class target weight (index targets:
// t'[c] = (1−ε)·[c = y] + ε/C; soft targets: (1−ε)·t[c] + ε/C) and (f, g) = focal_factors(l):
//   ce = −Σ_c a[c]·f[c]·l[c],    G = Σ_c a[c]·g[c],
// so the row's loss is s[n]·(ce + λ·lse²), its sums get s[n]·ce, and G becomes the coefficient
// of p[c] in the gradient (the backward pass multiplies the per-class terms by g[c]). Every
// class's (1 − p[c])^γ needs the final lse, which the online pass 1 does not have: hence this
// second read of the row. Rows that are ignored or already NaN keep what the rows pass wrote.
// Probability inputs (section 2b): l[c] = z[c] = ln clamp(q[c]) (the rows pass saves lse = 0),
// no z-loss; the backward pass then writes −a[c]·g[c]/q[c].
//
// Launch: like the partials pass without splits: WG / invocations_per_row row segments per workgroup, a
// segment of invocations_per_row invocations owns one row and strides over its classes invocations_per_row apart (coalesced);
// the segment's two sums are combined by a tree in workgroup memory (fixed order).
// Grid: x (and z past 65 535) = row segments / (WG / invocations_per_row) workgroups.
// Bytes per logit: reads 4 (f32) or 2 (f16/bf16), plus 4 per dense target; per row reads and
// writes 32 + 32 + 16 bytes.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> row_out: array<RowOut>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> coefs: array<RowCoef>;

var<workgroup> shared_sums: array<vec2<f32>, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let lane = local % p.invocations_per_row;
    let row = segment_row(local, group, groups);
    let global_row = p.row0 + row;
    var k: RowCoef;
    if (row < p.rows) { k = coefs[global_row]; }
    let live = row < p.rows && k.fill == FILL_COMPUTE;

    // x: Σ a·f·l, y: Σ a·g, over this invocation's classes.
    var acc = vec2(0.0);
    if (live) {
        for (var c = lane; c < p.classes; c += p.invocations_per_row) {
            let z = z_of(load_x(elem_index(row, c)));
            let l = coef_log_p(k, z);
            let w = select(1.0, weights[c], has(FLAG_WEIGHTS));
            var t = p.uniform;
            if (has(FLAG_DENSE)) {
                t += (1.0 - p.smoothing) * dense_target(target_index(row, c));
            } else if (i32(c) == k.y) {
                t += 1.0 - p.smoothing;
            }
            let a = w * t;
            let fg = focal_factors(l);
            acc += vec2(term(a, fg.x * l), a * fg.y);
        }
    }

    // The segment's tree (every invocation runs every barrier: the loop bound is uniform).
    shared_sums[local] = acc;
    for (var stride = p.invocations_per_row / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lane < stride) {
            acc = acc + shared_sums[local + stride];
            shared_sums[local] = acc;
        }
    }

    if (lane == 0u && live) { finish_focal(global_row, k, acc); }
}
