// A linear head's plain product: x = h·Wᵀ + b into an N × V f32 buffer, nothing folded. The
// ceiling the bench measures the linear kernels against (`xent bench --linear`): the same
// tile product as `linear_partials.wgsl`, the same sums in the same order, with the simplest
// epilogue.
//
// Math: x[r][c] = Σ_d h[r][d]·W[c][d] + b[c], summed in f32 over d in slabs of BK, in order.
//
// Launch: 16 × 16 invocations per workgroup; grid x = row tiles of 64, y = column tiles of 64
// (columns col0 .. col0 + span of the vocabulary; W bound from row col0, or whole with
// WEIGHT_T); the output is the bound rows × span, row-major.
// Bytes: h and W read once per tile (e·D·(64 + 64) per 64 × 64 values), x written once (4 per
// value).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
@group(0) @binding(22) var<storage, read> head_bias: array<f32>;

// The tile product's operands: include `linear_logits.wgsl` (b_end: the columns' end), its
// rows in row order.
fn bound_row(v: u32) -> u32 { return v; }

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tx = local % SIDE;
    let ty = local / SIDE;
    let r0 = group.x * BM;
    let n0 = p.col0 + group.y * BN;
    let c1 = min(p.col0 + p.span, p.classes);
    b_end = c1;
    let acc = tile_product(r0, n0, p.hidden, local);
    for (var i = 0u; i < TM; i++) {
        let row = r0 + ty * TM + i;
        if (row >= p.rows) { continue; }
        for (var j = 0u; j < TN; j++) {
            let c = n0 + tx * TN + j;
            if (c >= c1) { continue; }
            var x = acc[i][j];
            if (has(FLAG_BIAS)) { x += head_bias[c]; }
            logits[row * p.span + c - p.col0] = x;
        }
    }
}
