// adam_tick: advance Adam's step counter on the device, once per training step, before the
// adam_update dispatches of that step.
//
//   t  ← t + 1
//   c1 = 1 / (1 − β1^t)        (bias correction of the first moment)
//   c2 = 1 / (1 − β2^t)        (bias correction of the second moment)
//
// Keeping t on the device is what lets every step reuse the same uniforms and bind groups:
// the host writes nothing per step. `state` is [t, c1, c2, unused] as f32 (exact up to 2^24
// steps), zeroed by the host before the first step.
//
// Launch: one workgroup of WG; invocation 0 works. Bytes: 16 read, 16 written per step.

struct Params {
    rows: u32,      // unused
    inputs: u32,    // unused
    outputs: u32,   // unused
    flags: u32,     // unused
    lr: f32,        // unused
    beta1: f32,     // β1
    beta2: f32,     // β2
    eps: f32,       // unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;  // [t, c1, c2, unused]

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x != 0u {
        return;
    }
    let t = state[0] + 1.0;
    state[0] = t;
    state[1] = 1.0 / (1.0 - pow(p.beta1, t));
    state[2] = 1.0 / (1.0 - pow(p.beta2, t));
}
