// Fixed-order reduction of per-row sums (ce, z-loss, weight, count) to the batch totals.
//
// Math: pairwise sums: each invocation adds 4 consecutive vec4s as (a + b) + (c + d), then a
// tree in workgroup memory; the host repeats the pass until one vec4 remains, so the order
// depends only on the number of rows: the same bits every run, no float atomics. The last
// pass also writes the reduced loss (SEMANTICS.md section 2):
//   sum: ce + z,   mean: ce / D + z / V  (the z term only when nonzero).
//
// Launch: one workgroup reduces 4·WG vec4s to one.
// Bytes: 16 read per row, 16 written per 4·WG rows.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(14) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> loss_out: array<f32>;

var<workgroup> partial_sums: array<vec4<f32>, WG>;

fn load(i: u32) -> vec4<f32> { return select(vec4(0.0), src[i], i < p.elems); }

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let base = (group.x * WG + local) * 4u;
    var acc = (load(base) + load(base + 1u)) + (load(base + 2u) + load(base + 3u));
    partial_sums[local] = acc;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (local < stride) {
            acc = acc + partial_sums[local + stride];
            partial_sums[local] = acc;
        }
    }
    if (local == 0u) {
        dst[group.x] = acc;
        if (p.elems <= 4u * WG) {
            var loss = acc.x + acc.y;
            if (p.reduction == REDUCTION_MEAN) {
                loss = acc.x / acc.z;
                if (acc.y != 0.0) { loss += acc.y / acc.w; }
            }
            loss_out[0] = loss;
        }
    }
}
