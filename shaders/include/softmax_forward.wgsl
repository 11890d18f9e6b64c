// Shared by the kernels that read a row for its forward (partials, fused): one element into a
// Partial. Needs `weights` (binding 4).

// Adds class `c` of `row` (chunk row) with raw value `x` to `st`, with its weight and dense target.
fn element(st: ptr<function, Partial>, row: u32, c: u32, x: f32) {
    let w = select(1.0, weights[c], has(FLAG_WEIGHTS));
    let t = select(0.0, dense_target(target_index(row, c)), has(FLAG_DENSE));
    accumulate(st, c, x, t, w);
}
