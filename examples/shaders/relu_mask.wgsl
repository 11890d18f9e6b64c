// relu_mask: d loss / d (a layer's pre-activation) from d loss / d (its ReLU output), in place.
//
//   d[i] = d[i] · [a[i] > 0]      (a: the ReLU's output; 0 at 0 as PyTorch, NaN masked)
//
// The head's dh comes from xent's linear cross-entropy unmasked; every other layer's delta is
// masked inside dense_backward_input.wgsl.
//
// Launch: one invocation per element, `ceil(count / WG)` workgroups of WG; the tail guards
// itself. Bytes per element: 8 read, 4 written.

struct Params {
    rows: u32,      // unused
    inputs: u32,    // unused
    outputs: u32,   // elements
    flags: u32,     // unused
    lr: f32,        // unused
    beta1: f32,     // unused
    beta2: f32,     // unused
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // count
@group(0) @binding(2) var<storage, read_write> d: array<f32>;    // count

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.outputs {
        return;
    }
    if !(a[i] > 0.0) {
        d[i] = 0.0;
    }
}
