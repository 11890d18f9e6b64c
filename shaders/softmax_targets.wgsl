// Before the fused kernel: each row's index target checked, and the mean's denominators.
//
// Math (SEMANTICS.md sections 2 and 5): the mean divides the cross-entropy by
// D = Σ_valid s[n]·w[y[n]] (dense targets: Σ s[n]) and the z-loss by V = Σ_valid s[n]. The
// fused kernel writes the gradient before any loss exists, so it needs D and V first: this
// pass writes s[n]·(0, 0, w[y], 1) per valid row (0 for an ignored one), which the fixed-order
// reduction (`reduce.wgsl`) turns into totals (·, ·, D, V) on the device, with no readback.
// The third and fourth components equal the rows' sums the loss is reduced from, so D and V
// are the same bits as the loss's. A valid index target outside [0, C) is flagged in `error`
// as in the partials pass and counts as ignored (the fused kernel never reads through it).
//
// Launch: WG invocations per workgroup, one per row or, with k = ROWS_PER_INVOCATION (the
// variant's, `Variant::short_tiles`), k rows each in the fused kernel's tiles (row
// (tile·k + i)·WG + local, for i < k), whose sums go into the same reduction slot in the same
// order as the fused kernel's: the totals are the same bits as the loss's. A 2D grid past
// 65 535 workgroups.
// Bytes per row: reads the target, w[y] and s[n]; writes 16 per slot (mean only). Nothing per
// logit.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> error: array<atomic<u32>>;
@group(0) @binding(17) var<storage, read> sample_weights: array<f32>;

// s[n]·(0, 0, w[y], 1) of a valid row, 0 for an ignored one.
fn denominators(global_row: u32) -> vec4<f32> {
    let sw = select(1.0, sample_weights[global_row], has(FLAG_SAMPLE_WEIGHTS));
    var w = 1.0;
    if (!has(FLAG_DENSE)) {
        let y = load_target(global_row, p.ignore_lo, p.ignore_hi);
        if (y.y != 0 || y.x < 0 || u32(y.x) >= p.classes) { return vec4(0.0); }
        w = select(1.0, weights[u32(y.x)], has(FLAG_WEIGHTS));
    }
    return sw * vec4(0.0, 0.0, w, 1.0);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let tile = group.x + group.y * groups.x;
    let first = tile * ROWS_PER_INVOCATION * WG + local;
    if (first >= p.rows) { return; }
    // The fused kernel's sum, term for term: from 0, row by row, + 0 for a row past the end.
    var sums = vec4(0.0);
    for (var i = 0u; i < ROWS_PER_INVOCATION; i++) {
        let row = first + i * WG;
        var d = vec4(0.0);
        if (row < p.rows) {
            if (has(FLAG_CHECK_TARGETS)) { flag_bad_target(p.row0 + row); }
            if (p.reduction == REDUCTION_MEAN) { d = denominators(p.row0 + row); }
        }
        sums += d;
    }
    // The fused kernel's slot (`row0` is a multiple of the tile with several rows each).
    if (p.reduction == REDUCTION_MEAN) {
        row_sums[p.row0 / ROWS_PER_INVOCATION + tile * WG + local] = sums;
    }
}
