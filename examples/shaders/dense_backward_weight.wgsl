// dense_backward_weight: the gradient of a layer's packed parameter block.
//
//   g[k][j]      = Σ_n x[n][k]·dy[n][j]      k < inputs   (dW = xᵀ·dy)
//   g[inputs][j] = Σ_n dy[n][j]                           (db = column sums of dy)
//
// `dy` already carries the loss's reduction (xent's mean divides by the batch), so nothing is
// scaled here. The sum runs n = 0, 1, … in f32, as on the CPU path. g overwrites (no
// accumulation across steps), so the buffer needs no clearing.
//
// Launch: one invocation per parameter (k, j) of the (inputs + 1) × outputs block,
// `ceil((inputs + 1)·outputs / WG)` workgroups of WG; the tail guards itself. Bytes per
// parameter: 8·rows read, 4 written.

struct Params {
    rows: u32,      // batch rows
    inputs: u32,    // features in
    outputs: u32,   // features out
    flags: u32,     // unused
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // rows × inputs
@group(0) @binding(2) var<storage, read> dy: array<f32>;         // rows × outputs
@group(0) @binding(3) var<storage, read_write> g: array<f32>;    // (inputs + 1) × outputs

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= (p.inputs + 1u) * p.outputs {
        return;
    }
    let k = i / p.outputs;
    let j = i % p.outputs;
    var acc = 0.0;
    if k < p.inputs {
        for (var n = 0u; n < p.rows; n++) {
            acc += x[n * p.inputs + k] * dy[n * p.outputs + j];
        }
    } else {
        for (var n = 0u; n < p.rows; n++) {
            acc += dy[n * p.outputs + j];
        }
    }
    g[i] = acc;
}
