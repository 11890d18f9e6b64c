// Bandwidth probe: read a buffer and write it to another, as an out-of-place backward does.
//
// Math: dst = src.
// Launch: grid-stride loop; each invocation copies vec4s WG·groups apart (coalesced).
// Bytes: 16 read + 16 written per vec4.

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * WG;
    for (var i = id.x; i < arrayLength(&src); i += stride) { dst[i] = src[i]; }
}
