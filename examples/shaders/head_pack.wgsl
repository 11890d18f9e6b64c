// head_pack: the head's gradients from xent's linear cross-entropy (dW [outputs × inputs],
// db [outputs], nn.Linear's layout) packed as the block θ's gradient ((inputs + 1) × outputs),
// for the optimizer kernels, which see every layer's parameters as one packed block.
//
//   g[k][j] = dW[j][k],   g[inputs][j] = db[j]
//
// Launch: one invocation per value of g, `ceil((inputs + 1)·outputs / WG)` workgroups of WG;
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
@group(0) @binding(1) var<storage, read> dw: array<f32>;          // outputs × inputs
@group(0) @binding(2) var<storage, read> db: array<f32>;          // outputs
@group(0) @binding(3) var<storage, read_write> g: array<f32>;     // (inputs + 1) × outputs

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= (p.inputs + 1u) * p.outputs {
        return;
    }
    let k = i / p.outputs;
    let j = i % p.outputs;
    g[i] = select(db[j], dw[j * p.inputs + k], k < p.inputs);
}
