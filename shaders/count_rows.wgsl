// Device-side accuracy: counts the valid and the correct rows of a call's per-row records.
//
// Math (SEMANTICS.md section 5): valid = Σ_n [row n not ignored], correct = Σ_n [argmax = y],
// read from each GpuRow's flags word (bit 0 valid, bit 1 correct); accuracy = correct / valid.
//
// Launch: one invocation per record; a workgroup counts into workgroup atomics, then adds its
// two counts to the output with one atomicAdd each. Integer atomics are exact, so the counts
// are the same whatever order the workgroups run in. A 2D grid past 65 535 workgroups.
// Bytes: reads the 4-byte flags word of each 32-byte record; writes 8 bytes per workgroup.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(14) var<storage, read> records: array<u32>;
@group(0) @binding(15) var<storage, read_write> counts: array<atomic<u32>>;

var<workgroup> group_valid: atomic<u32>;
var<workgroup> group_correct: atomic<u32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let row = (group.x + group.y * groups.x) * WG + local;
    if (row < p.elems) {
        let flags = records[row * 8u + 3u];
        if ((flags & 1u) != 0u) { atomicAdd(&group_valid, 1u); }
        if ((flags & 2u) != 0u) { atomicAdd(&group_correct, 1u); }
    }
    workgroupBarrier();
    if (local == 0u) {
        atomicAdd(&counts[0], atomicLoad(&group_valid));
        atomicAdd(&counts[1], atomicLoad(&group_correct));
    }
}
