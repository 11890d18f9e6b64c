// No gradient: the fused kernel's forward alone (loss, LSE, metrics), with no gradient bound.
// With no targets pass before it, the kernel checks the row's index target itself
// (`target_check.wgsl`, the out-of-range flag at binding 9): `Variant::source` puts that check
// and the return of the row's sums from `fused_row` into the fused kernel's placeholder.
@group(0) @binding(9) var<storage, read_write> error: array<atomic<u32>>;
fn store_dx(i: u32, dx: vec4<f32>, n: u32) {}
