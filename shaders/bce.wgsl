// Binary cross-entropy with logits, loss and gradient in one read (SEMANTICS.md section 4).
//
// Math, per element with softplus(v) = max(v, 0) + ln(1 + exp(−|v|)):
//   loss = weight[c]·(pos_weight[c]·y·softplus(−x) + (1−y)·softplus(x))
//   dx   = weight[c]·((pos_weight[c]·y + 1 − y)·σ(x) − pos_weight[c]·y) · scale
// with scale the per-element upstream (`none`), the scalar upstream (`sum`) or upstream/(N·C)
// (`mean`).
//
// Launch: flat over the chunk's elements; one invocation owns 4 consecutive elements and
// writes their loss sum to `row_sums` (one vec4 per invocation) for the fixed-order reduction.
// Bytes per logit: reads 4 or 2 plus 4 (target), writes 4 (loss, when kept) and 4 or 2
// (gradient, when asked).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> upstream: array<f32>;
@group(0) @binding(12) var<storage, read> pos_weights: array<f32>;
@group(0) @binding(13) var<storage, read_write> losses: array<f32>;

const FLAG_KEEP_LOSSES: u32 = 64u;
const FLAG_GRADIENT: u32 = 128u;

fn softplus(v: f32) -> f32 { return max(v, 0.0) + log(1.0 + exp(-abs(v))); }

fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

fn class_of(f: u32) -> u32 {
    if (p.spatial == 0u) { return f % p.classes; }
    return (f / p.spatial) % p.classes;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let group_index = id.x + id.y * groups.x * WG;
    let first = 4u * group_index;
    if (first >= p.elems) { return; }
    let n = min(4u, p.elems - first);
    var dx = vec4(0.0);
    var sum = 0.0;
    for (var k = 0u; k < n; k++) {
        let f = first + k;
        let c = class_of(f);
        let x = load_x(p.elem_offset + f);
        let y = dense_target(p.f32_offset + f);
        let w = select(1.0, weights[c], has(FLAG_WEIGHTS));
        let pw = select(1.0, pos_weights[c], has(FLAG_POS_WEIGHT));
        let loss = w * (pw * y * softplus(-x) + (1.0 - y) * softplus(x));
        sum += loss;
        if (has(FLAG_KEEP_LOSSES)) { losses[p.f32_offset + f] = loss; }
        var scale = p.upstream / p.denominator;
        if (p.reduction == 1u) { scale = p.upstream; }
        if (p.reduction == 0u) { scale = select(1.0, upstream[p.f32_offset + f], has(FLAG_UPSTREAM)); }
        dx[k] = scale * w * ((pw * y + 1.0 - y) * sigmoid(x) - pw * y);
    }
    row_sums[p.row0 + group_index] = vec4(sum, 0.0, f32(n), f32(n));
    if (has(FLAG_GRADIENT)) { store_dx(first, dx, n); }
}
