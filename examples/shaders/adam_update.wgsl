// adam_update: one Adam step (Kingma & Ba 2015, as torch.optim.Adam without weight decay) on
// one parameter block.
//
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   θ ← θ − lr · (m·c1) / (sqrt(v·c2) + eps)      c1, c2 from adam_tick.wgsl
//
// The CPU path (examples/digits/cpu.rs) evaluates the same expressions in the same order.
//
// Launch: one invocation per parameter, `ceil(count / WG)` workgroups of WG; the tail guards
// itself. Bytes per parameter: 16 read (g, θ, m, v), 12 written (θ, m, v).

struct Params {
    rows: u32,      // unused
    inputs: u32,    // unused
    outputs: u32,   // parameters in the block
    flags: u32,     // unused
    lr: f32,        // learning rate
    beta1: f32,     // β1
    beta2: f32,     // β2
    eps: f32,       // ε
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;              // count
@group(0) @binding(2) var<storage, read_write> theta: array<f32>;    // count
@group(0) @binding(3) var<storage, read_write> m: array<f32>;        // count
@group(0) @binding(4) var<storage, read_write> v: array<f32>;        // count
@group(0) @binding(5) var<storage, read> state: array<f32>;          // [t, c1, c2, unused]

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.outputs {
        return;
    }
    let gi = g[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * gi;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    theta[i] = theta[i] - p.lr * (mi * state[1]) / (sqrt(vi * state[2]) + p.eps);
}
