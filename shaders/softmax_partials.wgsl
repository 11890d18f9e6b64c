// Softmax forward, pass 1 of 3: online-softmax partials of each (row, split).
//
// Math (SEMANTICS.md sections 1-3, 5): for z = transform(s·x) over the split's classes,
//   m = max z,  s = Σ exp(z − m)  (rescaled whenever m grows: online softmax),
// and in the same read: the lowest argmax, the first NaN, Σ w·z (smoothing), Σ w·t, Σ w·t·z,
// Σ t·exp(z − m), max t (dense targets) and Σ exp(z − m)·(z − m) (entropy, centred on m).
//
// Launch: one workgroup of WG invocations holds WG / invocations_per_row row segments; a segment of invocations_per_row
// invocations owns one (row, split) and strides over its classes, invocations_per_row apart, so neighbouring
// invocations read neighbouring words (coalesced; 16-byte vec4 loads when the row is aligned).
// Segments are merged by a tree in workgroup memory, or (SUBGROUPS) by subgroupShuffleXor
// butterflies within a subgroup and the tree above it. For the (N, C, S) layout invocations_per_row = 1:
// one invocation per row, neighbours on neighbouring spatial positions (coalesced again).
// Grid: x (and z past 65 535) = row segments / (WG / invocations_per_row) workgroups, y = splits.
//
// Bytes per logit: reads 4 (f32) or 2 (f16/bf16) once, plus 4 per dense target; writes
// 48 bytes per (row, split), nothing per logit.
//
// Index targets (CHECK_TARGETS): lane 0 of split 0 reads the row's target, and a valid target
// outside [0, C) is recorded in `error` as NONE − row (atomicMax keeps the lowest row; 0 is
// none). The rows pass then treats that row as ignored, so a bad target is never read through.
// With TARGET_LOGIT, lane 0 of the split holding the target saves its raw logit for the rows
// pass, which reads no logits itself.
//
// A row longer than a storage binding is bound in pieces: one dispatch per piece of whole
// splits (`split0`, and `col0` = its first class, so `elem_index` addresses the window).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(9) var<storage, read_write> error: array<atomic<u32>>;
@group(0) @binding(19) var<storage, read_write> target_logits: array<f32>;

var<workgroup> shared_partials: array<Partial, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    SUBGROUP_BUILTINS
) {
    let lane = local % p.invocations_per_row;
    let row = segment_row(local, group, groups);
    let split = p.split0 + group.y;
    let c0 = split * p.span;
    let c1 = select(c0, min(c0 + p.span, p.classes), row < p.rows);

    var st = empty_partial();
    let aligned = VEC4 && p.spatial == 0u && (p.classes & 3u) == 0u && (p.span & 3u) == 0u;
    if (aligned) {
        let base4 = elem_index(row, c0) >> 2u;
        for (var j = lane; c0 + 4u * j < c1; j += p.invocations_per_row) {
            let x = load4(base4 + j);
            for (var k = 0u; k < 4u; k++) {
                let c = c0 + 4u * j + k;
                if (c < c1) { element(&st, row, c, x[k]); }
            }
        }
    } else {
        for (var c = c0 + lane; c < c1; c += p.invocations_per_row) {
            element(&st, row, c, load_x(elem_index(row, c)));
        }
    }

    REDUCE_SEGMENT

    if (lane == 0u && row < p.rows) {
        partials[(p.row0 + row) * p.splits + split] = st;
        if (split == 0u && has(FLAG_CHECK_TARGETS)) { flag_bad_target(p.row0 + row); }
        if (has(FLAG_TARGET_LOGIT)) {
            let y = load_target(p.row0 + row, p.ignore_lo, p.ignore_hi);
            if (y.y == 0 && y.x >= 0 && u32(y.x) >= c0 && u32(y.x) < c1) {
                target_logits[p.row0 + row] = load_x(elem_index(row, u32(y.x)));
            }
        }
    }
}
