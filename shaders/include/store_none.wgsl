// No gradient: the fused kernel's forward alone (loss, LSE, metrics), with no gradient bound.
const STORES_GRADIENT: bool = false;
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {}
