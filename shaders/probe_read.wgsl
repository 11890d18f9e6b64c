// Bandwidth probe: read every byte of a buffer once, as the forward pass does.
//
// Math: per workgroup, Σ of its vec4s (written so the reads can't be dropped).
// Launch: grid-stride loop; each invocation reads vec4s WG·groups apart (coalesced).
// Bytes: 16 read per vec4; 16 written per workgroup.

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    var acc = vec4(0.0);
    let stride = groups.x * WG;
    for (var i = id.x; i < arrayLength(&src); i += stride) { acc += src[i]; }
    if (acc.x == 1.2345e-30) { sink[group.x * WG + local] = acc; }
}
