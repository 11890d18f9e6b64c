// dense_forward: one fully connected layer, optionally followed by ReLU.
//
//   y[n][j] = act( Σ_k x[n][k]·θ[k][j]  +  θ[inputs][j] )      act = ReLU when flags & 1
//
// θ is the layer's packed parameter block, (inputs + 1) × outputs row-major: rows 0..inputs
// are the weight W, row `inputs` is the bias b. The sum runs k = 0, 1, … in f32 and the bias
// is added last: the CPU path (examples/digits/cpu.rs) uses the same order, so the two agree to
// rounding.
//
// Launch: one invocation per output element (n, j), `ceil(rows·outputs / WG)` workgroups of WG;
// the tail guards itself. Bytes per output element: 8·inputs read (a row of x and a column of
// θ, mostly from cache at these sizes), 4 written.

struct Params {
    rows: u32,      // batch rows
    inputs: u32,    // features in
    outputs: u32,   // features out
    flags: u32,     // bit 0: ReLU
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // rows × inputs
@group(0) @binding(2) var<storage, read> theta: array<f32>;      // (inputs + 1) × outputs
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // rows × outputs

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows * p.outputs {
        return;
    }
    let n = i / p.outputs;
    let j = i % p.outputs;
    var acc = 0.0;
    for (var k = 0u; k < p.inputs; k++) {
        acc += x[n * p.inputs + k] * theta[k * p.outputs + j];
    }
    acc += theta[p.inputs * p.outputs + j];
    if (p.flags & 1u) != 0u {
        acc = max(acc, 0.0);
    }
    y[i] = acc;
}
