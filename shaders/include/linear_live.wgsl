// Whether a tile of 64 rows has a row that counts (FLAG_SKIP_IGNORED: a recorded call asked for
// no per-row records, so an ignored row's products are dead work). A row counts when its index
// target is valid and in range (SEMANTICS.md section 2: an ignored row, or one flagged out of
// range, contributes nothing); the rows pass writes FILL_ZERO into the coefficients of every
// other row. Invocation `local` < 64 answers `mine` for row r0 + local; the result is uniform
// across the workgroup, so a kernel may skip a tile's products (and their barriers) on it.

var<workgroup> live_rows: array<u32, LINEAR_TILE>;
var<workgroup> live_any: u32;

fn tile_is_live(mine: bool, local: u32) -> bool {
    if (local < LINEAR_TILE) { live_rows[local] = select(0u, 1u, mine); }
    workgroupBarrier();
    if (local == 0u) {
        var any = 0u;
        for (var i = 0u; i < LINEAR_TILE; i++) { any |= live_rows[i]; }
        live_any = any;
    }
    return workgroupUniformLoad(&live_any) != 0u;
}
