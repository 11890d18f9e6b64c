// Binary cross-entropy, before the element pass: gathers the per-class weights into one
// buffer, class_params[c] = (weight[c], pos_weight[c]) (1 where absent), so the element pass
// binds one per-class buffer instead of two and stays within 8 storage bindings.
//
// Launch: one invocation per class.
// Bytes per class: reads 8, writes 8. Nothing per logit.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(12) var<storage, read> pos_weights: array<f32>;
@group(0) @binding(18) var<storage, read_write> class_params: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if (c >= p.classes) { return; }
    class_params[c] = vec2(
        select(1.0, weights[c], has(FLAG_WEIGHTS)),
        select(1.0, pos_weights[c], has(FLAG_POS_WEIGHT)),
    );
}
