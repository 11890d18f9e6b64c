// dense_backward_input: the gradient flowing into a layer's input, through the ReLU that
// produced that input.
//
//   dx[n][k] = ( Σ_j dy[n][j]·θ[k][j] ) · [x[n][k] > 0]      the mask only when flags & 1
//
// `x` is the layer's input as the forward pass saw it, i.e. the previous layer's ReLU output,
// so `x > 0` is exactly ReLU's derivative (0 at 0, as PyTorch). θ is the packed block of
// dense_forward.wgsl ((inputs + 1) × outputs; the bias row is not read here). The sum runs
// j = 0, 1, … in f32, as on the CPU path.
//
// Launch: one invocation per input element (n, k), `ceil(rows·inputs / WG)` workgroups of WG;
// the tail guards itself. Bytes per element: 8·outputs + 4 read, 4 written.

struct Params {
    rows: u32,      // batch rows
    inputs: u32,    // features in (of the layer)
    outputs: u32,   // features out (of the layer)
    flags: u32,     // bit 0: mask by x > 0 (the input came out of a ReLU)
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;          // rows × outputs
@group(0) @binding(2) var<storage, read> theta: array<f32>;       // (inputs + 1) × outputs
@group(0) @binding(3) var<storage, read> x: array<f32>;           // rows × inputs
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;    // rows × inputs

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows * p.inputs {
        return;
    }
    let n = i / p.inputs;
    let k = i % p.inputs;
    var acc = 0.0;
    for (var j = 0u; j < p.outputs; j++) {
        acc += dy[n * p.outputs + j] * theta[k * p.outputs + j];
    }
    if (p.flags & 1u) != 0u && !(x[i] > 0.0) {
        acc = 0.0;
    }
    dx[i] = acc;
}
