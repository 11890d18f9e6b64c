// sgd_update: one plain SGD step on one parameter block.
//
//   θ ← θ − lr·g
//
// Launch: one invocation per parameter, `ceil(count / WG)` workgroups of WG; the tail guards
// itself. Bytes per parameter: 8 read, 4 written.

struct Params {
    rows: u32,      // unused
    inputs: u32,    // unused
    outputs: u32,   // parameters in the block
    flags: u32,     // unused
    lr: f32,        // learning rate
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;              // count
@group(0) @binding(2) var<storage, read_write> theta: array<f32>;    // count

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.outputs {
        return;
    }
    theta[i] = theta[i] - p.lr * g[i];
}
