// Binary cross-entropy with logits, loss and gradient in one read (SEMANTICS.md section 4).
//
// Math, per element with softplus(v) = max(v, 0) + ln(1 + exp(−|v|)), y' = y·(1−ε) + ε/2
// (Keras's label smoothing; y' = y when ε = 0) and (weight, pos_weight) = class_params[c]:
//   ce   = pos_weight·y'·softplus(−x) + (1−y')·softplus(x)
//   dce  = (pos_weight·y' + 1 − y')·σ(x) − pos_weight·y'
//   loss = s[n]·weight·α_t·ce·m^γ
//   dx   = s[n]·weight·α_t·(dce·m^γ + ce·γ·m^(γ−1)·(1 − 2y')·σ(x)·σ(−x)) · scale
// (a term whose coefficient is exactly 0 is absent: 0·inf counts as 0), with the sigmoid
// focal factor (torchvision) m = 1 − p_t = y'·σ(−x) + (1−y')·σ(x) (γ = 0:
// m^γ = 1 and no second term), α_t = α·y' + (1−α)·(1−y') when α is on (else 1), s[n] the
// row's sample weight, and scale the per-element upstream (`none`), the scalar upstream
// (`sum`) or upstream/(N·C) (`mean`); the scalar is the host's, or the device's (a backward's
// `DeviceUpstream::Device`, copied into a block).
//
// Launch: flat over the chunk's elements; one invocation owns 4 consecutive elements and
// writes their loss sum to `row_sums` (one vec4 per invocation) for the fixed-order reduction.
// Bytes per logit: reads 4 or 2 plus 4 (target), writes 4 (loss, when kept) and 4 or 2
// (gradient, when asked). Per-class weights come gathered in `class_params` (bce_classes.wgsl)
// so that the sample weights fit in the 8 storage bindings a device must allow.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(7) var<storage, read_write> row_sums: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> upstream: array<f32>;
@group(0) @binding(13) var<storage, read_write> losses: array<f32>;
@group(0) @binding(17) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(18) var<storage, read> class_params: array<vec2<f32>>;

fn softplus(v: f32) -> f32 { return max(v, 0.0) + log(1.0 + exp(-abs(v))); }

fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

fn class_of(f: u32) -> u32 {
    if (p.spatial == 0u) { return f % p.classes; }
    return (f / p.spatial) % p.classes;
}

// Global row of chunk element f (chunks start on whole samples of the (N, C, S) layout).
fn row_of(f: u32) -> u32 {
    if (p.spatial == 0u) { return p.first_row + f / p.classes; }
    let plane = p.classes * p.spatial;
    return p.first_row + (f / plane) * p.spatial + f % p.spatial;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let group_index = id.x + id.y * groups.x * WG;
    let first = 4u * group_index;
    if (first >= p.elems) { return; }
    let n = min(4u, p.elems - first);
    let gamma = p.focal_gamma;
    var dx = vec4(0.0);
    var sum = 0.0;
    for (var k = 0u; k < n; k++) {
        let f = first + k;
        let c = class_of(f);
        let x = load_x(p.elem_offset + f);
        let y = dense_target(p.f32_offset + f) * (1.0 - p.smoothing) + 0.5 * p.smoothing;
        let wp = class_params[c];
        let pw = wp.y;
        var w = wp.x;
        if (has(FLAG_SAMPLE_WEIGHTS)) { w *= sample_weights[row_of(f)]; }
        if (has(FLAG_ALPHA)) { w *= p.focal_alpha * y + (1.0 - p.focal_alpha) * (1.0 - y); }
        // A zero coefficient leaves its term out (SEMANTICS.md section 6): y = 1 at x = +inf
        // is a loss of 0, not 0·inf.
        let ce = term(pw * y, softplus(-x)) + term(1.0 - y, softplus(x));
        var d = (pw * y + 1.0 - y) * sigmoid(x) - pw * y;
        var loss = term(w, ce);
        if (gamma > 0.0) {
            let sp = sigmoid(x);
            let sq = sigmoid(-x);
            let m = y * sq + (1.0 - y) * sp;
            var focal = 0.0;
            var d_focal = 0.0;
            if (m > 0.0) {
                focal = pow(m, gamma);
                d_focal = gamma * pow(m, gamma - 1.0) * (1.0 - 2.0 * y) * sp * sq;
            }
            // An infinite ce has m > 0 (|x| = inf leaves m = y' or 1 − y'): its product is inf,
            // also where m^γ underflowed to 0 in f32.
            var product = ce * focal;
            if (ce > 3.40282347e38) { product = ce; }
            loss = term(w, product);
            d = d * focal + term(d_focal, ce);
        }
        // A zero coefficient never hides a NaN logit, in the loss or the gradient (SEMANTICS.md
        // section 6).
        if (is_nan(x)) { loss = nan(); }
        sum += loss;
        if (has(FLAG_KEEP_LOSSES)) { losses[p.f32_offset + f] = loss; }
        // A device upstream sits at word 4 of its block (as in the softmax backward's).
        var u = p.upstream;
        if (has(FLAG_DEVICE_UPSTREAM)) { u = upstream[4]; }
        var scale = u / p.denominator;
        if (p.reduction == REDUCTION_SUM) { scale = u; }
        if (p.reduction == REDUCTION_NONE) { scale = select(1.0, upstream[p.f32_offset + f], has(FLAG_UPSTREAM)); }
        dx[k] = scale * w * d;
        if (is_nan(x)) { dx[k] = nan(); }
    }
    row_sums[p.row0 + group_index] = vec4(sum, 0.0, f32(n), f32(n));
    if (has(FLAG_GRADIENT)) { store_dx(first, dx, n); }
}
