// head_unpack: the head's packed block θ ((inputs + 1) × outputs, `y = x·W + b`) as the
// nn.Linear layout xent's linear cross-entropy takes: W [outputs × inputs] and b [outputs].
//
//   w[j][k] = θ[k][j],   b[j] = θ[inputs][j]
//
// Launch: one invocation per value of θ, `ceil((inputs + 1)·outputs / WG)` workgroups of WG;
// the tail guards itself. Bytes per value: 4 read, 4 written.

struct Params {
    rows: u32,      // unused
    inputs: u32,    // the head's input width D
    outputs: u32,   // classes V
    flags: u32,     // unused
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> theta: array<f32>;      // (inputs + 1) × outputs
@group(0) @binding(2) var<storage, read_write> w: array<f32>;    // outputs × inputs
@group(0) @binding(3) var<storage, read_write> b: array<f32>;    // outputs

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= (p.inputs + 1u) * p.outputs {
        return;
    }
    let k = i / p.outputs;
    let j = i % p.outputs;
    if k < p.inputs {
        w[j * p.inputs + k] = theta[i];
    } else {
        b[j] = theta[i];
    }
}
