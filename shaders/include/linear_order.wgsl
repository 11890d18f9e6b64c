// The order in which a linear kernel takes its window's rows: with FLAG_SKIP_IGNORED
// `linear_compact.wgsl`'s (the rows that count first), else row order. Tiles index rows
// v = 0 .. rows in that order and address the row `bound_row(v)` of the bound windows; a tile
// whose first v is at or past `rows_that_count` holds only rows that count for nothing.
@group(0) @binding(27) var<storage, read> row_order: array<u32>;

fn bound_row(v: u32) -> u32 {
    if (has(FLAG_SKIP_IGNORED)) { return row_order[p.order_base + 1u + 2u * v]; }
    return v;
}

// The target of the row at place v, −1 where it does not count (every forward's order holds
// them, with or without FLAG_SKIP_IGNORED).
fn bound_target(v: u32) -> i32 { return bitcast<i32>(row_order[p.order_base + 2u + 2u * v]); }

// Uniform across the workgroup, so a kernel may skip a tile's products (and their barriers)
// on it. It goes through the tile product's `a_slab` (the partials kernel already holds
// 16 KiB of workgroup memory, the WebGPU minimum), as two 16-bit halves that f32 holds
// exactly; so a kernel calls this before its first product.
fn rows_that_count(local: u32) -> u32 {
    // A group without rows has no order written (the backward's empty group writes dW, db).
    if (!has(FLAG_SKIP_IGNORED) || p.rows == 0u) { return p.rows; }
    if (local == 0u) {
        let n = row_order[p.order_base];
        a_slab[0] = vec4(f32(n >> 16u), f32(n & 0xffffu), 0.0, 0.0);
    }
    let halves = workgroupUniformLoad(&a_slab[0]);
    return min((u32(halves.x) << 16u) | u32(halves.y), p.rows);
}
