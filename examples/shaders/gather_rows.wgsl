// gather_rows: build one minibatch from the training set by index.
//
//   x_out[n][k] = x_all[idx[n]][k]      n < rows, k < inputs
//   y_out[n]    = y_all[idx[n]]         (written by the k = 0 invocation)
//
// Launch: one invocation per output element, `ceil(rows·inputs / WG)` workgroups of WG (the
// host prepends `const WG`); the tail guards itself. Bytes per element: 4 read (x) + 4 written,
// plus 8 per row for the index and the label. `idx` is copied in by the host from the epoch's
// permutation (`copy_buffer_to_buffer` at a per-step offset), so the kernel has no step state.

struct Params {
    rows: u32,      // minibatch rows
    inputs: u32,    // features per row
    outputs: u32,   // unused
    flags: u32,     // unused
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_all: array<f32>;        // samples × inputs
@group(0) @binding(2) var<storage, read> y_all: array<i32>;        // samples
@group(0) @binding(3) var<storage, read> idx: array<u32>;          // rows
@group(0) @binding(4) var<storage, read_write> x_out: array<f32>;  // rows × inputs
@group(0) @binding(5) var<storage, read_write> y_out: array<i32>;  // rows

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows * p.inputs {
        return;
    }
    let n = i / p.inputs;
    let k = i % p.inputs;
    let src = idx[n];
    x_out[i] = x_all[src * p.inputs + k];
    if k == 0u {
        y_out[n] = y_all[src];
    }
}
