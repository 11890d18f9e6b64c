// Whether a tile of 64 rows has a row that counts (FLAG_SKIP_IGNORED: a recorded call asked for
// no per-row records, so an ignored row's products are dead work). A row counts when its index
// target is valid and in range (SEMANTICS.md section 2: an ignored row, or one flagged out of
// range, contributes nothing); the rows pass writes FILL_ZERO into the coefficients of every
// other row. Invocation `local` < 64 answers `mine` for row r0 + local; the result is uniform
// across the workgroup, so a kernel may skip a tile's products (and their barriers) on it.
//
// The answers go through the tile product's `a_slab` (no workgroup memory of their own: the
// partials kernel already holds 16 KiB, the WebGPU minimum), so a kernel calls this only
// where no invocation still reads the slab: before its first product or after one (whose
// last barrier follows its last read).
fn tile_is_live(mine: bool, local: u32) -> bool {
    if (local < LINEAR_TILE) { a_slab[local] = select(0.0, 1.0, mine); }
    workgroupBarrier();
    if (local == 0u) {
        var any = 0.0;
        for (var i = 0u; i < LINEAR_TILE; i++) { any = max(any, a_slab[i]); }
        a_slab[LINEAR_TILE] = any;
    }
    return workgroupUniformLoad(&a_slab[LINEAR_TILE]) != 0.0;
}
