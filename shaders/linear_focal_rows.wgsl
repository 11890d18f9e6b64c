// Linear cross-entropy, focal loss with label smoothing, step 2 of 2: each row's focal sums
// added over its splits in order, then the row finished as `softmax_focal.wgsl` finishes it
// (`finish_focal`, include `focal_finish.wgsl`: its loss, its sums' ce, and G = Σ a·g as the
// coefficient of p). Ignored and NaN rows keep what the rows pass wrote.
//
// Launch: one invocation per row, WG rows per workgroup (2D grid past 65 535 workgroups).
// Bytes per row: reads 8 per split, 32 + 16 + 32; writes 4 + 16 + 32.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read_write> row_out: array<RowOut>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> coefs: array<RowCoef>;
@group(0) @binding(26) var<storage, read> focal_partials: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = id.x + id.y * groups.x * WG;
    if (row >= p.rows) { return; }
    let k = coefs[row];
    if (k.fill != FILL_COMPUTE) { return; }
    var acc = vec2(0.0);
    for (var s = 0u; s < p.splits; s++) { acc += focal_partials[row * p.splits + s]; }
    finish_focal(row, k, acc);
}
